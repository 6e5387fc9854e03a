"""The GPU benchmark's tools, on CPU with tiny settings: the model-only ceiling and the run profiler."""

import difflib
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, communicate_or_fail, make_repo, run_train, summary_of

ATTACH = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); "
          "import bench_profile; bench_profile.attach(model)")
# Rounding, not time: the summary prints seconds to 0.1, the profile to 1e-4; half a last digit of each
ROUNDING_S = 0.05 + 1e-4
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two busy cores: PyTorch's spinning threads slow each other 10x


def test_ceiling_times_both_layouts_on_cpu(tmp_path):
    out = tmp_path / "ceiling.json"
    tiny = ["--imgsz", "64", "--batch", "4", "--nbs", "4", "--iters", "2", "--warmup", "1"]
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "bench_ceiling.py"), *tiny,
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
    return json.loads(out.read_text()), summary_of(log), log, out


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


def test_report_prints_rows_with_units(profiled_run, tmp_path):
    _, _, log, out = profiled_run
    (tmp_path / "run.log").write_text(log)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "bench_profile.py"), "report", "cpu",
                           "--log", str(tmp_path / "run.log"), "--profile", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()
    assert any("in steps (%" in r for r in rows) and any("overhead" in r for r in rows)
    assert all(r.startswith("cpu: ") and "(" in r for r in rows), rows  # every row names its units
    noise = subprocess.run([sys.executable, str(REPO / "tests" / "bench_profile.py"), "noise", "n",
                            str(tmp_path / "run.log"), str(tmp_path / "run.log"),
                            str(tmp_path / "missing.log")],
                           capture_output=True, text=True, timeout=60)
    assert "2 runs, 1 failed" in noise.stdout and "0.0000 / 0.0000" in noise.stdout, noise.stdout


def test_report_divides_by_the_fastest_ceiling_measured(profiled_run, tmp_path):
    """bench.py measures the ceiling before and after the runs; a busy host only ever slows it down."""
    profile, _, log, out = profiled_run
    (tmp_path / "run.log").write_text(log)
    ceilings = []
    for name, img_per_s in (("before", 400.0), ("after", 200.0), ("missing", None)):
        path = tmp_path / f"{name}.json"
        if img_per_s:
            path.write_text(json.dumps({"best_img_per_s": img_per_s, "best_layout": "channels_last"}))
        ceilings += ["--ceiling", str(path)]
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "bench_profile.py"), "report", "cpu",
                           "--log", str(tmp_path / "run.log"), "--profile", str(out), *ceilings],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    share = 100 * profile["totals"]["steady_img_per_s"] / 400
    assert f"= {share:.1f}% of ceiling (channels_last 400 img/s, the faster of 2;" in proc.stdout, proc.stdout


def bench_py(*args, script=REPO / "tests" / "bench.py", env=None, timeout=120):
    """tests/bench.py run with these flags; returns the CompletedProcess. Past timeout the bench and every
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


def test_the_bench_refuses_an_edit_that_matches_no_line_of_train_py(tmp_path):
    import bench
    train = (REPO / "train.py").read_text()
    # a good edit changes exactly its line: a knob keeps its comment, an argument joins model.train(...)
    imgsz = next(line for line in train.splitlines() if line.startswith("IMGSZ = "))
    assert changed_lines(train, bench.set_knobs(train, {"IMGSZ": "1280"})) == (
        [imgsz], [imgsz.replace("IMGSZ = 640 ", "IMGSZ = 1280 ")])
    seed = next(line for line in train.splitlines() if "seed=SEED," in line)
    assert changed_lines(train, bench.set_knobs(train, {"rect": "True"})) == (
        [seed], [seed.replace("seed=SEED,", "seed=SEED, rect=True,")])
    folder = bench.edited_copy(tmp_path / "copy", {"IMGSZ": "1280", "BATCH": "64"})
    removed, added = changed_lines(train, (folder / "train.py").read_text())
    assert [line.split(" = ")[0] for line in removed] == ["IMGSZ", "BATCH"]
    assert added == [imgsz.replace("640 ", "1280 "), removed[1].replace("128 ", "64 "),
                     bench.PROFILE_LINE.strip()]
    assert bench.parse_knobs("DEVICE=[0, 1],BATCH=64") == {"DEVICE": "[0, 1]", "BATCH": "64"}
    with pytest.raises(SystemExit, match="bench: no knob BACTH in train.py"):
        bench.set_knobs(train, {"BACTH": "64"})
    with pytest.raises(SystemExit, match=r"bench: no 'seed=SEED,' in train.py's model.train\(...\)"):
        bench.set_knobs(train.replace("seed=SEED,", "seed=SEED"), {"rect": "True"})

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
    (repo / "tests").mkdir()
    for name in ("bench.py", "bench_profile.py"):
        shutil.copy(REPO / "tests" / name, repo / "tests")
    proc = bench_py("--variant", "rect:rect=True", "--out", str(tmp_path / "out2"),
                    script=repo / "tests" / "bench.py", env=tmp)
    assert proc.returncode != 0 and "bench: no 'seed=SEED,' in train.py's model.train(...)" in proc.stderr, \
        proc.stderr
    assert not (tmp_path / "out2").exists()


def test_a_card_is_named_for_its_free_memory_and_knobs():
    import bench_cards
    assert bench_cards.parse_card("80:IMGSZ=1280") == ("80GB-IMGSZ1280", 80.0, {"IMGSZ": "1280"})
    assert bench_cards.parse_card("all") == ("all", None, {})
