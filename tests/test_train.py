"""Behaviour of `uv run train.py > run.log 2>&1`: real (tiny, few-second) training runs in a subprocess."""

import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import (
    EASY_MAP_FLOOR,
    assert_failed,
    make_repo,
    run_train,
    seed_grep,
    summary_of,
    validate_independently,
)

SEED_KEYS = ["fitness_key", "fitness", "training_seconds", "total_seconds", "peak_vram_mb",
             "precision", "recall", "map50", "map50_95", "epoch"]
SIX_DECIMALS = r"\d+\.\d{6}"
ONE_DECIMAL = r"\d+\.\d"
FORMATS = {"fitness": SIX_DECIMALS, "training_seconds": ONE_DECIMAL, "total_seconds": ONE_DECIMAL,
           "peak_vram_mb": ONE_DECIMAL, "precision": SIX_DECIMALS, "recall": SIX_DECIMALS,
           "map50": SIX_DECIMALS, "map50_95": SIX_DECIMALS, "epoch": r"\d+"}

# Any attempt to resolve, connect to or send to a host is recorded and refused (sitecustomize runs first).
NO_NETWORK = '''
import os, socket
def _refuse(*args, **kwargs):
    with open(os.environ["NETWORK_LOG"], "a") as f:
        f.write(repr(args[:2]) + "\\n")
    raise OSError("network disabled by the test")
socket.getaddrinfo = _refuse
socket.socket.connect = socket.socket.connect_ex = lambda self, *a: _refuse(*a)
socket.socket.sendto = lambda self, *a: _refuse(*a[1:])
'''
# The positive control, in train.py after training: one lookup (of a name that never resolves), which the hook
# must refuse and record. Only under the hook: later runs of the same repo go without it.
CONTROL_HOST = ("network-control.invalid", 443)
NETWORK_CONTROL = f'''
import os, socket
if "NETWORK_LOG" in os.environ:
    try:
        socket.getaddrinfo(*{CONTROL_HOST!r})
        print("network control: resolved")
    except OSError as e:
        print(f"network control: {{e}}")
'''
SHOW_AMP = "print(f'trainer amp: {model.trainer.amp}')"


@pytest.fixture(scope="module")
def default_run(tiny_data, tmp_path_factory):
    """One real run of train.py (few-second budget, tiny images) with the network cut off."""
    tmp = tmp_path_factory.mktemp("default")
    repo = make_repo(tmp, after_train=NETWORK_CONTROL + SHOW_AMP)
    (tmp / "offline").mkdir()
    (tmp / "offline" / "sitecustomize.py").write_text(NO_NETWORK)
    env = {"PYTHONPATH": str(tmp / "offline"), "NETWORK_LOG": str(tmp / "network.log")}
    (repo / "run" / "stale").mkdir(parents=True)  # left over by an earlier run
    rc, log = run_train(repo, tiny_data / "data.yaml", env=env)
    return repo, rc, log, tmp / "network.log"


@pytest.fixture(scope="module")
def honest(easy_run, easy_data, tmp_path_factory):
    """The metrics of an independent validation of the easy run's best.pt after the run."""
    return validate_independently(easy_run[0], easy_data / "data.yaml", tmp_path_factory.mktemp("honest"))


def test_run_ends_with_the_seed_summary(easy_run, honest):
    repo, log = easy_run
    summary = summary_of(log)
    assert list(summary)[:10] == SEED_KEYS
    for key, pattern in FORMATS.items():
        assert re.fullmatch(pattern, summary[key]), f"{key}: {summary[key]}"
    assert summary["fitness_key"] == "metrics/mAP50-95(B)"
    assert float(summary["map50_95"]) > EASY_MAP_FLOOR  # it learned: the comparison below is not 0 with 0
    # fitness is mAP50-95 of the supervisor's validation: the same number as an independent validation of
    # best.pt
    assert summary["fitness"] == summary["map50_95"] == f"{honest['metrics/mAP50-95(B)']:.6f}"
    import csv
    with open(repo / "run" / "results.csv") as f:  # VAL = False: no epoch was validated during training
        rows = list(csv.DictReader(f))
    assert len(rows) == int(summary["epoch"]) and all(float(r["metrics/mAP50-95(B)"]) == 0 for r in rows)
    assert log.rstrip().splitlines()[-1].startswith("run_dir:")  # the summary is the last thing printed


def test_seed_grep_finds_fitness_and_memory(default_run):
    _, _, log, _ = default_run
    lines = seed_grep(log)
    assert [line.split(":")[0] for line in lines] == ["fitness", "peak_vram_mb"]


def test_batch_follows_epoch_and_is_the_batch_train_py_names(default_run):
    _, _, log, _ = default_run
    summary = summary_of(log)
    keys = list(summary)
    assert keys[keys.index("epoch") + 1] == "batch" and summary["batch"] == "4"  # conftest's FAST_KNOBS


# Where Ultralytics' out-of-memory retry would halve the batch: the first step of the first epoch raises
# CUDA's error.
FIRST_STEP_OUT_OF_MEMORY = """
Trainer, preprocess = prepare.Trainer, prepare.Trainer.preprocess_batch
def out_of_memory_once(self, batch):
    if not getattr(Trainer, "ran_out", False):
        Trainer.ran_out = True
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return preprocess(self, batch)
Trainer.preprocess_batch = out_of_memory_once
"""


def test_an_out_of_memory_step_ends_the_run_where_ultralytics_would_halve_the_batch(tiny_data, tmp_path):
    repo = make_repo(tmp_path, before_train=FIRST_STEP_OUT_OF_MEMORY)
    rc, log = run_train(repo, tiny_data / "data.yaml")
    last = assert_failed(rc, log, "error: BATCH = 4 does not fit on the cpu: a training step ran out of "
                                  "memory in the first epoch (Ultralytics would halve the batch")
    # Ultralytics' retry began, and went no further
    assert "lower BATCH" in last and "Reducing to batch=2" in log


def test_val_seconds_follows_batch_and_lies_outside_the_training_clock(default_run):
    _, _, log, _ = default_run
    summary = summary_of(log)
    keys = list(summary)
    assert keys[keys.index("batch") + 1] == "val_seconds"
    assert re.fullmatch(ONE_DECIMAL, summary["val_seconds"])
    val, training, total = (float(summary[k]) for k in ("val_seconds", "training_seconds", "total_seconds"))
    assert 0 < val and training + val < total


def test_summary_extras_say_what_ran(default_run):
    repo, _, log, _ = default_run
    summary = summary_of(log)
    assert summary["time_budget_s"] == "3"  # a shortened budget is always visible
    assert summary["data"] == "YOLO_DATA"
    assert summary["device"] == "cpu"
    assert summary["weights"].startswith("yolo11n.yaml (from scratch")
    assert float(summary["train_images_per_s"]) > 0
    import csv
    budget, epochs, training = 3.0, int(summary["epoch"]), float(summary["training_seconds"])
    with open(repo / "run" / "results.csv") as f:  # a row per epoch, with Ultralytics' training clock
        clock = [float(row["time"]) for row in csv.DictReader(f)]
    assert len(clock) == epochs
    # training_seconds is that clock at the last optimizer step: before the last epoch's row
    # (printed to 0.1 s)
    assert training <= clock[-1] + 0.05, (clock, training)
    # the budget stops training: every epoch but the last ended within it
    assert all(t <= budget for t in clock[:-1]), clock
    # and not before it ran out. Ultralytics stops when its clock passes the budget, or at the end of the
    # epoch that its estimate (budget / mean epoch so far) calls the last: its clock then reads
    # (epochs - 1) / epochs of it
    by_time = training + 0.05 >= budget
    by_estimate = epochs > 1 and clock[-1] >= budget * (epochs - 1) / epochs
    assert by_time or by_estimate, (clock, training)
    assert float(summary["total_seconds"]) > training  # total counts the set-up before the clock as well


def test_cpu_and_missing_weights_are_announced_loudly(default_run):
    _, _, log, _ = default_run
    assert "WARNING: no CUDA GPU found" in log
    assert "WARNING: yolo11n.pt not found in weights/" in log


def test_an_honest_run_hears_nothing_of_the_checks_around_it(default_run):
    _, _, log, _ = default_run
    assert [line.split(":")[1] for line in log.splitlines() if line.startswith("WARNING: ")] == [
        " no CUDA GPU found", " yolo11n.pt not found in weights/ (offline)"]
    assert [line.split(" ran ")[0] for line in log.splitlines() if line.startswith("supervisor:")] == [
        "supervisor: train.py's own code"]  # no process left, no other process on the card
    assert "Slow image access" not in log
    assert "Starting training for 3 s, the time budget." in log and " hours..." not in log


def test_the_cpu_trains_in_float32_as_ultralytics_does(default_run):
    _, _, log, _ = default_run
    assert "trainer amp: False" in log  # CPU autocast is bfloat16: 4x slower where the CPU lacks AVX512-BF16


def test_run_touches_no_network(default_run):
    _, rc, log, network_log = default_run
    assert rc == 0, log[-3000:]
    # the control's lookup after training was refused by the hook: the hook loaded and was still on
    assert "network control: network disabled by the test" in log, log[-3000:]
    # and it is the only attempt the hook recorded
    assert network_log.read_text().splitlines() == [repr(CONTROL_HOST)]


def test_run_folder_is_emptied_and_keeps_latest_results(default_run):
    repo, _, _, _ = default_run
    run_dir = repo / "run"
    assert not (run_dir / "stale").exists()
    assert (run_dir / "weights" / "last.pt").is_file()
    assert (run_dir / "results.csv").is_file()
    assert sorted(p.name for p in repo.iterdir()) == ["harness", "prepare.py", "record", "run", "run.log",
                                                      "train.py"]


def test_log_has_no_progress_bar_flood(default_run):
    _, _, log, _ = default_run
    assert "\r" not in log
    assert len(log.splitlines()) < 200


def test_the_guard_is_on_train_pys_call(tiny_data, tmp_path):
    repo = make_repo(tmp_path, call_extra="conf=0.5")
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    last = assert_failed(rc, log, "error: train.py changed what gets evaluated: ")
    assert "conf=0.5 (default None)" in last


def guarded(tiny_data, tmp_path, monkeypatch, args=(), data=None, train_files=None):
    """prepare.guard on a trainer as an honest call leaves it (run.data, the supervisor's budget of 3 s, every
    training image from the train split), with `args` as train.py passed them and data or train_files as
    training saw them. Returns the guard's error, or None."""
    import prepare  # first: its offline setup comes before Ultralytics' import
    from harness.common import HarnessError
    from harness.supervisor import BUDGET_ENV
    monkeypatch.setenv(BUDGET_ENV, "3.0")
    from ultralytics.cfg import get_cfg
    splits = {"train": str(tiny_data / "train" / "images"), "val": str(tiny_data / "valid" / "images")}
    shutil.copy(tiny_data / "data.yaml", tmp_path / "data.yaml")
    run = prepare.Run(str(tmp_path / "data.yaml"), splits, "cpu", "cpu", "yolo11n.yaml", "")
    if train_files is None:
        train_files = sorted(Path(splits["train"]).iterdir())
    trainer = SimpleNamespace(args=get_cfg(overrides={"data": run.data, "time": 3 / 3600, **dict(args)}),
                              data=data or splits, train_files=train_files)
    try:
        prepare.guard(trainer, run)
    except HarnessError as e:
        return str(e)
    return None


@pytest.mark.parametrize("args, says", [
    ({"conf": 0.5}, "conf=0.5 (default None)"),
    ({"iou": 0.3}, "iou=0.3 (default 0.7)"),
    ({"max_det": 5}, "max_det=5 (default 300)"),
    ({"split": "test"}, "split='test' (default 'val')"),
    ({"fraction": [1.0, 0.5]}, "fraction=[1.0, 0.5] (validation must use the whole val split)"),
    ({"time": 2 / 3600}, "time=0.000555"),
    ({"data": "other.yaml"}, "data=other.yaml (must be run.data)"),
])
def test_the_guard_refuses_a_call_that_changed_what_gets_evaluated(tiny_data, tmp_path, monkeypatch, args,
                                                                   says):
    error = guarded(tiny_data, tmp_path, monkeypatch, args)
    assert error.startswith("train.py changed what gets evaluated: ") and says in error, error
    assert error.endswith("; put it back")


def test_the_guard_refuses_a_rewritten_dataset_yaml_and_training_images_from_elsewhere(tiny_data, tmp_path,
                                                                                      monkeypatch):
    assert guarded(tiny_data, tmp_path, monkeypatch) is None  # the honest call
    val = str(tiny_data / "valid" / "images")
    assert "its splits were rewritten" in guarded(tiny_data, tmp_path, monkeypatch, data={"train": val,
                                                                                          "val": val})
    elsewhere = sorted((tiny_data / "valid" / "images").iterdir())
    assert "the training images (6 of 6 read from outside the train split" in guarded(
        tiny_data, tmp_path, monkeypatch, train_files=elsewhere)
    assert "(0 of 0 read" in guarded(tiny_data, tmp_path, monkeypatch, train_files=[])


def test_checkpoints_are_written_only_for_a_new_best_or_at_the_end(tiny_data, tmp_path):
    count_saves = "model.add_callback('on_model_save', lambda t: print(f'saved after epoch {t.epoch + 1}'))"
    repo = make_repo(tmp_path, before_train=count_saves)
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=3)
    assert rc == 0, log[-3000:]
    epochs = int(summary_of(log)["epoch"])
    assert epochs >= 2 and log.count("saved after epoch") == 1  # VAL = False: the last epoch only
    assert f"saved after epoch {epochs}" in log


def test_with_val_every_epoch_the_epochs_are_validated_in_training_and_best_pt_again_after(tiny_data,
                                                                                          tmp_path):
    repo = make_repo(tmp_path, knobs={"VAL": "True"}, call_extra="patience=1000")
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=3)
    assert rc == 0, log[-3000:]
    epochs = int(summary_of(log)["epoch"])
    validations = re.findall(r"^ +all +6 +28 ", log, flags=re.M)  # the tiny val split: 6 images, 28 boxes
    assert len(validations) == epochs + 1  # one an epoch in training, then the supervisor's of best.pt


def test_crash_ends_with_one_error_line(tiny_data, tmp_path):
    repo = make_repo(tmp_path, knobs={"OPTIMIZER": "'NoSuchOptimizer'"})
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert "NoSuchOptimizer" in assert_failed(rc, log, "error: ")
    assert "Traceback" in log  # the details stay in the log for the agent


def test_bad_dataset_fails_before_training_and_keeps_the_last_run(default_run, tmp_path):
    repo, _, _, _ = default_run
    before = sorted(p.name for p in (repo / "run").iterdir())
    rc, log = run_train(repo, tmp_path / "nowhere.yaml")
    assert rc != 0
    assert log.strip().splitlines() == [f"error: YOLO_DATA={tmp_path / 'nowhere.yaml'}: no such file; "
                                        "point it at a dataset YAML or unset it"]
    assert sorted(p.name for p in (repo / "run").iterdir()) == before


def test_sigterm_ends_with_an_error_line_and_next_run_works(tiny_data, tmp_path):
    repo = make_repo(tmp_path)
    env = {**__import__("os").environ, "AUTORESEARCH_TIME_BUDGET": "60",
           "YOLO_DATA": str(tiny_data / "data.yaml")}
    log_path = repo / "run.log"
    with open(log_path, "w") as f:
        proc = subprocess.Popen([sys.executable, "train.py"], cwd=repo, env=env, stdout=f,
                                stderr=subprocess.STDOUT)
        for _ in range(600):
            if "Starting training" in log_path.read_text() or proc.poll() is not None:
                break
            __import__("time").sleep(0.1)
        proc.terminate()  # what `timeout 600 uv run train.py` sends
        rc = proc.wait(timeout=60)
    log = log_path.read_text()
    assert_failed(rc, log, "error: interrupted")
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert rc == 0, log[-3000:]


def test_a_second_sigterm_does_not_interrupt_the_way_out(tmp_path):
    # `timeout 600 uv run train.py` and `pkill -f train.py`: the signal reaches Python twice, once passed on
    # by uv, and the second lands while the first is still unwinding the run.
    script = ("import os, signal, time, prepare\n"
              "try:\n    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
              "except KeyboardInterrupt:\n    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)\n"
              "    print('unwound')\n    raise\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=make_repo(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stdout.splitlines()[-2:] == ["unwound",
                                             "error: interrupted (SIGINT or SIGTERM) before the run "
                                             "finished; the next run starts clean"], proc.stdout + proc.stderr


def test_fresh_clone_without_data_trains_on_the_stand_in(tmp_path):
    repo = make_repo(tmp_path)
    (repo / "ships-aerial-images").mkdir()
    (repo / "ships-aerial-images" / "README.md").write_text("put the dataset here\n")
    rc, log = run_train(repo, env={"AUTORESEARCH_CACHE": str(tmp_path / "cache")})
    assert rc == 0, log[-3000:]
    assert "training on the SYNTHETIC stand-in" in log.split("Starting training")[0]
    assert summary_of(log)["data"] == "synthetic"
    assert [p.name for p in (repo / "ships-aerial-images").iterdir()] == ["README.md"]
    assert (tmp_path / "cache" / "synthetic-small-seed0" / "data.yaml").is_file()


def test_out_of_memory_names_batch_and_imgsz_and_what_to_lower(tiny_data, tmp_path):
    import torch
    from ultralytics.models.yolo.detect import DetectionTrainer

    from harness.failure import describe_failure
    trainer = DetectionTrainer(overrides={"data": str(tiny_data / "data.yaml"), "model": "yolo11n.yaml",
                                          "imgsz": 96, "batch": 48, "device": "cpu",
                                          "project": str(tmp_path), "name": "oom"})

    def optimizer_step(self):  # where a real CUDA OOM is raised: inside a trainer method
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(torch.OutOfMemoryError) as e:
        optimizer_step(trainer)
    assert describe_failure(e.value, e.tb) == ("CUDA out of memory at batch=48 imgsz=96; "
                                               "lower BATCH or IMGSZ (or pick a smaller MODEL) in train.py")
