"""Behaviour of `prepare.py progress`: reading results.tsv, summarizing it, plotting it; beside the run record
(record/runs.jsonl): re-runs, the noise floor, rows that disagree, --rebuild and the held-out --test."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import summary_of
from harness import record
from harness.cli import main
from harness.progress import (
    Row,
    mark_reruns,
    match_record,
    noise_floor,
    plot_progress,
    progress,
    read_results,
    running_best_steps,
    summarize_results,
)

DATA = Path(__file__).parent / "data"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER = "commit\tmetric\tmemory_gb\tstatus\tdescription\n"
EXAMPLE = HEADER + (
    "a1b2c3d\t0.612345\t8.1\tkeep\tbaseline yolo11l 640 adamw\n"
    "b2c3d4e\t0.618901\t9.4\tkeep\tincrease image size to 768\n"
    "c3d4e5f\t0.605100\t7.9\tdiscard\treduce batch and switch optimizer\n"
    "d4e5f6g\t0.000000\t0.0\tcrash\tbatch too large caused OOM\n"
)


@pytest.fixture(autouse=True)
def no_checkout_record(tmp_path, monkeypatch):
    """progress reads record/runs.jsonl by default: this checkout's own record must not reach the tests."""
    monkeypatch.setattr(record, "RECORD", tmp_path / "no-record" / "runs.jsonl")


def write(tmp_path, text, name="results.tsv"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))  # bytes, so CRLF reaches the parser untouched
    return path


def assert_png(path):
    data = Path(path).read_bytes()
    assert len(data) > 0
    assert data.startswith(PNG_SIGNATURE)


def drawn(figure, label):
    """The points of the series with this legend label, read back from the figure's artists ([] if none)."""
    for artist in [*figure.axes[0].collections, *figure.axes[0].lines]:
        if artist.get_label() == label:
            xy = artist.get_offsets() if hasattr(artist, "get_offsets") else artist.get_xydata()
            return [(float(x), round(float(y), 6)) for x, y in xy]
    return []


def texts(figure):
    """Every text drawn inside the axes (labels, notes)."""
    return [t.get_text() for t in figure.axes[0].texts]


# --- reading -----------------------------------------------------------------

def test_parses_the_program_md_example(tmp_path):
    rows, warnings = read_results(write(tmp_path, EXAMPLE))
    assert warnings == []
    assert [r.n for r in rows] == [1, 2, 3, 4]
    assert rows[0] == Row(1, "a1b2c3d", 0.612345, 8.1, "keep", "baseline yolo11l 640 adamw")
    assert [r.status for r in rows] == ["keep", "keep", "discard", "crash"]
    assert rows[3].metric == 0.0 and rows[3].memory_gb == 0.0


@pytest.mark.parametrize("text", ["", "\n\n", HEADER, HEADER + "\n\n"])
def test_empty_or_header_only_file_has_no_rows(tmp_path, text):
    rows, warnings = read_results(write(tmp_path, text))
    assert rows == [] and warnings == []


def test_missing_header_still_parses(tmp_path):
    rows, warnings = read_results(write(tmp_path, EXAMPLE.removeprefix(HEADER)))
    assert len(rows) == 4 and warnings == []


def test_crlf_line_endings_and_trailing_blank_lines(tmp_path):
    rows, warnings = read_results(write(tmp_path, EXAMPLE.replace("\n", "\r\n") + "\r\n\r\n"))
    assert len(rows) == 4 and warnings == []
    assert rows[0].description == "baseline yolo11l 640 adamw"


def test_malformed_lines_are_skipped_with_a_warning_naming_the_line(tmp_path):
    text = HEADER + (
        "a1b2c3d\t0.612345\t8.1\tkeep\tbaseline\n"       # line 2: fine
        "b2c3d4e\t0.618901\t9.4\tkeep\n"                 # line 3: only 4 columns
        "c3d4e5f\tnan-ish\t7.9\tdiscard\tbad metric\n"   # line 4: non-numeric metric
        "d4e5f6a\t0.620000\t7.9\tmaybe\tbad status\n"     # line 5: unknown status
        "e5f6a7b\t0.630000\t8.0\tkeep\tafter the bad ones\n"
    )
    path = write(tmp_path, text)
    rows, warnings = read_results(path)
    assert [r.commit for r in rows] == ["a1b2c3d", "e5f6a7b"]
    assert [r.n for r in rows] == [1, 2]
    assert len(warnings) == 3
    assert all(str(path) in w for w in warnings)
    assert f"{path}:3:" in warnings[0] and "column" in warnings[0]
    assert f"{path}:4:" in warnings[1] and "metric" in warnings[1]
    assert f"{path}:5:" in warnings[2] and "status" in warnings[2]


def test_descriptions_keep_commas_and_extra_tabs(tmp_path):
    text = HEADER + (
        "a1b2c3d\t0.61\t8.1\tkeep\tlr0 0.01 -> 0.005, cosine lr, warmup 3\n"
        "b2c3d4e\t0.62\t8.2\tkeep\tmosaic off\tfor the last 3 epochs\n"
    )
    rows, warnings = read_results(write(tmp_path, text))
    assert warnings == []
    assert rows[0].description == "lr0 0.01 -> 0.005, cosine lr, warmup 3"
    assert rows[1].description == "mosaic off for the last 3 epochs"


def test_status_is_case_insensitive(tmp_path):
    rows, _ = read_results(write(tmp_path, HEADER + "a1b2c3d\t0.61\t8.1\tKeep\tbaseline\n"))
    assert rows[0].status == "keep"


@pytest.mark.parametrize("sep", [" ", "  ", ",", ", "])
def test_space_or_comma_separated_file_parses_with_one_warning(tmp_path, sep):
    text = "\n".join(sep.join(line.split("\t")) for line in EXAMPLE.splitlines()) + "\n"
    path = write(tmp_path, text)
    rows, warnings = read_results(path)
    assert [r.status for r in rows] == ["keep", "keep", "discard", "crash"]
    assert rows[1].metric == 0.618901 and rows[1].memory_gb == 9.4
    # the description is everything after the 4th separator, kept as written
    assert rows[0].description == "baseline yolo11l 640 adamw"
    assert len(warnings) == 1 and "not tab-separated" in warnings[0] and str(path) in warnings[0]


def test_comma_separated_description_keeps_its_own_commas(tmp_path):
    rows, warnings = read_results(write(tmp_path, "a1b2c3d,0.61,8.1,keep,lr 0.01, cosine, warmup 3\n"))
    assert rows[0].description == "lr 0.01, cosine, warmup 3"
    assert len(warnings) == 1


def test_sample_file_parses_cleanly():
    rows, warnings = read_results(DATA / "results_sample.tsv")
    assert warnings == []
    assert len(rows) >= 20
    assert sum(r.status == "crash" for r in rows) == 3
    assert all(len(r.commit) == 7 for r in rows)


# --- summary -----------------------------------------------------------------

def test_summary_of_no_rows():
    assert "no experiments yet" in summarize_results([])


def test_summary_numbers(tmp_path):
    rows, _ = read_results(write(tmp_path, EXAMPLE))
    summary = summarize_results(rows)
    assert "4 total, 2 keep, 1 discard, 1 crash" in summary
    assert "baseline: 0.612345" in summary
    assert "best:     0.618901  b2c3d4e  increase image size to 768" in summary
    assert "+0.006556" in summary           # 0.618901 - 0.612345
    assert "(+1.1%)" in summary             # relative gain over the baseline
    assert "last 2 kept:" in summary


def test_summary_lists_only_the_last_five_kept_changes():
    rows = [Row(i, f"c{i:06d}", 0.3 + i / 100, 8.0, "keep", f"change {i}") for i in range(1, 9)]
    summary = summarize_results(rows)
    assert "last 5 kept:" in summary
    assert "change 3" not in summary
    assert all(f"change {i}" in summary for i in range(4, 9))


def test_summary_best_ignores_discarded_runs():
    rows = [Row(1, "aaaaaaa", 0.30, 8.0, "keep", "baseline"),
            Row(2, "bbbbbbb", 0.35, 30.0, "discard", "higher but too much memory"),
            Row(3, "ccccccc", 0.32, 8.0, "keep", "small win")]
    assert "best:     0.320000  ccccccc" in summarize_results(rows)


def test_summary_of_all_crashes():
    rows = [Row(i, "aaaaaaa", 0.0, 0.0, "crash", "OOM") for i in (1, 2)]
    summary = summarize_results(rows)
    assert "2 total, 0 keep, 0 discard, 2 crash" in summary
    assert "every run crashed" in summary
    assert "best" not in summary


def test_summary_of_the_sample_file():
    rows, _ = read_results(DATA / "results_sample.tsv")
    summary = summarize_results(rows)
    assert "baseline: 0.301245" in summary
    assert "best:     0.421308  c6e0b29" in summary
    assert "+0.120063 (+39.9%)" in summary


# --- plot --------------------------------------------------------------------

def test_plot_of_the_sample_file_draws_each_row_by_its_status_and_the_best_as_a_staircase(tmp_path):
    rows, _ = read_results(DATA / "results_sample.tsv")
    figure = plot_progress(rows, tmp_path / "progress.png")
    assert_png(tmp_path / "progress.png")
    for status in ("keep", "discard"):
        assert drawn(figure, status) == [(r.n, r.metric) for r in rows if r.status == status]
    assert [x for x, _ in drawn(figure, "crash")] == [r.n for r in rows if r.status == "crash"]
    steps = drawn(figure, "best so far")
    assert steps[0] == (1, 0.301245) and steps[-1] == (27, 0.421308)
    assert [y for _, y in steps] == sorted(y for _, y in steps)  # the running best never falls
    assert drawn(figure, "baseline 0.3012") == [(0, 0.301245), (1, 0.301245)]  # axhline: axes x, data y


def test_plot_of_no_rows_draws_no_point_and_says_so(tmp_path):
    figure = plot_progress([], tmp_path / "progress.png")
    assert_png(tmp_path / "progress.png")
    assert not figure.axes[0].collections and not figure.axes[0].lines
    assert texts(figure) == ["no experiments yet"]


def test_plot_of_all_crashes_pins_each_crash_to_the_bottom_and_says_so(tmp_path):
    rows = [Row(i, "aaaaaaa", 0.0, 0.0, "crash", "OOM") for i in (1, 2, 3)]
    figure = plot_progress(rows, tmp_path / "progress.png")
    assert_png(tmp_path / "progress.png")
    assert drawn(figure, "crash") == [(1, 0), (2, 0), (3, 0)]
    assert drawn(figure, "keep") == [] and "every run crashed" in texts(figure)


def test_plot_of_a_single_run_draws_it_kept_and_labelled(tmp_path):
    figure = plot_progress([Row(1, "aaaaaaa", 0.3, 8.0, "keep", "baseline")], tmp_path / "p.png")
    assert_png(tmp_path / "p.png")
    assert drawn(figure, "keep") == [(1, 0.3)] and drawn(figure, "discard") == []
    assert texts(figure) == ["baseline"]


def test_the_rotated_labels_stay_inside_the_axes(tmp_path):
    # the best runs sit at the top, their long labels rise up and to the right of them
    rows = [Row(n, "aaaaaaa", 0.30 + 0.01 * n, 8.0, "keep", f"a long description of change {n}")
            for n in range(1, 13)]
    figure = plot_progress(rows, tmp_path / "p.png")
    renderer, ax = figure.canvas.get_renderer(), figure.axes[0]
    box, labels = ax.get_window_extent(renderer), ax.texts
    assert len(labels) == 12
    for label in labels:
        extent = label.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, \
            (label.get_text(), extent, box)


# --- CLI entry ---------------------------------------------------------------

def test_progress_prints_summary_and_writes_the_plot(tmp_path, capsys):
    out = tmp_path / "progress.png"
    assert progress(write(tmp_path, EXAMPLE), out) == 0
    stdout = capsys.readouterr().out
    assert "4 total" in stdout
    assert f"wrote {out}" in stdout
    assert_png(out)


def test_progress_prints_warnings_to_stderr(tmp_path, capsys):
    path = write(tmp_path, EXAMPLE + "zzzzzzz\tbroken\n")
    assert progress(path, tmp_path / "progress.png") == 0
    stderr = capsys.readouterr().err
    assert stderr.startswith("warning: ")
    assert f"{path}:6:" in stderr


def test_progress_on_an_empty_file(tmp_path, capsys):
    assert progress(write(tmp_path, ""), tmp_path / "progress.png") == 0
    assert "no experiments yet" in capsys.readouterr().out
    assert_png(tmp_path / "progress.png")


def test_progress_without_results_file_fails_with_one_line(tmp_path, capsys):
    out = tmp_path / "progress.png"
    assert progress(tmp_path / "results.tsv", out) == 1
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and "not found" in stderr and "program.md" in stderr
    assert stderr.count("\n") == 1
    assert not out.exists()


# --- the run record: re-runs, the noise floor, rows that disagree -------------

H100 = "cuda:0 NVIDIA H100 80GB HBM3"
OOM = "CUDA out of memory at batch=256 imgsz=768; lower BATCH or IMGSZ (or pick a smaller MODEL) in train.py"
FIRST_KNOBS = {"MODEL": "yolo11n.pt", "IMGSZ": 640, "BATCH": 128, "OPTIMIZER": "auto"}


def sha(short):
    """A full commit whose first 7 characters are `short`."""
    return short + "e" * (40 - len(short))


def run(commit, train_py, fitness=None, error=None, changed=None, peak_mb=8294.4, edited=False, weights=None,
        device=H100):
    """One run as the supervisor records it (write_record adds repeat, and the first line's knobs)."""
    summary = None if fitness is None else {"fitness": f"{fitness:.6f}", "peak_vram_mb": f"{peak_mb:.1f}",
                                           "map50_95": f"{fitness:.6f}", "epoch": "18", "device": device}
    line = {"time": "2025-03-24T01:00:00+00:00", "commit": sha(commit), "train_py_changed": edited,
            "train_py": train_py * 16, "changed": changed or {}, "summary": summary, "error": error,
            "wall_seconds": 341.5}
    return {**line, "weights": str(weights)} if weights else line


def write_record(tmp_path, runs, name="runs.jsonl"):
    """record/runs.jsonl of these runs, as record.append() completes them; returns its path."""
    path, lines = tmp_path / "record" / name, []
    for r in runs:
        r = {**r, "repeat": sum(record.experiment(e) == record.experiment(r) for e in lines)}
        if not lines:
            r["knobs"] = {**FIRST_KNOBS, **r.pop("changed")}
        lines.append(r)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# A night of five runs: a baseline, a kept change, a discard, an OOM, and a re-run of the kept change that
# happens to score higher than it.
NIGHT = [run("a1b2c3d", "a", 0.612345),
         run("b2c3d4e", "b", 0.618901, changed={"IMGSZ": 768}, peak_mb=9625.6),
         run("c3d4e5f", "c", 0.605100, changed={"IMGSZ": 768, "OPTIMIZER": "SGD"}, peak_mb=8089.6),
         run("d4e5f6a", "d", error=OOM, changed={"IMGSZ": 768, "BATCH": 256}),
         run("b2c3d4e", "b", 0.620500, changed={"IMGSZ": 768}, peak_mb=9625.6)]
NIGHT_ROWS = ["a1b2c3d\t0.612345\t8.1\tkeep\tbaseline",
              "b2c3d4e\t0.618901\t9.4\tkeep\timgsz 768",
              "c3d4e5f\t0.605100\t7.9\tdiscard\tsgd",
              "d4e5f6a\t0.000000\t0.0\tcrash\tbatch 256 ran out of memory",
              "b2c3d4e\t0.620500\t9.4\tkeep\tconfirm imgsz 768"]


def night_tsv(rows=NIGHT_ROWS):
    return HEADER + "".join(row + "\n" for row in rows)


def legend_labels(figure):
    return figure.axes[0].get_legend_handles_labels()[1]


def progress_of(tmp_path, capsys, tsv, runs, **kwargs):
    """(exit code, stdout, stderr) of progress on this results.tsv beside a record of these runs."""
    code = progress(write(tmp_path, tsv), tmp_path / "progress.png", write_record(tmp_path, runs), **kwargs)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_noise_floor_is_the_largest_difference_over_every_pair_of_runs_of_one_train_py(tmp_path, capsys):
    runs = [run("a1b2c3d", "a", 0.610), run("a1b2c3d", "a", 0.614), run("b2c3d4e", "b", 0.620),
            run("a1b2c3d", "a", 0.612), run("b2c3d4e", "b", 0.621), run("c3d4e5f", "c", 0.630),
            run("b2c3d4e", "b", error=OOM)]  # a crash measured nothing
    floor, pairs, groups = noise_floor(record.read_record(write_record(tmp_path, runs)))
    assert (floor, pairs, groups) == (pytest.approx(0.004), 4, 2)  # a: 3 pairs, up to 0.004; b: 1 pair
    rows = "".join(f"{r['commit'][:7]}\t{r['summary']['fitness'] if r['summary'] else 0}\t8.1\t"
                   f"{'keep' if r['summary'] else 'crash'}\tx\n" for r in runs)
    _, out, _ = progress_of(tmp_path, capsys, HEADER + rows, runs)
    assert ("noise floor: 0.004000, the largest difference between two runs of one train.py on one kind of "
            "card (4 pairs: 2 train.py's run 2-3 times, on NVIDIA H100 80GB HBM3); program.md's 0.005 "
            "stands") in out


def test_a_noise_floor_above_program_md_s_says_to_count_gains_only_past_it(tmp_path, capsys):
    runs = [run("a1b2c3d", "a", 0.610), run("a1b2c3d", "a", 0.618)]
    rows = ["a1b2c3d\t0.610000\t8.1\tkeep\tbaseline", "a1b2c3d\t0.618000\t8.1\tkeep\tre-run"]
    _, out, _ = progress_of(tmp_path, capsys, night_tsv(rows), runs)
    assert ("noise floor: 0.008000, the largest difference between two runs of one train.py on one kind of "
            "card (1 pair: 1 train.py run 2 times, on NVIDIA H100 80GB HBM3); above program.md's 0.005: "
            "count a gain only past it") in out


def test_without_repeats_there_is_no_noise_floor_yet_and_program_md_s_stands(tmp_path, capsys):
    runs = [run("a1b2c3d", "a", 0.61), run("b2c3d4e", "b", error=OOM), run("b2c3d4e", "b", 0.62)]
    assert noise_floor(record.read_record(write_record(tmp_path, runs))) == (None, 0, 0)
    rows = ["a1b2c3d\t0.610000\t8.1\tkeep\tbaseline", "b2c3d4e\t0.000000\t0.0\tcrash\toom",
            "b2c3d4e\t0.620000\t8.1\tkeep\tsame, enough memory now"]
    _, out, _ = progress_of(tmp_path, capsys, night_tsv(rows), runs)
    record_path = tmp_path / "record" / "runs.jsonl"
    assert (f"noise floor: none measured yet (no train.py has run twice without an error on one kind of card "
            f"in {record_path}); program.md's 0.005 stands") in out


def test_a_rerun_is_counted_as_a_rerun_not_as_a_kept_change(tmp_path, capsys):
    code, out, err = progress_of(tmp_path, capsys, night_tsv(), NIGHT)
    assert code == 0 and err == ""
    assert "runs: 5 total, 2 keep, 1 discard, 1 crash, 1 re-run" in out
    # the re-run scored higher than the change it repeats, but measured noise, not a change
    assert "best:     0.618901  b2c3d4e  imgsz 768" in out
    assert "last 2 kept:" in out and "confirm imgsz 768" not in out
    rows, _ = read_results(tmp_path / "results.tsv")
    lines = record.read_record(tmp_path / "record" / "runs.jsonl")
    rows = mark_reruns(rows, lines, match_record(rows, lines))
    assert [r.rerun for r in rows] == [False, False, False, False, True]
    # the kept staircase steps at the kept change and stays flat through the re-run
    assert running_best_steps(rows) == ([1, 2, 5], [0.612345, 0.618901, 0.618901])
    assert "re-run" in legend_labels(plot_progress(rows, tmp_path / "p.png"))


def test_a_run_of_a_train_py_that_only_crashed_before_is_no_rerun(tmp_path, capsys):
    # the baseline crashed on a broken dataset; fixed, the same train.py is the baseline, not a re-run
    runs = [run("a1b2c3d", "a", error="dataset broken"), run("a1b2c3d", "a", 0.61)]
    rows = ["a1b2c3d\t0.000000\t0.0\tcrash\tbaseline, broken dataset",
            "a1b2c3d\t0.610000\t8.1\tkeep\tbaseline"]
    _, out, _ = progress_of(tmp_path, capsys, night_tsv(rows), runs)
    assert "runs: 2 total, 1 keep, 0 discard, 1 crash\n" in out
    assert "last 1 kept:" in out


def test_a_repeat_of_a_crash_is_no_rerun_even_where_no_card_tells_the_two_apart():
    lines = [run("a1b2c3d", "a", error="dataset broken", device=None), run("a1b2c3d", "a", 0.61, device=None),
             run("a1b2c3d", "a", 0.62, device=None)]
    assert record.reruns(lines) == {3: 2}


def test_a_description_starting_with_rerun_is_a_rerun_where_the_record_has_no_line_for_it(tmp_path, capsys):
    tsv = night_tsv(["a1b2c3d\t0.610000\t8.1\tkeep\tbaseline",
                     "a1b2c3d\t0.615000\t8.1\tkeep\tRe-run of a1b2c3d"])
    assert progress(write(tmp_path, tsv), tmp_path / "progress.png") == 0  # no record at all
    out = capsys.readouterr().out
    assert "runs: 2 total, 1 keep, 0 discard, 0 crash, 1 re-run" in out
    assert "noise floor" not in out  # nothing of the record without one


def test_the_record_decides_a_rerun_where_it_has_the_run(tmp_path, capsys):
    runs = [run("a1b2c3d", "a", 0.61), run("b2c3d4e", "b", 0.62)]
    rows = ["a1b2c3d\t0.610000\t8.1\tkeep\tbaseline",
            "b2c3d4e\t0.620000\t8.1\tkeep\tre-run, but of a new train.py"]
    _, out, _ = progress_of(tmp_path, capsys, night_tsv(rows), runs)
    assert "runs: 2 total, 2 keep, 0 discard, 0 crash\n" in out


def test_the_kth_row_of_a_commit_is_the_kth_run_of_that_commit_in_the_record():
    lines = [run("a1b2c3d", "a", 0.61), run("b2c3d4e", "b", 0.62), run("a1b2c3d", "a", 0.60),
             run("b2c3d4e", "b", 0.63)]
    rows = [Row(n, commit, 0.6, 8.0, "keep", "x") for n, commit in
            enumerate(["b2c3d4e", "a1b2c3d", "b2c3d4e", "b2c3d4e", "A1B2C3D", "a1b", "f0f0f0f"], start=1)]
    # row 4 is a third row of b2c3d4e, which ran twice; "a1b" is too short to name a commit
    assert match_record(rows, lines) == {1: 2, 2: 1, 3: 4, 5: 3}


FLAGGED = {
    "keep or discard of a run that ended in an error": (
        3, "d4e5f6a\t0.000000\t0.0\tdiscard\tbatch 256", {},
        "status discard, but the run ended in an error ({record} line 4: CUDA out of memory at batch=256"),
    "crash of a run that finished": (
        2, "c3d4e5f\t0.000000\t0.0\tcrash\tsgd", {},
        "status crash, but the run finished with fitness 0.605100 ({record} line 3)"),
    "a metric that is not the run's fitness": (
        1, "b2c3d4e\t0.618900\t9.4\tkeep\timgsz 768", {},
        "metric 0.618900, but the run's fitness is 0.618901 ({record} line 2)"),
    "a commit the record has no run of": (
        5, "e5f6a7b\t0.630000\t9.4\tkeep\tnever ran", {}, "no run of this commit in {record}"),
    "more rows of a commit than its runs": (
        5, "a1b2c3d\t0.612345\t8.1\tkeep\tbaseline again", {},
        "more rows of this commit than its 1 run(s) in {record}"),
    "a run with uncommitted edits to train.py": (
        2, NIGHT_ROWS[2], {"train_py_changed": True},
        "ran with uncommitted edits to train.py ({record} line 3), so the commit does not hold what ran"),
}


@pytest.mark.parametrize("case", FLAGGED)
def test_a_row_that_disagrees_with_the_record_gets_one_warning_naming_it(tmp_path, capsys, case):
    index, row, edit, expected = FLAGGED[case]
    rows = NIGHT_ROWS[:index] + [row] + NIGHT_ROWS[index + 1:]
    runs = [{**r, **edit} if i == 2 else r for i, r in enumerate(NIGHT)]
    code, _, err = progress_of(tmp_path, capsys, night_tsv(rows), runs)
    path, record_path = tmp_path / "results.tsv", tmp_path / "record" / "runs.jsonl"
    n, commit = index + 1, row.split("\t")[0]
    assert code == 0
    assert err.count("\n") == 1 and err.startswith(f"warning: {path} row {n} ({commit}): "), err
    assert expected.format(record=record_path) in err, err


def test_a_results_file_that_matches_the_record_gets_no_warning(tmp_path, capsys):
    rows = [r.replace("0.618901", "0.6189012") for r in NIGHT_ROWS]  # within the 6 decimals' rounding
    code, out, err = progress_of(tmp_path, capsys, night_tsv(rows), NIGHT)
    assert code == 0 and err == ""


def test_the_record_s_fitness_wins_over_a_row_s_metric_that_disagrees(tmp_path, capsys):
    rows = NIGHT_ROWS[:2] + ["c3d4e5f\t0.705100\t7.9\tkeep\tsgd, a typo in the metric"] + NIGHT_ROWS[3:]
    _, out, err = progress_of(tmp_path, capsys, night_tsv(rows), NIGHT)
    assert "metric 0.705100, but the run's fitness is 0.605100" in err
    assert "the summary counts 0.605100" in err
    assert "best:     0.618901  b2c3d4e  imgsz 768" in out and "0.705100" not in out


def test_runs_on_two_kinds_of_card_are_never_paired_and_two_h100s_are_one_kind(tmp_path, capsys):
    runs = [run("a1b2c3d", "a", 0.610), run("a1b2c3d", "a", 0.650, device="cuda:0 NVIDIA A100-SXM4-40GB"),
            run("a1b2c3d", "a", 0.612, device="cuda:1 NVIDIA H100 80GB HBM3")]
    lines = record.read_record(write_record(tmp_path, runs))
    assert noise_floor(lines) == (pytest.approx(0.002), 1, 1)  # never 0.650 - 0.610
    assert record.reruns(lines) == {3: 1}  # the A100's run is the first of its own kind
    rows = ["a1b2c3d\t0.610000\t8.1\tkeep\tbaseline", "a1b2c3d\t0.650000\t8.1\tkeep\ton an A100",
            "a1b2c3d\t0.612000\t8.1\tdiscard\tre-run"]
    _, out, _ = progress_of(tmp_path, capsys, night_tsv(rows), runs)
    assert "(1 pair: 1 train.py run 2 times, on NVIDIA H100 80GB HBM3)" in out
    assert "runs: 3 total, 2 keep, 0 discard, 0 crash, 1 re-run" in out


def test_a_plain_progress_after_test_draws_the_last_test_until_a_new_one(tmp_path, capsys, monkeypatch,
                                                                         easy_data):
    from harness import progress as progress_package
    from harness.progress import held_out
    monkeypatch.setenv("YOLO_DATA", str(easy_data / "data.yaml"))
    (tmp_path / "0001.pt").write_text("never validated: validate_on_test is replaced")
    runs = [run("a1b2c3d", "a", 0.61, weights=tmp_path / "0001.pt"), run("b2c3d4e", "b", 0.62)]
    figures, scores = [], iter([[0.55], []])
    monkeypatch.setattr(held_out, "validate_on_test", lambda weights, stats: next(scores))
    monkeypatch.setattr(progress_package, "plot_progress",
                        lambda *args: figures.append(plot_progress(*args)))
    tsv = night_tsv(NIGHT_ROWS[:2])
    for test in (True, False, False):
        assert progress_of(tmp_path, capsys, tsv, runs, test=test)[0] == 0
    assert [drawn(f, "test (held out)") for f in figures] == [[(1, 0.55)]] * 3
    next_night = [{**runs[0], "time": "2025-03-25T01:00:00+00:00"}, runs[1]]  # line 1 is another run now
    progress_of(tmp_path, capsys, tsv, next_night)
    assert drawn(figures[-1], "test (held out)") == []
    (tmp_path / "0001.pt").unlink()  # a new --test without weights: nothing tested, nothing drawn
    for test in (True, False):
        progress_of(tmp_path, capsys, tsv, runs, test=test)
    assert [drawn(f, "test (held out)") for f in figures[4:]] == [[], []]


# --- --rebuild ------------------------------------------------------------------

REBUILT = HEADER + (
    "a1b2c3d\t0.612345\t8.1\tkeep\tbaseline\n"
    "b2c3d4e\t0.618901\t9.4\tkeep\tIMGSZ=768\n"
    "c3d4e5f\t0.605100\t7.9\tdiscard\tIMGSZ=768 OPTIMIZER=SGD\n"
    f"d4e5f6a\t0.000000\t0.0\tcrash\t{OOM}\n"
    "b2c3d4e\t0.620500\t9.4\tkeep\tre-run of b2c3d4e\n"
)


def test_rebuild_writes_the_five_columns_from_the_record(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record_path = write_record(tmp_path, NIGHT)
    assert main(["progress", "--rebuild", "--record", str(record_path)]) == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "results.tsv").read_text() == REBUILT
    assert f"wrote results.tsv: 5 rows from {record_path}" in out
    # the rebuilt file is summarized at once, and agrees with its record
    assert "runs: 5 total, 2 keep, 1 discard, 1 crash, 1 re-run" in out and err == ""
    assert_png(tmp_path / "progress.png")


def test_rebuild_describes_a_baseline_after_crashes_by_what_it_changed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = [run("a1b2c3d", "a", error="BATCH = 128 does not fit on ...; BATCH = 64 fits"),
            run("b2c3d4e", "b", 0.5, changed={"BATCH": 64})]
    assert main(["progress", "--rebuild", "--record", str(write_record(tmp_path, runs))]) == 0
    rebuilt = (tmp_path / "results.tsv").read_text().splitlines()
    assert rebuilt[2] == "b2c3d4e\t0.500000\t8.1\tkeep\tbaseline BATCH=64"


def test_rebuild_never_overwrites_a_results_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record_path = write_record(tmp_path, NIGHT)
    (tmp_path / "results.tsv").write_text("the agent's own\n")
    assert main(["progress", "--rebuild", "--record", str(record_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: results.tsv exists") and err.count("\n") == 1
    assert "move it away" in err and "--results rebuilt.tsv" in err
    assert (tmp_path / "results.tsv").read_text() == "the agent's own\n"
    assert not (tmp_path / "progress.png").exists()
    # as the error says: to another path, which must not exist either
    assert main(["progress", "--rebuild", "--record", str(record_path), "--results", "rebuilt.tsv"]) == 0
    assert (tmp_path / "rebuilt.tsv").read_text() == REBUILT
    assert main(["progress", "--rebuild", "--record", str(record_path), "--results", "rebuilt.tsv"]) == 1
    assert (tmp_path / "results.tsv").read_text() == "the agent's own\n"


def test_progress_without_results_file_but_with_a_record_says_how_to_rebuild(tmp_path, capsys):
    code = progress(tmp_path / "results.tsv", tmp_path / "progress.png", write_record(tmp_path, NIGHT))
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "not found" in err and "holds 5 run(s): `uv run prepare.py progress --rebuild`" in err


# --- --test: the archived weights on the held-out test split ---------------------

TABLE_ROW = r"^ +{line} +(\w{{7}}) +(\d\.\d{{6}}) +(\d\.\d{{6}}) +(\S+) +(\S+)$"


def test_rebuild_keeps_a_crash_s_whole_error_with_its_advice_and_cuts_a_long_one_at_a_word(tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    long = "ValueError: " + " ".join(f"word{i}" for i in range(80)) + "; lower BATCH"
    runs = [run("a1b2c3d", "a", error=OOM), run("b2c3d4e", "b", error=long.replace("word3 ", "word3\t\n"))]
    assert main(["progress", "--rebuild", "--record", str(write_record(tmp_path, runs))]) == 0
    first, second = [row.split("\t")[4] for row in (tmp_path / "results.tsv").read_text().splitlines()[1:]]
    assert first == OOM  # its advice, after the `;`, kept
    assert second.endswith(" …") and long.startswith(second[:-2] + " ") and 150 < len(second) <= 202


@pytest.fixture(scope="module")
def night_repo(easy_run):
    """A checkout after one real run of train.py on the easy data (conftest's easy_run). Returns (repo,
    summary)."""
    return easy_run[0], summary_of(easy_run[1])


def prepare_progress(repo, data_yaml, *args):
    """`python prepare.py progress --test ...` in repo, as the agent runs it; returns the process."""
    env = {**os.environ, "YOLO_DATA": str(data_yaml)}
    env.pop("PYTEST_CURRENT_TEST", None)  # else Ultralytics writes its runs into its own tests/ folder
    return subprocess.run([sys.executable, "prepare.py", "progress", "--test", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)


def direct_test_map(weights, data_yaml, tmp_path):
    """Ultralytics' own `YOLO(weights).val(split="test")`, with the metric's settings."""
    from harness import device, runtime
    runtime.configure_ultralytics()
    from ultralytics import YOLO
    metrics = YOLO(str(weights)).val(data=str(data_yaml), split="test", device=device.pick_device(None)[0],
                                     single_cls=False, plots=False, project=str(tmp_path), name="direct")
    return metrics.box.map


def test_progress_test_prints_the_test_map_of_a_direct_ultralytics_val(night_repo, easy_data, tmp_path):
    repo, summary = night_repo
    line = record.read_record(repo / "record" / "runs.jsonl")[0]
    memory = float(summary["peak_vram_mb"]) / 1024
    (repo / "results.tsv").write_text(f"{HEADER}{line['commit'][:7]}\t{summary['fitness']}\t{memory:.1f}\t"
                                      "keep\tbaseline\n")
    proc = prepare_progress(repo, easy_data / "data.yaml")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = re.search(TABLE_ROW.format(line=1), proc.stdout, re.M)
    assert found, proc.stdout[-3000:]
    commit, val_map, test_map, val_gain, test_gain = found.groups()
    assert (commit, val_map, val_gain, test_gain) == (line["commit"][:7], summary["fitness"], "baseline",
                                                      "baseline")
    direct = direct_test_map(repo / "record" / "best" / "0001.pt", easy_data / "data.yaml", tmp_path)
    assert direct > 0  # a comparison of a real number, not of 0 with 0
    assert test_map == f"{direct:.6f}"
    assert "held-out check: 1 archived run(s) on the test split of" in proc.stdout
    assert_png(repo / "progress.png")


def test_progress_test_gives_the_gains_over_the_baseline_of_each_archived_run_on_disk(night_repo, easy_data,
                                                                                     tmp_path):
    repo, summary = night_repo
    best, commit = repo / "record" / "best" / "0001.pt", record.read_record(repo / "record" / "runs.jsonl")[0]
    base = float(summary["fitness"])
    runs = [run(commit["commit"][:7], "a", base, weights=best),
            run(commit["commit"][:7], "b", base + 0.02, weights=tmp_path / "pruned.pt"),  # gone from disk
            run(commit["commit"][:7], "c", base + 0.01, weights=shutil.copy(best, tmp_path / "0003.pt"))]
    rows = "".join(f"{commit['commit'][:7]}\t{r['summary']['fitness']}\t8.1\tkeep\tx\n" for r in runs)
    write(tmp_path, HEADER + rows)
    proc = prepare_progress(repo, easy_data / "data.yaml", "--record", str(write_record(tmp_path, runs)),
                            "--results", str(tmp_path / "results.tsv"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first = re.search(TABLE_ROW.format(line=1), proc.stdout, re.M).groups()
    third = re.search(TABLE_ROW.format(line=3), proc.stdout, re.M).groups()
    assert not re.search(TABLE_ROW.format(line=2), proc.stdout, re.M)
    assert "held-out check: 2 archived run(s)" in proc.stdout and "gains over the baseline" in proc.stdout
    assert third[1:] == (f"{base + 0.01:.6f}", first[2], "+0.010000", "+0.000000")  # the same weights


def test_the_plot_draws_the_held_out_test_map_as_a_series_of_its_own(tmp_path):
    rows = [Row(1, "a1b2c3d", 0.61, 8.0, "keep", "baseline"), Row(2, "b2c3d4e", 0.62, 8.0, "keep", "x")]
    assert "test (held out)" in legend_labels(plot_progress(rows, tmp_path / "p.png", [(1, 0.55), (2, 0.57)]))
    assert "test (held out)" not in legend_labels(plot_progress(rows, tmp_path / "q.png"))


def test_progress_test_without_a_test_split_says_so_and_validates_nothing(tmp_path, capsys, monkeypatch,
                                                                         easy_data):
    data = tmp_path / "no-test"
    data.mkdir()
    for split in ("train", "valid"):
        os.symlink(easy_data / split, data / split)
    (data / "data.yaml").write_text((easy_data / "data.yaml").read_text().replace("test: test/images\n", ""))
    monkeypatch.setenv("YOLO_DATA", str(data / "data.yaml"))
    (tmp_path / "0001.pt").write_text("not a checkpoint: validating it would fail")
    runs = [run("a1b2c3d", "a", 0.61, weights=tmp_path / "0001.pt")]
    code, out, _ = progress_of(tmp_path, capsys, night_tsv(NIGHT_ROWS[:1]), runs, test=True)
    assert code == 0
    held = [line for line in out.splitlines() if line.startswith("held-out check:")]
    assert held == [f"held-out check: {data / 'data.yaml'} has no test split (no `test:` entry, or no images "
                    "there); nothing held out to validate on"]


@pytest.mark.parametrize("weights, says", [
    (None, "no archived weights in {record} yet"),
    ("gone.pt", "the 1 archived weights that {record} names are gone from disk")])
def test_progress_test_without_archived_weights_says_so(tmp_path, capsys, weights, says):
    runs = [run("a1b2c3d", "a", 0.61, weights=weights and tmp_path / weights)]
    code, out, _ = progress_of(tmp_path, capsys, night_tsv(NIGHT_ROWS[:1]), runs, test=True)
    assert code == 0
    assert says.format(record=tmp_path / "record" / "runs.jsonl") in out
