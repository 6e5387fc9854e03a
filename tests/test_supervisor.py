"""The supervisor: train.py's own process runs train.py again as a child, holds the budget, validates best.pt
itself and prints the last lines. Each test edits a copy of train.py the way an agent might, to move the
metric or to end a run without an `error:` line, and asserts one of two outcomes: the run ends with an
`error:` line, no `fitness:` line and a non-zero exit; or what the edit tried to change did not change (the
metric, or anything outside the run folder)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    EASY_BUDGET,
    EASY_KNOBS,
    EASY_MAP_FLOOR,
    REPO,
    assert_failed,
    make_repo,
    run_train,
    seed_grep,
    snapshot,
    summary_of,
    validate_independently,
)


def edited(repo, old, new):
    train = repo / "train.py"
    text = train.read_text()
    assert old in text, old
    train.write_text(text.replace(old, new))
    return repo


# ---------------------------------------------------------------------------
# Cumulative training: weights this harness trained are refused
# ---------------------------------------------------------------------------

def test_weights_an_earlier_run_trained_are_refused(tiny_data, easy_run, tmp_path):
    repo = make_repo(tmp_path)
    (repo / "weights").mkdir()
    shutil.copy(easy_run[0] / "run" / "weights" / "best.pt", repo / "weights" / "mine.pt")
    edited(repo, 'MODEL = "yolo11n.pt"', 'MODEL = "mine.pt"')
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    last = assert_failed(rc, log, "error: MODEL = 'mine.pt' in train.py: ")
    assert "was trained by this harness" in last and "weights from earlier runs are refused" in last


RELABEL = """
import sys, torch
ckpt = torch.load(sys.argv[1], weights_only=False)
if sys.argv[3] == "strip":
    ckpt.pop("train_args")
else:
    ckpt["train_args"]["data"] = "coco8.yaml"
    ckpt["ema"] = ckpt["ema"].float()
torch.save(ckpt, sys.argv[2])
"""


def test_weights_an_earlier_run_trained_are_refused_whatever_their_metadata_says(tiny_data, easy_run,
                                                                                 tmp_path):
    repo = make_repo(tmp_path)
    (repo / "weights").mkdir()
    trained = easy_run[0] / "run" / "weights" / "best.pt"
    for how in ("strip", "rewrite"):  # train_args removed; train_args naming another dataset, float32 weights
        subprocess.run([sys.executable, "-c", RELABEL, str(trained),
                        str(repo / "weights" / "yolo11n.pt"), how], check=True, timeout=120)
        rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
        last = assert_failed(rc, log, "error: MODEL = 'yolo11n.pt' in train.py: ")
        assert "the same weights as a checkpoint an earlier run trained" in last, how


def test_training_from_such_weights_behind_starts_back_is_refused_after_the_run(tiny_data, easy_run,
                                                                                 tmp_path):
    repo = make_repo(tmp_path)
    shutil.copy(easy_run[0] / "run" / "weights" / "best.pt", tmp_path / "mine.pt")
    # start() not asked
    edited(repo, "model = YOLO(run.weights)", f"model = YOLO({str(tmp_path / 'mine.pt')!r})")
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert "which this harness trained" in assert_failed(rc, log, "error: training started from ")


def test_each_checkout_keeps_its_own_ultralytics_settings(tmp_path):
    show = ("import json, prepare; from harness import runtime; runtime.configure_ultralytics(); "
            "from ultralytics.utils import SETTINGS; "
            "print(json.dumps([SETTINGS[k] for k in ('runs_dir', 'weights_dir', 'datasets_dir')]))")
    for name in ("one", "two"):
        repo = make_repo(tmp_path, name=name)
        out = subprocess.run([sys.executable, "-c", show], cwd=repo, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        cache = Path(os.environ["AUTORESEARCH_CACHE"])
        assert json.loads(out.stdout.splitlines()[-1]) == [str(repo / "run"), str(repo / "weights"),
                                                           str(cache / "datasets")]

# ---------------------------------------------------------------------------
# More than the budget
# ---------------------------------------------------------------------------

AGAIN = ("model.train(trainer=prepare.Trainer, data=run.data, time=TIME_BUDGET / 3600, device=run.device, "
         "imgsz=IMGSZ, batch=BATCH, nbs=NBS, workers=WORKERS)")


@pytest.mark.parametrize("where", ["after_train", "before_train"])
def test_a_second_training_ends_the_run(tiny_data, tmp_path, where):
    # "progressive resizing": a first training at another size, then the real one, continued from it
    first = (AGAIN if where == "after_train"
             else "model.train(data=run.data, epochs=1, imgsz=32, batch=4, workers=0)")
    repo = make_repo(tmp_path, **{where: first})
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert_failed(rc, log, "error: train.py started a second training")


def test_a_budget_stretched_from_inside_is_stopped_by_the_supervisor(tiny_data, tmp_path):
    # the supervisor's own limits are not these
    stretch = ("prepare.END_ALLOWANCE = prepare.SETUP_LIMIT = 1e9\n"
               "model.add_callback('on_train_start', lambda t: setattr(t.args, 'time', 1.0))")
    repo = make_repo(tmp_path, before_train=stretch)
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    last = assert_failed(rc, log, "error: the run overran: prepare.finish() not reached ")
    assert "epochs done" in last and 16 <= int(re.search(r"not reached (\d+) s", last)[1]) <= 20


def test_a_patched_budget_constant_is_refused_by_the_guard(tiny_data, tmp_path):
    patch = "prepare.TIME_BUDGET *= 4\nTIME_BUDGET = prepare.TIME_BUDGET"  # then time=TIME_BUDGET / 3600
    repo = make_repo(tmp_path, before_train=patch)
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert "time=0.0011111111111111111 (must be TIME_BUDGET / 3600 = 0.000277778)" in assert_failed(
        rc, log, "error: train.py changed what gets evaluated: ")


def test_a_patched_budget_past_the_guard_is_stopped_on_the_supervisors_clock(tiny_data, tmp_path):
    patch = "prepare.TIME_BUDGET *= 60\nTIME_BUDGET = prepare.TIME_BUDGET\nprepare.guard = lambda *args: None"
    repo = make_repo(tmp_path, before_train=patch)
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    last = assert_failed(rc, log, "error: the run overran: prepare.finish() not reached ")
    assert "past the limit of" in last and "(the time budget 1 s, the longest step " in last


# A first training before the real one, by Ultralytics' own trainer, its reports to the supervisor cut: 20 s
# of training outside the clock (a hand-written loop looks the same to the supervisor).
HIDDEN_FIRST_TRAINING = """
from ultralytics.engine.trainer import BaseTrainer
report, BaseTrainer.run_callbacks = BaseTrainer.run_callbacks, lambda self, event: None
YOLO("yolo11n.yaml").train(data=run.data, time=20 / 3600, imgsz=32, batch=4, workers=0, device="cpu",
                           val=False, plots=False, project=str(prepare.RUN_DIR), name="hidden")
BaseTrainer.run_callbacks = report
"""


def test_training_outside_the_clock_before_model_train_is_stopped(tiny_data, tmp_path):
    repo = make_repo(tmp_path, before_train=HIDDEN_FIRST_TRAINING)
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    last = assert_failed(rc, log, "error: train.py's own code ran ")
    assert re.match(r"error: train.py's own code ran 1[56] s outside the training clock \(limit 15 s",
                    last), last

# ---------------------------------------------------------------------------
# Evaluation changed, then hidden: the metric is the supervisor's own validation
# ---------------------------------------------------------------------------

HIDE = """
import yaml
d = yaml.safe_load(open(run.data)); d['val'] = d['train']; yaml.safe_dump(d, open(run.data, 'w'))
prepare.FITNESS_KEY = 'metrics/mAP50(B)'
model.trainer.metrics = {k: 1.0 for k in ('metrics/precision(B)', 'metrics/recall(B)', 'metrics/mAP50(B)',
                                           'metrics/mAP50-95(B)')}
model.trainer.args.conf = None
"""


def test_evaluation_changed_and_hidden_does_not_move_the_metric(easy_data, tmp_path):
    # The child reads each epoch's mAP50-95 at IoU 0.5 alone: inflated, yet still rising with training, so
    # best.pt is a trained epoch and the floor below holds.
    repo = make_repo(tmp_path, knobs={**EASY_KNOBS, "VAL": "True"}, after_train=HIDE,
                     before_train="import torch; model.add_callback('on_val_start', "
                                  "lambda v: setattr(v, 'iouv', torch.full((10,), 0.5)))")
    rc, log = run_train(repo, easy_data / "data.yaml", budget=EASY_BUDGET)
    assert rc == 0, log[-3000:]
    honest = validate_independently(repo, easy_data / "data.yaml", tmp_path)
    summary = summary_of(log)
    # it learned, and nothing above faked a perfect score
    assert EASY_MAP_FLOOR < honest["metrics/mAP50-95(B)"] < 1.0
    assert float(summary["fitness"]) == pytest.approx(honest["metrics/mAP50-95(B)"], abs=1e-6)
    assert float(summary["map50"]) == pytest.approx(honest["metrics/mAP50(B)"], abs=1e-6)


def test_a_run_that_never_trains_ends_with_an_error(tiny_data, tmp_path):
    repo = edited(make_repo(tmp_path), "model.train(\n", "dict(\n")
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert_failed(rc, log, "error: train.py must call prepare.start() and then model.train()")

# The trainer's dataset builder patched so that training reads the val split.
TRAIN_ON_VAL = """
from ultralytics.models.yolo.detect import DetectionTrainer
build = DetectionTrainer.build_dataset
DetectionTrainer.build_dataset = lambda self, path, mode="train", batch=None: build(
    self, self.data["val"] if mode == "train" else path, mode, batch)
"""


@pytest.mark.parametrize("gpu_data", ["True", "False"])
def test_training_on_the_val_split_is_refused(tiny_data, tmp_path, gpu_data):
    repo = make_repo(tmp_path, knobs={"GPU_DATA": gpu_data}, before_train=TRAIN_ON_VAL)
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    last = assert_failed(rc, log, "error: train.py changed what gets evaluated: the training images "
                                  "(6 of 6 read from outside the train split "
                                  f"{(tiny_data / 'train' / 'images').resolve()}, e.g. ")
    assert "/run/view/val/images/" in last  # the child's val split: a view of links in its run folder


def test_best_pt_changed_after_finish_is_refused(tiny_data, tmp_path):
    swap = ("import torch; p = prepare.RUN_DIR / 'weights' / 'best.pt'; "
            "c = torch.load(p, weights_only=False); "
            "next(c['ema'].parameters()).data += 1; torch.save(c, p)")
    repo = edited(make_repo(tmp_path), "prepare.finish(model)", f"prepare.finish(model)\n{swap}")
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert_failed(rc, log, f"error: {repo / 'run' / 'weights' / 'best.pt'} changed after prepare.finish(): ")

# ---------------------------------------------------------------------------
# Nothing of train.py runs before the supervisor
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("above, ok", [
    ('"""The docstring."""\n# a comment\nfrom __future__ import annotations\n', True),
    ("import os\n", False),
    ("import builtins; builtins.print = lambda *a, **k: None\n", False),
    ('import os; os.environ["YOLO_DATA"] = "elsewhere.yaml"\n', False),
    ("import prepare as p\n", False),
])
def test_the_first_statement_of_train_py_is_import_prepare(tmp_path, above, ok):
    from harness import supervisor
    from harness.common import HarnessError
    train = tmp_path / "train.py"
    train.write_text(above + "import prepare\nMODEL = 1\n")
    if ok:
        supervisor.check_first_statement(train)
        return
    with pytest.raises(HarnessError, match=r"line \d: `.+` runs before `import prepare`; train.py's first "):
        supervisor.check_first_statement(train)


def test_code_above_import_prepare_ends_the_run_before_the_supervisor_starts(tiny_data, tmp_path):
    repo = edited(make_repo(tmp_path), "import prepare  #",
                  'import os; os.environ["AUTORESEARCH_CHILD"] = "1"\n'
                  "import prepare  #")
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert_failed(rc, log, f"error: {repo / 'train.py'} line 12: `import os` runs before `import prepare`")
    assert not (repo / "run").exists()


def test_a_run_that_says_it_is_the_child_without_the_supervisors_pipe_ends_at_once(tiny_data, tmp_path):
    repo = make_repo(tmp_path)
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1, env={"AUTORESEARCH_CHILD": "1"})
    assert "without its report pipe" in assert_failed(rc, log,
                                                      "error: train.py runs as the supervisor's child ")
    assert not (repo / "run").exists()


def test_the_supervisors_lines_go_past_a_patched_print_and_stdout(tmp_path):
    script = ("import builtins, io, sys\nfrom harness import supervisor\n"
              "builtins.print = lambda *a, **k: None\nsys.stdout = io.StringIO()\n"
              "supervisor.say('fitness: 0.5')")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout == "fitness: 0.5\n", out.stderr

# ---------------------------------------------------------------------------
# The dataset: changed during a run is an error (between runs: tests/test_night.py)
# ---------------------------------------------------------------------------

def test_writing_into_the_dataset_during_a_run_ends_it(dataset, tmp_path):
    leak = (f"import shutil, glob; im = sorted(glob.glob({str(dataset / 'valid' / 'images' / '*')!r}))[0]; "
            f"shutil.copy(im, {str(dataset / 'train' / 'images')!r})")
    repo = make_repo(tmp_path, after_train=leak)
    rc, log = run_train(repo, dataset / "data.yaml", budget=1)
    last = assert_failed(rc, log, "error: the dataset changed during the run: 1 added (")
    assert str(dataset / "train" / "images") in last

# ---------------------------------------------------------------------------
# The last lines are the supervisor's
# ---------------------------------------------------------------------------

def test_lines_that_could_pass_for_the_summary_are_marked_as_the_childs(tiny_data, tmp_path):
    fake = "print('---'); print('fitness: 0.990000'); print('peak_vram_mb: 1.0'); print('error: not really')"
    late = "import atexit; atexit.register(lambda: print('fitness: 0.980000'))"
    repo = make_repo(tmp_path, before_train=fake, after_train=late)
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert rc == 0, log[-3000:]
    assert [line.split(":")[0] for line in seed_grep(log)] == ["fitness", "peak_vram_mb"]
    assert summary_of(log)["fitness"] != "0.990000"
    assert "train.py| fitness: 0.990000" in log and "train.py| fitness: 0.980000" in log
    assert log.rstrip().splitlines()[-1].startswith("run_dir: ")

# ---------------------------------------------------------------------------
# Runs that end without an error line of their own
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("before_train, says", [
    ("import sys; sys.exit(0)", "error: train.py ended (exit code 0) without finishing"),
    ("import os; os._exit(0)", "error: train.py ended (exit code 0) without finishing"),
    ("import ctypes; ctypes.string_at(0)", "error: train.py ended (signal SIGSEGV) without finishing"),
    ("import os, sys; sys.stdout = sys.stderr = open(os.devnull, 'w'); raise RuntimeError('hidden')",
     "error: RuntimeError: hidden"),
], ids=["sys.exit", "os._exit", "segfault", "output-hidden"])
def test_a_child_that_ends_early_ends_the_log_with_an_error_line(tiny_data, tmp_path, before_train, says):
    repo = make_repo(tmp_path, before_train=before_train)
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert_failed(rc, log, says)


def test_a_child_killed_from_outside_names_its_peak_memory_and_the_fix(tiny_data, tmp_path):
    # the kernel's out-of-memory killer sends SIGKILL, with no line of its own in the log
    repo = make_repo(tmp_path, after_train="import os, signal; held = b'x' * 1_500_000_000; "
                                           "os.kill(os.getpid(), signal.SIGKILL)")
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    last = assert_failed(rc, log, "error: train.py was killed (signal SIGKILL) after holding up to ")
    peak, total = (float(x) for x in re.findall(r"([\d.]+) GB", last))
    assert 1.5 <= peak < total
    assert total == pytest.approx(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, abs=0.1)
    assert last.endswith("lower BATCH or IMGSZ in train.py")


def test_an_error_after_the_summary_is_handed_over_cannot_follow_it(tiny_data, tmp_path):
    repo = edited(make_repo(tmp_path), "prepare.finish(model)",
                  "prepare.finish(model)\nimport atexit; atexit.register(lambda: 1 / 0)")
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert rc == 0, log[-3000:]
    assert log.rstrip().splitlines()[-1].startswith("run_dir: ")


def test_sigterm_before_training_ends_with_one_error_line_and_leaves_no_child(tiny_data, tmp_path):
    repo = make_repo(tmp_path, before_train="import time; time.sleep(600)")  # the child still setting up
    env = {**os.environ, "AUTORESEARCH_TIME_BUDGET": "5", "YOLO_DATA": str(tiny_data / "data.yaml")}
    log_path = repo / "run.log"
    with open(log_path, "w") as f:
        proc = subprocess.Popen([sys.executable, "train.py"], cwd=repo, env=env, stdout=f,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while "time budget:" not in log_path.read_text() and time.time() < deadline:
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)  # what `timeout 600 uv run train.py` sends
            rc = proc.wait(timeout=120)
        finally:
            proc.kill()
    log = log_path.read_text()
    assert_failed(rc, log, "error: interrupted")
    ps = subprocess.run(["pgrep", "-f", f"{repo / 'train.py'}|^{sys.executable} train.py"],
                        capture_output=True, text=True, cwd=repo)
    assert not [p for p in ps.stdout.split() if Path(f"/proc/{p}/cwd").resolve() == repo], ps.stdout

# ---------------------------------------------------------------------------
# Knobs that write where they must not
# ---------------------------------------------------------------------------

def test_cache_disk_is_refused_before_training(tiny_data, tmp_path):
    repo = make_repo(tmp_path, knobs={"GPU_DATA": "False", "CACHE": "'disk'"})
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert_failed(rc, log, "error: cache='disk' writes .npy files into the dataset's folders")
    assert not list(tiny_data.rglob("*.npy"))


@pytest.mark.parametrize("gpu_data", ["True", "False"])
def test_multi_scale_is_refused_before_training(tiny_data, tmp_path, gpu_data):
    repo = make_repo(tmp_path, knobs={"GPU_DATA": gpu_data}, call_extra="multi_scale=0.5")
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert_failed(rc, log, "error: multi_scale=0.5 trains each batch at a new image size")
    assert "leave it at 0.0" in log


def test_a_run_writes_only_its_run_folder_and_the_record_whatever_train_py_passes(dataset, tmp_path):
    repo = edited(make_repo(tmp_path), "project=run.project, name=run.name, exist_ok=True,", "name='mine',")
    # on the train split: the val split is read by the validations of VAL = True alone (tests/test_night.py)
    validate = ("YOLO(str(prepare.RUN_DIR / 'weights' / 'best.pt')).val(data=run.data, split='train', "
                "imgsz=IMGSZ, batch=4, device=run.device, plots=False)")
    edited(repo, "prepare.finish(model)", f"{validate}\nprepare.finish(model)")
    (repo / "weights").mkdir()
    assert run_train(repo, dataset / "data.yaml", budget=1)[0] == 0
    before = snapshot(repo, dataset, leave_out=("run", "record"))
    rc, log = run_train(repo, dataset / "data.yaml", budget=1)
    assert rc == 0, log[-3000:]
    after = snapshot(repo, dataset, leave_out=("run", "record"))
    assert after.keys() == before.keys()
    assert {p: v for p, v in after.items() if p.name != "run.log"} == \
        {p: v for p, v in before.items() if p.name != "run.log"}
    assert ((repo / "run" / "weights" / "best.pt").is_file()
            and summary_of(log)["run_dir"] == str(repo / "run"))

# ---------------------------------------------------------------------------
# Stopping: a child with DDP workers gets the time its own stop of them takes
# ---------------------------------------------------------------------------

STOPPING_CHILD = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
from harness import report
report.take_pipe(os.path.join({repo!r}, "train.py"))
def on_term(*_):  # as the harness's DDP parent does: torchrun waits for its workers, then it exits
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep({stopping})
    open({marker!r}, "w").write("workers stopped")
    sys.exit(1)
signal.signal(signal.SIGTERM, on_term)
if {ddp}:
    report.send("process_group", pgid=os.getpid())
report.send("train_start")
time.sleep(600)
"""


@pytest.mark.parametrize("ddp", [False, True])
def test_a_stopped_child_with_ddp_workers_gets_the_time_to_stop_them(tmp_path, monkeypatch, ddp):
    import io

    from harness import supervisor
    monkeypatch.setattr(supervisor, "STOP_GRACE", 1)  # the graces shortened; their sum is what is tested
    monkeypatch.setattr(supervisor, "DDP_STOP_GRACE", 4)
    marker = tmp_path / "stopped"
    script = tmp_path / "child.py"
    script.write_text(STOPPING_CHILD.format(repo=str(REPO), marker=str(marker), ddp=ddp, stopping=3))
    child = supervisor.Child([str(script)], 1, out=io.StringIO())
    assert child.wait(lambda: child.first("train_start"), time.time() + 60)
    child.stop()
    child.finish()
    # without workers it is killed STOP_GRACE after SIGTERM, before its own stop ends
    assert marker.exists() == ddp

# ---------------------------------------------------------------------------
# The end limit, on the supervisor's clock from the child's start of training (on_train_start)
# ---------------------------------------------------------------------------

TRAINING_CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from harness import report
report.take_pipe("train.py")
report.send("trainer")
report.send("train_start", val=False)
for seconds in {steps!r}:  # each step a new longest one, reported once it has finished
    time.sleep(seconds)
    report.send("step", seconds=seconds)
time.sleep({hang})
report.Done(training_seconds=1.5, trained_images=8, epoch=0, batch=4, peak_vram_mb=12.5, device=[0, 1],
            device_name="cpu", weights="yolo11n.yaml (random init)", best_digest="abc").send()
{after}
"""


def hold_training_child(tmp_path, steps, hang, after="", exit_grace=30):
    """Run TRAINING_CHILD, with `after` run once it handed over its Done, under a 1 s budget, 8 s of set-up,
    1 s for the checkpoint. Returns (the Done or the HarnessError, seconds from its start of training to the
    end of the wait)."""
    import io

    from harness import supervisor
    from harness.common import HarnessError
    script = tmp_path / "child.py"
    script.write_text(TRAINING_CHILD.format(repo=str(REPO), steps=steps, hang=hang, after=after))
    child = supervisor.Child([str(script)], 1, out=io.StringIO())
    try:
        outcome = supervisor.hold_limits(child, supervisor.Limits(1, 8, 15, 1, 0, exit_grace))
    except HarnessError as e:
        outcome = e
    ended = time.time()
    if child.running():  # a limit that failed to end it: the assertions fail, not the wait for its exit
        child.stop()
    child.finish()
    return outcome, ended - child.first("train_start")["at"]


def test_a_first_step_longer_than_the_budget_finishes_and_hands_over_a_typed_done(tmp_path):
    from harness.report import Done
    done, seconds = hold_training_child(tmp_path, steps=[3], hang=0)  # past 1 s + 1 s, no step yet
    assert isinstance(done, Done), done
    assert (done.training_seconds, done.trained_images, done.epoch, done.batch, done.peak_vram_mb) == \
        (1.5, 8, 0, 4, 12.5)
    assert (done.device, done.device_name, done.weights, done.best_digest) == \
        ([0, 1], "cpu", "yolo11n.yaml (random init)", "abc")
    assert 3 <= seconds < 8 and done.at > 0


def test_while_no_step_has_finished_the_limit_allows_the_setup_limit_for_it(tmp_path):
    error, seconds = hold_training_child(tmp_path, steps=[], hang=600)
    assert str(error).startswith("the run overran: prepare.finish() not reached 1")
    assert ("s after training started (on_train_start), past the limit of 10 s (the time budget 1 s, 8 s "
            "while no step has finished, 1 s for the checkpoint), no epoch done; stopped. ") in str(error)
    assert 10 <= seconds < 13


def test_once_a_step_has_finished_the_limit_allows_the_longest_step_only(tmp_path):
    error, seconds = hold_training_child(tmp_path, steps=[0.5], hang=600)
    assert "past the limit of 2 s (the time budget 1 s, the longest step 0.5 s, 1 s for the " in str(error)
    assert 2.5 <= seconds < 5


def test_a_last_step_that_ends_past_the_allowance_ends_well_when_no_longer_than_the_longest(tmp_path):
    # a slow machine: the second step starts before the budget ends and ends 1.4 s past it, past the 1 s for
    # the checkpoint; the limit allows the longest step seen (0.9 s) on top
    from harness.report import Done
    done, seconds = hold_training_child(tmp_path, steps=[0.9, 1.5], hang=0)
    assert isinstance(done, Done), done
    assert 2.4 <= seconds


def test_a_thread_left_running_after_finish_is_stopped_and_is_an_error(tmp_path):
    linger = "import threading; threading.Thread(target=time.sleep, args=(600,)).start()"
    error, seconds = hold_training_child(tmp_path, steps=[0.1], hang=0, after=linger, exit_grace=2)
    assert str(error) == ("train.py did not exit 2 s after prepare.finish() (a thread or process left "
                          "running?); stopped")
    assert 2 <= seconds < 5  # the child had no handler for SIGTERM
