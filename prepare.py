"""
The fixed contract of autoresearch for ship detection: the time budget, the metric, what the supervisor
checks and enforces, every way a run ends, and the summary. Read-only for the agent. The machinery
(dataset checks, the stand-in, the GPU data pipeline, several GPUs, process handling, the progress plot)
lives in the read-only package harness/, which needs no reading.

Usage:
    uv run prepare.py                        # find and check the dataset, print its stats
    uv run prepare.py --synthetic full       # generate the stand-in at Kaggle scale (small: CPU default)
    uv run prepare.py --weights yolo11n.pt   # one-time download of pretrained weights into weights/
    uv run prepare.py progress               # results.tsv and the run record -> a summary and progress.png
    uv run prepare.py progress --test        # the human's morning check: the kept bests on the test split
    uv run prepare.py night                  # a new night (new dataset or contract): the record moves aside

`uv run train.py > run.log 2>&1`: train.py's first statement imports this module, and that process
becomes the supervisor before any of train.py's own code runs. It checks and fingerprints the dataset,
runs train.py again as a child that trains (start(), model.train(trainer=Trainer), finish()), holds the
time limits, validates the child's best.pt itself, adds the run to the record (record/: one line for
every run, whatever its end, and the weights of each new best) and prints the summary: the last lines
of the log.

A run ends with the summary as its last lines and exit code 0, or with one `error:` line last, no
`fitness:` line and a non-zero exit code (README.md quotes them), when:
- train.py has code above `import prepare`, the dataset is broken, or the read-only files or the dataset
  differ from the night's baseline (the record's first run: harness/night.py), all before the child starts;
- DEVICE, a knob or MODEL is refused (start() and the trainer, before training);
- BATCH does not fit the GPU (before the first step, measured by harness/memory.py; never halved);
- training runs out of memory, or its loss is NaN;
- train.py changed what gets evaluated, started a second training, left a process running after it exited,
  or opened a file of the val or test split (but its own validations with VAL = True: harness/watch.py);
- a time limit passes (below), or the dataset or best.pt changed during the run;
- the child crashed, was killed or exited without finishing; SIGTERM or Ctrl-C.
A train.py that does not parse never gets here: Python's SyntaxError ends it.
"""

import functools
import json
import math
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness import dataset, ddp, device, failure, night, record, report, runtime, supervisor, validation
from harness.common import CACHE_DIR, GPU_DATA_ENV, REPO_DIR, RUN_DIR, HarnessError, banner, warn
from harness.device import pick_device, resolve_weights  # start()'s `device` is train.py's DEVICE
from harness.watch import HeldOut

# ---------------------------------------------------------------------------
# Constants (fixed, do not modify)
# ---------------------------------------------------------------------------

T0 = time.time()                     # total_seconds counts from here: train.py imports prepare first
TIME_BUDGET = 300                    # seconds of training per experiment (Ultralytics' own clock)
FITNESS_KEY = "metrics/mAP50-95(B)"  # the one number the agent maximizes
# Tests shorten the budget; nothing may lengthen it, and the summary always shows it.
if "AUTORESEARCH_TIME_BUDGET" in os.environ:
    TIME_BUDGET = min(TIME_BUDGET, float(os.environ["AUTORESEARCH_TIME_BUDGET"]))
# The supervisor's limits, on its own clock. From the child's start to its start of training (imports,
# decoding the images, building the model); with several GPUs the workers' start comes on top of the budget.
SETUP_LIMIT = 150
# Of that, train.py's own code (knobs, YOLO()): `import prepare` to start(), start() to model.train(...).
TRAIN_PY_LIMIT = 15
# From the start of training to prepare.finish(): the budget, the longest step so far (the last may start
# just before the end; SETUP_LIMIT while none has finished), END_ALLOWANCE (checkpoints, the guard) and with
# VAL = True the longest validation so far.
END_ALLOWANCE = 15
FIRST_VAL_ALLOWANCE = 0.2 * TIME_BUDGET + 30
EXIT_GRACE = 30                      # from prepare.finish() to the child's exit
# Evaluation settings that train.py must leave at Ultralytics' defaults: with VAL = True they choose best.pt.
EVAL_ARGS = ("split", "conf", "iou", "max_det", "classes", "agnostic_nms", "augment", "single_cls")
# Ultralytics knobs the GPU data pipeline (GPU_DATA = True) does not implement, with the only value it takes.
GPU_UNSUPPORTED = {"copy_paste": 0.0, "cutmix": 0.0, "bgr": 0.0, "rect": False}
DATASET_ENV = "AUTORESEARCH_DATASET"  # the supervisor's checked dataset, handed to the child
# The summary's lines, in order: the seed's ten, then what the agent needs to read a run.
SUMMARY_KEYS = ("fitness_key", "fitness", "training_seconds", "total_seconds", "peak_vram_mb", "precision",
                "recall", "map50", "map50_95", "epoch", "batch", "val_seconds", "time_budget_s",
                "train_images_per_s", "data", "dataset", "weights", "device", "run_dir")

runtime.go_offline()  # before Ultralytics is imported; then any failure ends in one `error:` line
failure.install(REPO_DIR / "train.py", workers=__name__ == "__mp_main__")

# ---------------------------------------------------------------------------
# The supervisor: train.py's own process, which never runs train.py's code
# ---------------------------------------------------------------------------


def supervise():
    """Check the dataset, run train.py's child, hold the limits, validate its best.pt, print the summary.
    Returns the exit code (0: the summary was printed); a failure raises HarnessError, the last line."""
    supervisor.adopt_orphans()  # every process the run starts, even a detached one, ends with it
    neighbours = device.ask_gpu_neighbours(record.knobs_of(Path(sys.argv[0]).read_text()).get("DEVICE"))
    lines = record.read_record()  # the night: one contract, one dataset (harness/night.py)
    night.check_contract(lines, night.contract(), record.RECORD)
    yaml_path, kind = dataset.find_dataset()
    stats = dataset.check_dataset(yaml_path)
    print(dataset.dataset_line(yaml_path, kind, stats))
    before = dataset.fingerprint(yaml_path, stats)
    key, files = night.dataset_of(stats, before)
    failure.note(dataset=key)
    night.check_dataset(lines, key, files, record.RECORD)
    shutil.rmtree(RUN_DIR, ignore_errors=True)  # nothing of an earlier run can pass for this one's
    child_stats, view = dataset.views(stats, RUN_DIR / "view")  # val through links of its own
    os.environ[DATASET_ENV] = json.dumps({"yaml": str(yaml_path), "kind": kind, "stats": child_stats},
                                         default=str)
    device.name_gpu_neighbours(neighbours.result())
    held_out = HeldOut(stats, view, first_of_night=night.baseline(lines, "dataset")[1] is None)
    child = supervisor.Child(sys.argv, TIME_BUDGET, marked=SUMMARY_KEYS + ("error",))
    # ready when validate_best needs them: Ultralytics' validator imports torchvision (~1 s) as it starts
    imports = ("ultralytics", "torchvision")
    threading.Thread(target=lambda: [__import__(name) for name in imports], daemon=True).start()
    done = supervisor.hold_limits(child, supervisor.Limits(
        TIME_BUDGET, SETUP_LIMIT, TRAIN_PY_LIMIT, END_ALLOWANCE, FIRST_VAL_ALLOWANCE, EXIT_GRACE))
    code, error = child.finish(), child.first("error")
    if error or code or not done:
        raise HarnessError(error["error"] if error else supervisor.ended_early(code))
    if child.leftovers:
        raise HarnessError(supervisor.left_behind(child.leftovers))
    dataset.check_unchanged(yaml_path, stats, before)
    held_out.check(child.first("train_start"))
    metrics, val_seconds, val_peak = validate_best(done, yaml_path, child_stats)
    return print_summary(done, child, metrics, val_seconds, val_peak, yaml_path, kind)


def validate_best(done, yaml_path, stats):
    """The metric: Ultralytics' validator on the child's run/weights/best.pt, with Ultralytics' default
    settings (no setting of the child's but the image size it trained at) on the fixed val split. Checks
    first that best.pt is the one the child finished with, trained on run.data from weights this harness
    did not train. Returns (metrics, seconds, peak GPU memory in MB)."""
    best = RUN_DIR / "weights" / "best.pt"
    if not best.is_file() or best.stat().st_mtime < T0:
        raise HarnessError(f"no {best} from this run: the child finished without saving its weights")
    runtime.configure_ultralytics()
    from ultralytics.utils.patches import torch_load
    args = torch_load(best, map_location="cpu", weights_only=False).get("train_args") or {}
    if Path(str(args.get("data"))).resolve() != (RUN_DIR / "data.yaml").resolve():
        raise HarnessError(f"best.pt was trained on data={args.get('data')}, not run.data; put it back")
    start = str(args.get("model") or "")
    if start.endswith(".pt") and Path(start).is_file() and (why := device.earlier_run(start, yaml_path)):
        raise HarnessError(f"training started from {start}, which this harness trained ({why}); weights "
                           "from earlier runs are refused: use released weights or a .yaml")
    if device.weights_digest(best) != done.best_digest:
        raise HarnessError(f"{best} changed after prepare.finish(): the metric is of the weights training "
                           "ended with; train.py must not write there")
    gpu = done.device[0] if isinstance(done.device, list) else done.device
    data = dataset.write_run_yaml(stats, CACHE_DIR / "val" / f"{os.getpid()}.yaml")  # the supervisor's copy
    t = time.time()
    metrics = validation.metric_of(best, data, "val", gpu, RUN_DIR)
    data.unlink()
    device.record_validated([best, best.with_name("last.pt")])  # refused as MODEL from now on
    return metrics.results_dict, time.time() - t, device.peak_vram_mb(gpu)


def print_summary(done, child, m, val_seconds, val_peak, yaml_path, kind):
    """The summary, in SUMMARY_KEYS' order: a line of the run record (harness/record.py), then the last
    lines of the log. Returns 0, the exit code."""
    fitness = float(m[FITNESS_KEY])
    if not math.isfinite(fitness):
        raise HarnessError(f"{FITNESS_KEY} is {fitness}: the training diverged; lower LR0, or try "
                           "AMP = False")
    # the child's clock, never longer than the supervisor's from the start of training to prepare.finish()
    training_seconds = min(done.training_seconds, done.at - child.first("train_start")["at"])
    values = (FITNESS_KEY, f"{fitness:.6f}", f"{training_seconds:.1f}", f"{time.time() - T0:.1f}",
              f"{max(done.peak_vram_mb, val_peak):.1f}", f"{float(m['metrics/precision(B)']):.6f}",
              f"{float(m['metrics/recall(B)']):.6f}", f"{float(m['metrics/mAP50(B)']):.6f}", f"{fitness:.6f}",
              done.epoch + 1, done.batch, f"{val_seconds:.1f}", f"{TIME_BUDGET:g}",
              f"{done.trained_images / max(training_seconds, 1e-9):.1f}", kind, str(yaml_path),
              done.weights, done.device_name, str(RUN_DIR))
    summary = dict(zip(SUMMARY_KEYS, map(str, values), strict=True))
    failure.record_run(summary, best_pt=RUN_DIR / "weights" / "best.pt")  # before the last lines
    supervisor.say("---")
    for key, value in summary.items():
        supervisor.say(f"{key}: {value}")
    return 0

# ---------------------------------------------------------------------------
# The child: start() checks device, knobs and weights before any GPU time is spent
# ---------------------------------------------------------------------------


@dataclass
class Run:
    """What train.py needs from the harness."""
    data: str           # the dataset YAML training uses: the checked dataset, resolved, in the run folder
    splits: dict        # train and val image folders: the guard checks training used these
    device: object      # a GPU index, [0, 1, ...] (DDP) or "cpu", as Ultralytics takes it
    device_name: str
    weights: str        # what YOLO() loads
    weights_note: str   # how the summary describes it
    project: str = str(RUN_DIR.parent)
    name: str = RUN_DIR.name


_RUN = None


def start(model, device=None, gpu_data=True):
    """Check device and weights before any GPU time is spent; returns the Run for train.py's call.
    device: train.py's DEVICE (None: GPU 0, else the CPU; 1: GPU 1; [0, 1]: one run over both).
    gpu_data: train from images decoded once and augmented on the GPU (else Ultralytics' CPU workers)."""
    global _RUN
    if DATASET_ENV not in os.environ:
        raise HarnessError("prepare.start() runs in train.py's child: run `uv run train.py`")
    report.send("start")
    request = device
    device, device_name = pick_device(request)  # first: a bad DEVICE fails before anything is written
    os.environ[GPU_DATA_ENV] = "1" if gpu_data else "0"  # an environment variable reaches DDP workers too
    checked = json.loads(os.environ[DATASET_ENV])
    stats = dataset.stats_from_json(checked["stats"])
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    data = dataset.write_run_yaml(stats, RUN_DIR / "data.yaml")
    runtime.configure_ultralytics()
    report.watch_trainings()
    if device == "cpu" and request is None:
        banner("no CUDA GPU found: training on the CPU. It works, about 100x slower; "
               "metrics are not comparable with GPU runs.")
    weights, weights_note = resolve_weights(model, checked["yaml"])
    print(f"time budget: {TIME_BUDGET:g} s | device: {device_name} | weights: {weights_note}")
    _RUN = Run(str(data), {s: str(stats[s].folder) for s in ("train", "val")}, device, device_name, weights,
               weights_note)
    report.send("started")
    return _RUN


def check_knobs(args):
    """Refuse knobs that write where they must not, that the GPU pipeline would ignore or that cannot run at
    speed in a 5-minute budget: at start-up, not never."""
    if args.cache == "disk":
        raise HarnessError("cache='disk' writes .npy files into the dataset's folders; use cache='ram' "
                           "(with GPU_DATA = False) or leave cache off")
    if args.multi_scale:  # with either data pipeline
        raise HarnessError(f"multi_scale={args.multi_scale!r} trains each batch at a new image size, and "
                           "every new size costs seconds of cuDNN set-up inside the budget (19 img/s on an "
                           "H200 against 1,600); leave it at 0.0 and try another fixed IMGSZ instead")
    if os.environ.get(GPU_DATA_ENV) != "1":
        return
    bad = [f"{k}={getattr(args, k)!r}" for k, ok in GPU_UNSUPPORTED.items() if getattr(args, k) != ok]
    if bad:
        raise HarnessError(f"{', '.join(bad)} is not supported by the GPU data pipeline; set "
                           "GPU_DATA = False in train.py to use Ultralytics' CPU dataloader for it")
    if args.cache:
        warn(f"cache={args.cache!r} has no effect with GPU_DATA = True: the training images are "
                    "decoded once anyway")

# ---------------------------------------------------------------------------
# Training: Ultralytics' trainer with the harness's clock, NaN stop and checkpoint policy
# ---------------------------------------------------------------------------


def __getattr__(name):
    """prepare.Trainer is built on first use, so Ultralytics is imported only after the offline setup
    (and `prepare.py check` or the stand-in's worker processes never import it)."""
    if name == "Trainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _trainer_class():
    runtime.configure_ultralytics()
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import DEFAULT_CFG

    from harness.trainer import TrainingData

    class Trainer(ddp.DDPTraining, TrainingData, DetectionTrainer):
        """Ultralytics' detection trainer with the harness's policy: it writes into the run folder only, its
        clock stops at the last optimizer step, a NaN loss ends the run at once, the last epoch is not
        validated (the supervisor validates best.pt), and checkpoints are written only when they can matter.
        The mixins: the image count and DDP (harness/ddp.py), the data pipeline and memory plan
        (harness/trainer.py)."""
        training_seconds = 0.0     # the trainer's clock at its end (DDP: rank 0's)

        def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
            report.send("trainer")  # train.py's own code outside the clock ends here (TRAIN_PY_LIMIT)
            # whatever name, project or exist_ok train.py passes: the one run folder
            overrides = {**(overrides or {}), "project": str(RUN_DIR.parent), "name": RUN_DIR.name,
                         "exist_ok": True}
            super().__init__(cfg, overrides, _callbacks)
            check_knobs(self.args)

        def optimizer_step(self):
            super().optimizer_step()
            self.training_seconds = time.time() - self.train_time_start  # the clock stops at the last step
            # Checked after the step, beside the trainer's own per-batch sync: the GPU is not drained first.
            if not bool(self.loss.isfinite()):
                raise HarnessError(f"loss is {float(self.loss)} in epoch {self.epoch + 1}: the training "
                                   "diverged; lower LR0, or try AMP = False")

        def validate(self):
            if not self.args.val:  # VAL = False: nothing chooses among epochs, and the supervisor validates
                return self.metrics, None  # results.csv keeps its metric columns, at 0
            report.send("val_start")  # the supervisor allows the longest one again after the budget
            try:
                return super().validate()
            finally:
                report.send("val_end")

        def save_model(self):
            # Two checkpoints can matter: a new best validation, and the end (nothing resumes a 5-minute run).
            if self.stop or (self.fitness is not None and self.fitness == self.best_fitness):
                return super().save_model()
            return False

    Trainer.__module__, Trainer.__qualname__ = __name__, "Trainer"  # pickled by reference under DDP
    return Trainer

# ---------------------------------------------------------------------------
# After training: the guard on train.py's call, then the child's report to the supervisor
# ---------------------------------------------------------------------------


def guard(trainer, run):
    """The guard on train.py's call: training on run.data's train split (its splits unchanged) for the
    supervisor's budget, and the evaluation settings, which choose best.pt with VAL = True, at Ultralytics'
    defaults."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.data.utils import get_split_fraction
    args = trainer.args
    changed = []
    if str(Path(str(args.data)).resolve()) != str(Path(run.data).resolve()):
        changed.append(f"data={args.data} (must be run.data)")
    elif any(trainer.data.get(split) != folder for split, folder in run.splits.items()):
        changed.append(f"the dataset YAML {run.data} (its splits were rewritten)")
    budget = float(os.environ[supervisor.BUDGET_ENV])  # the supervisor's: a patched TIME_BUDGET is not it
    if not args.time or abs(args.time * 3600 - budget) > 1e-6:
        changed.append(f"time={args.time} (must be TIME_BUDGET / 3600 = {budget / 3600:g})")
    train = Path(run.splits["train"]).resolve()
    outside = [f for f in trainer.train_files if not Path(f).resolve().is_relative_to(train)]
    if outside or not trainer.train_files:
        changed.append(f"the training images ({len(outside)} of {len(trainer.train_files)} read from "
                       f"outside the train split {train}{f', e.g. {outside[0]}' if outside else ''})")
    changed += [f"{k}={getattr(args, k)!r} (default {DEFAULT_CFG_DICT[k]!r})"
                for k in EVAL_ARGS if getattr(args, k) != DEFAULT_CFG_DICT[k]]
    if get_split_fraction(args.fraction, "val") != 1.0:
        changed.append(f"fraction={args.fraction!r} (validation must use the whole val split)")
    if changed:
        raise HarnessError("train.py changed what gets evaluated: " + "; ".join(changed) + "; put it back")


def finish(model):
    """Guard train.py's call, then hand the supervisor what the summary needs. Returns that report."""
    run, trainer = _RUN, getattr(model, "trainer", None)
    if run is None or trainer is None:
        raise HarnessError("train.py must call prepare.start() and then model.train() before "
                           "prepare.finish()")
    if not isinstance(trainer, _trainer_class()):
        raise HarnessError("train.py must pass trainer=prepare.Trainer to model.train(): it carries the "
                           "harness's clock and checks; put it back")
    guard(ddp.worker_view(trainer.ddp_reports[0]) if trainer.ddp else trainer, run)  # DDP: rank 0's
    done = report.Done(training_seconds=trainer.training_seconds, trained_images=trainer.trained_images,
                       epoch=trainer.epoch, batch=trainer.batch_size,
                       peak_vram_mb=ddp.run_peak_vram_mb(run, trainer), device=run.device,
                       device_name=run.device_name, weights=run.weights_note,
                       best_digest=device.weights_digest(trainer.best))
    done.send()
    return done


if __name__ == "__main__":  # the commands in the docstring above
    from harness.cli import main
    sys.exit(main())
elif __name__ == "prepare" and supervisor.is_supervisor(REPO_DIR / "train.py"):
    sys.exit(supervise())
elif __name__ == "prepare" and report.is_child() and report.runs_train_py(REPO_DIR / "train.py"):
    __import__("ultralytics")  # here, so that train.py's own imports cost nothing of TRAIN_PY_LIMIT
    report.send("imported")
