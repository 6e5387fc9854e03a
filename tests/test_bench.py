"""The GPU benchmark's tools (bench/), on CPU with tiny settings: the checked edits of train.py, the summary
parser, the model-only ceiling, the run profiler and its report, the nvidia-smi sampler."""

import difflib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from conftest import REPO, communicate_or_fail, make_repo, run_train
from harness.common import HarnessError
from harness.knobs import edit_knobs, insert
from harness.summary import parse_summary

ATTACH = (f"import sys; sys.path.insert(0, {str(REPO / 'bench')!r}); "
          "import profiler; profiler.attach(model)")
# Rounding, not time: the summary prints seconds to 0.1, the profile to 1e-4; half a last digit of each
ROUNDING_S = 0.05 + 1e-4
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two busy cores: PyTorch's spinning threads slow each other 10x


def test_ceiling_times_both_layouts_on_cpu(tmp_path):
    out = tmp_path / "ceiling.json"
    tiny = ["--imgsz", "64", "--batch", "4", "--nbs", "4", "--iters", "2", "--warmup", "1"]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "ceiling.py"), *tiny,
                           "--layouts", "contiguous,channels_last", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **ONE_THREAD})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert (result["imgsz"], result["batch"], result["device"]) == (64, 4, "cpu")
    assert result["model"] == "yolo11n.pt"  # read from train.py
    for layout in ("contiguous", "channels_last"):
        assert result["layouts"][layout]["img_per_s"] > 0, result["layouts"][layout]
    assert result["best_img_per_s"] > 0


@pytest.fixture(scope="module")
def profiled_run(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("profiled")
    repo = make_repo(tmp, before_train=ATTACH)
    out = tmp / "profile.json"
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=3,
                        env={"BENCH_PROFILE_OUT": str(out), **ONE_THREAD})
    assert rc == 0, log[-3000:]
    return json.loads(out.read_text()), parse_summary(log), log, out


def test_profile_accounts_for_the_training_clock(profiled_run):
    profile, summary, _, _ = profiled_run
    t, m = profile["totals"], profile["moments"]
    assert t["batches"] > 0 and t["images"] > 0 and len(profile["epochs"]) >= 1
    parts = [t[k] for k in ("step_s", "wait_s", "val_s", "save_s")]
    assert all(p >= 0 for p in parts), t
    # disjoint spans inside the training clock (the profile rounds each to 1e-4)
    assert sum(parts) <= t["training_s"] + 1e-3, (parts, t)
    # the harness's clock: from the trainer's clock start to its last optimizer step, before the final eval
    stop = m["clock_start"] + float(summary["training_seconds"])
    assert m["clock_start"] < stop <= m["final_start"] + ROUNDING_S, (m, summary["training_seconds"])
    assert t["steady_img_per_s"] > 0
    assert t["save_s"] > 0 and t["saves"] == 1  # VAL = False: the last epoch saves
    # and no epoch validates (the call returns at once): the supervisor validates best.pt
    assert t["val_s"] < 0.01


def test_profile_marks_the_moments_in_order(profiled_run):
    profile, summary, _, _ = profiled_run
    m = profile["moments"]
    assert 0 < m["pretrain_start"] <= m["pretrain_end"] <= m["clock_start"]
    assert m["clock_start"] < m["final_start"] <= m["final_end"] <= m["train_end"] <= m["atexit"]
    assert m["atexit"] < float(summary["total_seconds"])  # the child ends before the supervisor's summary
    assert profile["totals"]["final_val_s"] == 0  # the child validates nothing: the supervisor does


def test_report_rows_name_their_units_and_the_command_prints_them(profiled_run, tmp_path):
    import report
    _, _, log, out = profiled_run
    (tmp_path / "run.log").write_text(log)
    rows = report.run_rows("cpu", tmp_path / "run.log", out)
    names = [row.name for row in rows]
    assert any("in steps (%" in n for n in names) and any("overhead" in n for n in names), names
    assert all(n.startswith("cpu: ") and "(" in n for n in names), names  # every row names its units
    noise = report.noise_rows("n", [tmp_path / "run.log", tmp_path / "run.log", tmp_path / "missing.log"])
    assert noise[0].name == "n: fitness mean (mAP50-95, 2 runs, 1 failed)", noise
    assert noise[1].value == "0.0000 / 0.0000", noise
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "report.py"), "run", "cpu",
                           "--log", str(tmp_path / "run.log"), "--profile", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == report.lines(rows)


def test_report_divides_by_the_fastest_ceiling_measured(profiled_run, tmp_path):
    """bench.py measures the ceiling before and after the runs; a busy host only ever slows it down."""
    import report
    profile, _, log, out = profiled_run
    (tmp_path / "run.log").write_text(log)
    ceilings = []
    for name, img_per_s in (("before", 400.0), ("after", 200.0), ("missing", None)):
        path = tmp_path / f"{name}.json"
        if img_per_s:
            path.write_text(json.dumps({"best_img_per_s": img_per_s, "best_layout": "channels_last"}))
        ceilings.append(path)
    steady = report.run_rows("cpu", tmp_path / "run.log", out, ceilings)[0].value
    share = 100 * profile["totals"]["steady_img_per_s"] / 400
    assert f"= {share:.1f}% of ceiling (channels_last 400 img/s, the faster of 2;" in steady, steady


def test_a_failing_report_becomes_a_row_and_the_bench_goes_on(tmp_path):
    import bench
    import report
    cfg = SimpleNamespace(out=tmp_path)
    (tmp_path / "torn.json").write_text('{"card": "x", "layo')  # a ceiling that died mid-write
    assert bench.report_rows(cfg, report.ceiling_rows, "c", tmp_path / "torn.json") == []
    assert bench.report_rows(cfg, report.ceiling_rows, "c", tmp_path / "none.json") == []
    table = (tmp_path / "table.txt").read_text().splitlines()
    assert len(table) == 1 and table[0].startswith("c: ceiling_rows"), table
    assert "failed: JSONDecodeError" in table[0], table


def bench_py(*args, script=REPO / "bench" / "bench.py", env=None, timeout=120):
    """bench/bench.py run with these flags; returns the CompletedProcess. Past timeout the bench and every
    run it started are killed, and the test fails."""
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    stdout, stderr = communicate_or_fail(proc, timeout, f"bench.py still running after {timeout} s, killed")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def changed_lines(before, after):
    """(the lines only in before, the lines only in after), in order."""
    diff = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    return [d[2:] for d in diff if d.startswith("- ")], [d[2:] for d in diff if d.startswith("+ ")]


def test_agent_edits_table_shows_edits_refused_at_start(tiny_data, tmp_path):
    out = tmp_path / "out"
    proc = bench_py("--no-base", "--no-prep", "--edits", "0", "--only", "rect", "multi_scale",
                    "--ceiling-timeout", "5", "--out", str(out), timeout=600,
                    env={"YOLO_DATA": str(tiny_data / "data.yaml"), "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = (out / "edits" / "table.txt").read_text()
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert rows.keys() == {"multi_scale", "rect"}, table
    assert ("error@start" in rows["rect"]
            and "error: rect=True is not supported by the GPU data" in rows["rect"])
    assert ("error@start" in rows["multi_scale"]
            and "error: multi_scale=0.5 trains each" in rows["multi_scale"])
    assert table in (out / "table.txt").read_text()  # and in the bench's own table


def test_a_knob_edit_changes_exactly_its_line():
    train = (REPO / "train.py").read_text()
    # a knob keeps its comment, an argument joins model.train(...)
    imgsz = next(line for line in train.splitlines() if line.startswith("IMGSZ = "))
    assert changed_lines(train, edit_knobs(train, {"IMGSZ": "1280"})) == (
        [imgsz], [imgsz.replace("IMGSZ = 640 ", "IMGSZ = 1280 ")])
    seed = next(line for line in train.splitlines() if "seed=SEED," in line)
    assert changed_lines(train, edit_knobs(train, {"rect": "True", "box": "10.0"})) == (
        [seed], [seed.replace("seed=SEED,", "seed=SEED, rect=True, box=10.0,")])
    before_finish = insert(train, "\nprepare.finish(model)", "\nx = 1", after=False)
    assert changed_lines(train, before_finish) == ([], ["x = 1"])
    assert before_finish.index("x = 1") < before_finish.index("prepare.finish(model)")


def test_a_knob_edit_that_matches_no_line_or_several_is_refused(tmp_path):
    train = (REPO / "train.py").read_text()
    with pytest.raises(HarnessError, match="no knob BACTH in train.py"):
        edit_knobs(train, {"BACTH": "64"})
    with pytest.raises(HarnessError, match="knob BATCH is set on 2 lines of train.py"):
        edit_knobs(train + "BATCH = 2\n", {"BATCH": "64"})
    with pytest.raises(HarnessError, match="'seed=SEED,' is in train.py 0 times"):
        edit_knobs(train.replace("seed=SEED,", "seed=SEED"), {"rect": "True"})
    with pytest.raises(HarnessError, match="'model = YOLO\\(run.weights\\)' is in train.py 2 times"):
        insert(train + "model = YOLO(run.weights)\n", "model = YOLO(run.weights)\n", "pass\n")
    with pytest.raises(HarnessError, match="no knob BACTH in train.py"):  # the tests' copies use it too
        make_repo(tmp_path, knobs={"BACTH": "4"})


def test_the_summary_is_the_last_block_after_a_dashes_line():
    log = "train.py| ---\n---\nepoch: 1\nfitness: 0.9\n---\nfitness: 0.123456\nbatch: 4\nnot a row\n"
    assert parse_summary(log) == {"fitness": "0.123456", "batch": "4"}
    assert parse_summary("epoch 1 ...\nerror: loss is nan\n") == {}


def test_runs_share_a_ceiling_only_where_the_knobs_it_reads_agree(tmp_path):
    import bench
    train = (REPO / "train.py").read_text()
    for name, knobs in (("base", {}), ("lr", {"LR0": "0.02", "MOSAIC": "0.0"}), ("imgsz", {"IMGSZ": "320"})):
        (tmp_path / f"{name}.py").write_text(edit_knobs(train, knobs))
    base, lr, imgsz = (bench.ceiling_knobs(tmp_path / f"{n}.py") for n in ("base", "lr", "imgsz"))
    assert base == lr != imgsz
    assert json.loads(base)["MODEL"] == "yolo11n.pt"


def test_the_sampler_records_nvidia_smi_and_the_peak_above_idle(tmp_path, monkeypatch):
    import smi
    fake = tmp_path / "bin" / "nvidia-smi"  # memory.used of one card: 500 MiB idle, then 900, 1700, 1200
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\ncase \"$*\" in *-lms*) for m in 900 1700 1200; do echo $m; done; "
                    "exec sleep 30;; *) echo 500;; esac\n")  # exec: the kill ends it
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with smi.sampling("0", tmp_path, "run"):
        for _ in range(100):
            if len(smi.numbers(tmp_path / "run.smi")) == 3:
                break
            time.sleep(0.05)
    assert smi.numbers(tmp_path / "run.idle") == [500.0]
    assert smi.peak_above_idle(tmp_path / "run.smi", tmp_path / "run.idle") == 1200.0
    assert smi.peak_above_idle(tmp_path / "none.smi", tmp_path / "run.idle") is None
    monkeypatch.setenv("PATH", "")  # no nvidia-smi: no files, nothing raised
    with smi.sampling("0", tmp_path, "nogpu"):
        pass
    assert not list(tmp_path.glob("nogpu.*"))


def test_the_bench_refuses_an_edit_that_matches_no_line_of_train_py(tmp_path):
    import bench
    train = (REPO / "train.py").read_text()
    imgsz = next(line for line in train.splitlines() if line.startswith("IMGSZ = "))
    folder = bench.edited_copy(tmp_path / "copy", {"IMGSZ": "1280", "BATCH": "64"})
    removed, added = changed_lines(train, (folder / "train.py").read_text())
    assert [line.split(" = ")[0] for line in removed] == ["IMGSZ", "BATCH"]
    assert added == [imgsz.replace("640 ", "1280 "), removed[1].replace("128 ", "64 "),
                     bench.PROFILE_LINE.strip()]
    assert (folder / "profiler.py").is_file()
    assert bench.parse_knobs("DEVICE=[0, 1],BATCH=64") == {"DEVICE": "[0, 1]", "BATCH": "64"}

    # a misspelt knob fails the bench before anything runs: no ceiling, no run, not even OUT
    tmp = {"TMPDIR": str(tmp_path / "work")}  # where the bench makes its copies
    (tmp_path / "work").mkdir()
    proc = bench_py("--variant", "typo:BACTH=64", "--out", str(tmp_path / "out"), env=tmp)
    assert proc.returncode != 0 and "bench: no knob BACTH in train.py" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() and "running" not in proc.stdout
    assert not any((tmp_path / "work").iterdir())  # and its copies went with it
    # so does an Ultralytics argument where train.py has no `seed=SEED,` to add it after
    repo = make_repo(tmp_path)
    (repo / "train.py").write_text((repo / "train.py").read_text().replace("seed=SEED,", "seed=SEED"))
    shutil.copytree(REPO / "bench", repo / "bench", ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    proc = bench_py("--variant", "rect:rect=True", "--out", str(tmp_path / "out2"),
                    script=repo / "bench" / "bench.py", env=tmp)
    assert proc.returncode != 0 and "bench: 'seed=SEED,' is in train.py 0 times" in proc.stderr, proc.stderr
    assert not (tmp_path / "out2").exists()


def test_a_card_is_named_for_its_free_memory_and_knobs():
    import cards
    assert cards.parse_card("80:IMGSZ=1280") == ("80GB-IMGSZ1280", 80.0, {"IMGSZ": "1280"})
    assert cards.parse_card("all") == ("all", None, {})


def test_the_cards_bench_refuses_a_misspelt_knob_before_anything_runs(tmp_path):
    import cards
    with pytest.raises(SystemExit, match="bench: no knob BACTH in train.py"):
        cards.main(["--out", str(tmp_path / "out"), "80:BACTH=64", "all"])
    assert not (tmp_path / "out").exists()
