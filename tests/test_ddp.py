"""Several GPUs (DEVICE = [0, 1] in train.py), on the CPU.

A real DDP run: tests/cpu_ddp.py makes prepare.Trainer's DDP workers CPU processes joined by gloo
(Ultralytics' DDP wants CUDA devices), and everything else runs as on GPUs: the harness's launch of
torch.distributed.run, the GPU data pipeline's shards, each worker's hand-off, the parent's final validation
and the summary. What only GPUs show (memory per card, the speed-up) comes from
`python3 bench/bench.py --ddp 2 --no-base` on two GPUs."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prepare
from conftest import (
    EASY_BUDGET,
    EASY_KNOBS,
    EASY_MAP_FLOOR,
    REPO,
    assert_failed,
    make_repo,
    run_train,
    summary_of,
    validate_independently,
)
from easy_data import EASY_COUNTS
from harness import common, ddp, device, failure, runtime

CPU_DDP = f"import sys; sys.path.append({str(REPO / 'tests')!r}); import cpu_ddp"
TWO_WORKERS = {"CPU_DDP_WORKERS": "2"}
# Ranks whose estimates of the epochs that fit differ (tests/cpu_ddp.py): rank 1's clock reads 30 s more than
# rank 0's, so on its own it would call epoch 1 or 2 the last of the budget. It would then follow another
# learning-rate schedule than rank 0, and with VAL = True validate after other epochs: the ranks would wait
# for each other forever. DDP_HANG_S is when a DDP run counts as hung (they take 1-2 minutes).
CLOCKS_APART = {"CPU_DDP_RANK1_CLOCK_AHEAD_S": "30"}
DDP_HANG_S = 300
# BATCH is split over the workers: each trains on 4 images a step, as a one-process easy run does. (A worker's
# step costs about as much with 2 images as with 4 on the CPU: with 2 the run would learn from half the
# images.)
EASY_DDP_KNOBS = {**EASY_KNOBS, "BATCH": "8", "NBS": "8"}


def make_ddp_repo(tmp_path, before_train="", **kwargs):
    """A copy of the repo whose train.py trains with cpu_ddp.Trainer: prepare.Trainer over CPU_DDP_WORKERS
    processes."""
    repo = make_repo(tmp_path, before_train=f"{CPU_DDP}\n{before_train}", **kwargs)
    text = (repo / "train.py").read_text()
    assert "trainer=prepare.Trainer" in text
    (repo / "train.py").write_text(text.replace("trainer=prepare.Trainer", "trainer=cpu_ddp.Trainer"))
    return repo


@pytest.fixture(scope="module")
def ddp_run(easy_data, tmp_path_factory):
    """Two workers on data that a short CPU run learns (conftest's easy_data), whose clocks disagree."""
    repo = make_ddp_repo(tmp_path_factory.mktemp("ddp"), knobs=EASY_DDP_KNOBS)
    rc, log = run_train(repo, easy_data / "data.yaml", budget=EASY_BUDGET,
                        env={**TWO_WORKERS, **CLOCKS_APART}, timeout=DDP_HANG_S)
    assert rc == 0, log[-3000:]
    reports = [json.loads((repo / "run" / f"ddp-rank{rank}.json").read_text()) for rank in (0, 1)]
    return repo, log, reports


def test_a_ddp_run_trains_in_worker_processes_that_hand_back_their_share(ddp_run):
    _, log, (first, second) = ddp_run
    assert "DDP: 2 worker processes on device cpu: " in log
    assert [first["rank"], second["rank"]] == [0, 1]
    # each worker holds the whole training set
    assert log.count(f"GPU data: {EASY_COUNTS['train']} training images decoded") == 2
    assert first["trained_images"] == second["trained_images"] > 0  # and trains on its half of every epoch
    assert first["epoch"] == second["epoch"]  # every rank took rank 0's estimate of the epochs that fit
    # rank 1's own estimate (CLOCKS_APART) was smaller than rank 0's,
    # yet after every epoch both trained with rank 0's
    estimates = re.findall(r"cpu_ddp: rank (\d) after epoch \d+: own estimate (\d+) epochs, trains (\d+)",
                           log)
    own = {r: [int(n) for rank, n, _ in estimates if rank == r] for r in "01"}  # after epoch 1, 2, ...
    trains = {r: [int(n) for rank, _, n in estimates if rank == r] for r in "01"}
    assert len(own["0"]) == len(own["1"]) == first["epoch"] + 1  # Ultralytics estimates after every epoch
    assert all(mine < rank0 for rank0, mine in zip(own["0"], own["1"])), own
    assert trains["0"] == trains["1"] == own["0"], (trains, own)
    assert (first["gpu"], first["peak_vram_mb"]) == ("cpu", 0.0)
    # rank 0 alone carries what the guard checks: the settings the workers used
    assert "args" not in second and "metrics" not in second
    assert first["args"]["conf"] is None and first["splits"]["val"].endswith("run/view/val/images")


def test_a_ddp_run_summary_means_what_a_one_gpu_run_summary_means(ddp_run):
    repo, log, (first, second) = ddp_run
    summary = summary_of(log)
    assert summary["training_seconds"] == f"{first['training_seconds']:.1f}"  # rank 0's clock
    assert int(summary["epoch"]) == first["epoch"] + 1
    images = first["trained_images"] + second["trained_images"]  # every rank's images
    assert float(summary["train_images_per_s"]) == pytest.approx(images / first["training_seconds"], abs=0.06)
    assert (summary["peak_vram_mb"], summary["device"]) == ("0.0", "cpu")
    # fitness: the supervisor's validation of the best.pt the workers trained, as for one GPU
    assert float(summary["fitness"]) > EASY_MAP_FLOOR  # the workers' training learned: not 0 compared with 0
    honest = validate_independently(repo, repo / "run" / "data.yaml", repo.parent / "validation")
    assert summary["fitness"] == f"{honest['metrics/mAP50-95(B)']:.6f}"  # an independent validation of it


def test_a_worker_failure_ends_the_log_with_the_workers_own_error_line(tiny_data, tmp_path):
    repo = make_ddp_repo(tmp_path, call_extra="box=float('nan')")
    rc, log = run_train(repo, tiny_data / "data.yaml", env=TWO_WORKERS)
    last = assert_failed(rc, log, "error: loss is nan in epoch 1: the training diverged; lower LR0")
    assert re.search(r"\(DDP rank [01] of 2\)$", last), last  # not torch.distributed's traceback


def test_the_guard_checks_the_settings_the_workers_trained_with(tiny_data, tmp_path):
    # on_train_start runs in the DDP workers only: the parent (train.py's child) launches them, it trains
    # nothing. A setting changed there never shows in the parent's own, and must still fail the run.
    workers_only = "model.add_callback('on_train_start', lambda trainer: setattr(trainer.args, 'conf', 0.5))"
    repo = make_ddp_repo(tmp_path, before_train=workers_only)
    rc, log = run_train(repo, tiny_data / "data.yaml", env=TWO_WORKERS, timeout=DDP_HANG_S)
    assert "conf=0.5 (default None)" in assert_failed(rc, log,
                                                      "error: train.py changed what gets evaluated: ")
    assert (repo / "run" / "ddp-rank0.json").is_file()  # the workers finished: the hand-off carried it


# Inserted before prepare.finish(model) in a one-process run: the guard on what a worker hands back.
HANDOFF_CHECK = '''
import json
from harness.ddp import worker_report, worker_view
from prepare import HarnessError, guard
report = json.loads(json.dumps(worker_report(model.trainer, 0), default=str))  # as the parent reads it
guard(worker_view(report), run)
report["args"]["conf"] = 0.5  # as if a callback in the workers had changed it
try:
    guard(worker_view(report), run)
    caught = None
except HarnessError as e:
    caught = str(e)
print("CHECK " + json.dumps({"caught": caught}))
'''


def test_the_guard_checks_the_settings_a_worker_hands_back(tiny_data, tmp_path):
    repo = make_repo(tmp_path, after_train=HANDOFF_CHECK)
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert rc == 0, log[-3000:]
    check = json.loads(next(line for line in log.splitlines() if line.startswith("CHECK "))[6:])
    assert check["caught"].startswith("train.py changed what gets evaluated: conf=0.5 (default None)")


@pytest.mark.parametrize("device, says", [
    ("[0, 99]", "error: DEVICE = [0, 99] in train.py: GPU "),          # no such GPU (none at all on CPU)
    ("'cuda:1'", "error: DEVICE = 'cuda:1' in train.py: use None (GPU 0), a GPU index (1) or a list"),
    ("[1, 1]", "error: DEVICE = [1, 1] in train.py names a GPU twice"),
])
def test_a_device_request_the_machine_cannot_meet_fails_before_anything_is_written(tiny_data, tmp_path,
                                                                                     device, says):
    repo = make_repo(tmp_path, knobs={"DEVICE": device})
    rc, log = run_train(repo, tiny_data / "data.yaml")
    assert_failed(rc, log, says)
    assert "time budget:" not in log and "Starting training" not in log  # failed before any GPU time
    # nothing of the run but the supervisor's view of the val split (run/view), and its line in the record
    assert sorted(p.name for p in repo.iterdir()) == ["harness", "prepare.py", "record", "run", "run.log",
                                                      "train.py"]
    assert [p.name for p in (repo / "run").iterdir()] == ["view"]
    assert not (repo / "record" / "best").exists()


def test_device_requests():
    import torch
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert device.pick_device("cpu") == ("cpu", "cpu")
    assert device.pick_device(None)[0] == (0 if gpus else "cpu")
    for bad in (True, [], [-1], [0.5], "0,1"):
        with pytest.raises(prepare.HarnessError, match="use None"):
            device.pick_device(bad)
    with pytest.raises(prepare.HarnessError, match=f"GPU {gpus} does not exist"):
        device.pick_device(list(range(gpus + 1)))


def test_a_failed_ddp_run_ends_with_the_worker_error_that_started_it():
    nan = "loss is nan in epoch 3: the training diverged; lower LR0, or try AMP = False"
    interrupted = failure.describe_failure(KeyboardInterrupt())
    reports = [{"rank": 0, "error": interrupted}, {"rank": 1, "error": nan}]
    assert ddp.ddp_failure(reports, 1, 2) == f"{nan} (DDP rank 1 of 2)"
    assert ddp.ddp_failure(reports[:1], 1, 2) == f"{interrupted} (DDP rank 0 of 2)"
    assert ddp.ddp_failure([], -9, 4).startswith("the DDP workers failed (exit code -9) "
                                                 "without an error line")


def test_peak_vram_of_a_ddp_run_is_the_largest_per_gpu():
    reports = [{"rank": 0, "gpu": 0, "peak_vram_mb": 8000.0}, {"rank": 1, "gpu": 1, "peak_vram_mb": 7900.0}]
    # the parent held 300 MB on GPU 0 while the workers ran; its own validation afterwards peaked at 2000
    per_gpu = ddp.ddp_peak_vram_mb(reports, {0: 300.0, 1: 0.0}, 0, 2000.0)
    assert per_gpu == {0: 8300.0, 1: 7900.0}
    assert ddp.ddp_peak_vram_mb(reports, {}, 0, 9000.0) == {0: 9000.0, 1: 7900.0}


def alive(pid):
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_an_interrupted_parent_stops_every_worker_process(tmp_path):
    # The DDP workers run as one process group: SIGTERM to the parent (`timeout 600 uv run train.py`)
    # must not leave a worker, or the workers' own dataloader processes, holding a GPU.
    pidfile = tmp_path / "grandchild.pid"
    worker = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
              f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(600)")
    parent = ("import prepare, sys; from harness import ddp; "
              f"ddp.run_group([sys.executable, '-c', {worker!r}])")
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=common.REPO_DIR, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for _ in range(300):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.1)
    grandchild = int(pidfile.read_text())
    assert alive(grandchild)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert_failed(proc.returncode, out, "error: interrupted")
    for _ in range(50):
        if not alive(grandchild):
            break
        time.sleep(0.1)
    assert not alive(grandchild)


def test_the_workers_get_the_harness(tiny_data, tmp_path):
    # Ultralytics sends DDP workers the trainer class by reference (cloudpickle): the state it writes for
    # them, loaded as its worker script loads it, imports prepare, with its offline settings, patches and
    # error line. Both halves run in fresh processes, as in a real run: the parent writes the state, a worker
    # loads it.
    launch = f"""
import prepare
from ultralytics.utils.dist import generate_ddp_file
overrides = {{"data": {str(tiny_data / "data.yaml")!r}, "model": "yolo11n.yaml", "device": "cpu",
             "project": {str(tmp_path)!r}, "name": "ddp"}}
print(generate_ddp_file(prepare.Trainer(overrides=overrides)))
"""
    out = subprocess.run([sys.executable, "-c", launch], cwd=common.REPO_DIR, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    file = Path(out.stdout.strip().splitlines()[-1])
    worker = f"""
import json, os, sys
sys.path = {sys.path!r}
from ultralytics.utils.patches import torch_load  # the worker script's order: Ultralytics, then the state
state = torch_load({str(file.with_suffix(".pt"))!r}, map_location="cpu")
import prepare
from harness import failure, runtime
import ultralytics.data.dataset as dataset_mod
import ultralytics.engine.trainer as trainer_mod
print(json.dumps({{
    "trainer": state["trainer"] is prepare.Trainer, "prepare": prepare.__file__,
    "check_amp": trainer_mod.check_amp is runtime.check_amp,
    "excepthook": sys.excepthook is failure._excepthook,
    "labels_cache": dataset_mod.save_dataset_cache_file is runtime.save_labels_cache,
    "env": [os.environ.get(k) for k in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR")]}}))
"""
    try:
        out = subprocess.run([sys.executable, "-c", worker], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        seen = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        file.unlink()
        file.with_suffix(".pt").unlink()
    assert seen == {"trainer": True, "prepare": str(common.REPO_DIR / "prepare.py"), "check_amp": True,
                    "excepthook": True, "labels_cache": True,
                    "env": ["1", "0", str(runtime.config_dir())]}
