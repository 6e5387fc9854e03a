"""Behaviour of `prepare.py progress`: reading results.tsv, summarizing it, plotting it."""

from pathlib import Path

import pytest

from harness.progress import Row, plot_progress, progress, read_results, summarize_results

DATA = Path(__file__).parent / "data"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER = "commit\tmetric\tmemory_gb\tstatus\tdescription\n"
EXAMPLE = HEADER + (
    "a1b2c3d\t0.612345\t8.1\tkeep\tbaseline yolo11l 640 adamw\n"
    "b2c3d4e\t0.618901\t9.4\tkeep\tincrease image size to 768\n"
    "c3d4e5f\t0.605100\t7.9\tdiscard\treduce batch and switch optimizer\n"
    "d4e5f6g\t0.000000\t0.0\tcrash\tbatch too large caused OOM\n"
)


def write(tmp_path, text, name="results.tsv"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))  # bytes, so CRLF reaches the parser untouched
    return path


def assert_png(path):
    data = Path(path).read_bytes()
    assert len(data) > 0
    assert data.startswith(PNG_SIGNATURE)


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

def test_plot_of_the_sample_file(tmp_path):
    rows, _ = read_results(DATA / "results_sample.tsv")
    plot_progress(rows, tmp_path / "progress.png")
    assert_png(tmp_path / "progress.png")


def test_plot_of_no_rows(tmp_path):
    plot_progress([], tmp_path / "progress.png")
    assert_png(tmp_path / "progress.png")


def test_plot_of_all_crashes(tmp_path):
    rows = [Row(i, "aaaaaaa", 0.0, 0.0, "crash", "OOM") for i in (1, 2, 3)]
    plot_progress(rows, tmp_path / "progress.png")
    assert_png(tmp_path / "progress.png")


def test_plot_of_a_single_run(tmp_path):
    plot_progress([Row(1, "aaaaaaa", 0.3, 8.0, "keep", "baseline")], tmp_path / "p.png")
    assert_png(tmp_path / "p.png")


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
