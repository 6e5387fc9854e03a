"""
The fixed contract of autoresearch for ship detection: the time budget, the metric, the honest-metric guard,
every way a run ends, and the summary. Read-only for the agent. The machinery behind it (dataset checks, the
synthetic stand-in, the GPU data pipeline, several GPUs, the progress plot) lives in the read-only package
harness/, which needs no reading.

Usage:
    uv run prepare.py                        # find and check the dataset, print its stats
    uv run prepare.py --synthetic full       # generate the stand-in at Kaggle scale (small: CPU default)
    uv run prepare.py --weights yolo11n.pt   # one-time download of pretrained weights into weights/
    uv run prepare.py progress               # results.tsv -> progress.png and a short text summary

train.py imports this module first: the import makes the run offline and turns any failure into one `error:`
line. start() checks dataset, device and weights before any GPU time is spent; model.train(trainer=Trainer)
trains on the fixed clock; finish() guards the metric and prints the summary, the last lines of the log.

A run ends in one of two ways. Either the summary (finish()) is the last thing printed and the exit code is 0,
or the last line is one `error:` line, there is no `fitness:` line and the exit code is not 0: a bad dataset,
DEVICE or knob (start(), before training); out of memory; a NaN loss (Trainer); a changed evaluation or no
final validation (guard()); a run still going OVERRUN_LIMIT seconds after its checks (the watchdog); SIGTERM
or Ctrl-C; any other exception. A train.py that does not parse never gets here: Python's SyntaxError ends it.
"""

import errno
import functools
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from copy import copy
from dataclasses import dataclass
from pathlib import Path

from harness import ddp, runtime
from harness.common import CACHE_DIR, DEFAULT_DATA, RUN_DIR, HarnessError, banner, warn
from harness.dataset import check_dataset, dataset_line, find_dataset, write_run_yaml
from harness.device import download_weights, pick_device, resolve_weights

# ---------------------------------------------------------------------------
# Constants (fixed, do not modify)
# ---------------------------------------------------------------------------

T0 = time.time()                     # total_seconds counts from here: train.py imports prepare first
TIME_BUDGET = 300                    # seconds of training per experiment (Ultralytics' own clock)
FITNESS_KEY = "metrics/mAP50-95(B)"  # the one number the agent maximizes
# Tests shorten the budget; nothing may lengthen it, and the summary always shows it.
if "AUTORESEARCH_TIME_BUDGET" in os.environ:
    TIME_BUDGET = min(TIME_BUDGET, float(os.environ["AUTORESEARCH_TIME_BUDGET"]))
# A run still going this long after its checks (570 s for the 300 s budget) is stopped by the harness itself,
# before the agent's 10-minute kill: set-up and the final validation get plenty of slack.
OVERRUN_LIMIT = 1.8 * TIME_BUDGET + 30
# Tests with a few seconds of budget may set it, never past the 300 s budget's limit: a DDP test's two workers
# start slowly on a busy machine.
if "AUTORESEARCH_OVERRUN_LIMIT" in os.environ:
    OVERRUN_LIMIT = min(float(os.environ["AUTORESEARCH_OVERRUN_LIMIT"]), 1.8 * 300 + 30)
# Evaluation settings that train.py must leave at Ultralytics' defaults (the honest-metric guard).
EVAL_ARGS = ("split", "conf", "iou", "max_det", "classes", "agnostic_nms", "augment", "single_cls")
# Ultralytics knobs the GPU data pipeline (GPU_DATA = True) does not implement, with the only value it accepts.
GPU_UNSUPPORTED = {"copy_paste": 0.0, "cutmix": 0.0, "bgr": 0.0, "rect": False}
GPU_DATA_ENV = "AUTORESEARCH_GPU_DATA"  # how train.py's GPU_DATA reaches DDP workers

# ---------------------------------------------------------------------------
# Import-time setup: offline before Ultralytics is imported, every failure one `error:` line
# ---------------------------------------------------------------------------


def _find_trainer(tb):
    """The Ultralytics trainer whose frame raised, if any (to say which batch ran out of memory)."""
    trainer = None
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if type(obj).__name__.endswith("Trainer") and hasattr(obj, "args"):
            trainer = obj
        tb = tb.tb_next
    return trainer


def describe_failure(exc, tb=None):
    """The `error:` line's text: what failed and what to do about it."""
    if isinstance(exc, HarnessError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT or SIGTERM) before the run finished; the next run starts clean"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (f"disk full ({exc.filename or 'while writing'}): free space on the disk that holds "
                f"{RUN_DIR} and {CACHE_DIR}, then run again")
    if "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        trainer = _find_trainer(tb)
        where = f" at batch={trainer.args.batch} imgsz={trainer.args.imgsz}" if trainer else ""
        return f"CUDA out of memory{where}; lower BATCH or IMGSZ (or pick a smaller MODEL) in train.py"
    return f"{type(exc).__name__}: {text}"[:300]


def _excepthook(exc_type, exc, tb):
    sys.stdout.flush()
    if not isinstance(exc, (HarnessError, KeyboardInterrupt)):
        sys.__excepthook__(exc_type, exc, tb)
        sys.stderr.flush()
    print(f"error: {describe_failure(exc, tb)}", flush=True)
    if ddp.ddp_rank() >= 0:  # a DDP worker: its parent ends the log with this line, not torch.distributed's
        ddp.write_handoff(ddp.ddp_rank(), {"error": describe_failure(exc, tb)})


def _sigterm(signum, frame):
    # kill and timeout send SIGTERM, and `uv run` passes its own on: the first ends the run through the same
    # clean path as Ctrl-C, a second must not interrupt that path.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


runtime.go_offline()
sys.excepthook = _excepthook
if __name__ != "__mp_main__":  # worker processes keep their default handlers
    signal.signal(signal.SIGTERM, _sigterm)

# ---------------------------------------------------------------------------
# Before training: start() checks everything, then the watchdog holds the overrun limit
# ---------------------------------------------------------------------------


@dataclass
class Run:
    """What train.py needs from the harness, and what the summary reports."""
    data: str                  # the dataset YAML training uses: source, resolved, in the run folder
    source: Path               # the dataset YAML as found
    kind: str                  # real, YOLO_DATA or synthetic
    splits: dict               # train and val image folders: the guard checks training used these
    device: object             # a GPU index, [0, 1, ...] (DDP) or "cpu", as Ultralytics takes it
    device_name: str
    weights: str               # what YOLO() loads
    weights_note: str          # how the summary describes it
    project: str = str(RUN_DIR.parent)
    name: str = RUN_DIR.name


_RUN = None
_TRAINER = None  # the trainer of this run, for the watchdog's line


def start(model, device=None, gpu_data=True):
    """Check dataset, device and weights before any GPU time is spent; returns the Run for train.py's call.
    device: train.py's DEVICE (None: GPU 0, else the CPU; 1: GPU 1; [0, 1]: one run over both). gpu_data: train
    from images decoded once and augmented on the GPU (else Ultralytics' CPU workers)."""
    global _RUN
    request = device
    device, device_name = pick_device(request)  # first: a bad DEVICE fails before anything is written
    os.environ[GPU_DATA_ENV] = "1" if gpu_data else "0"  # an environment variable reaches DDP workers too
    yaml_path, kind = find_dataset()
    if kind == "synthetic":
        banner(f"no dataset in {DEFAULT_DATA.parent}/ and no YOLO_DATA: training on the SYNTHETIC "
               "stand-in (data: synthetic). Put Kaggle's ships-aerial-images there for real results.")
    stats = check_dataset(yaml_path)
    print(dataset_line(yaml_path, kind, stats))
    shutil.rmtree(RUN_DIR, ignore_errors=True)  # one run folder, reused: disk use stays flat
    RUN_DIR.mkdir(parents=True)
    data = write_run_yaml(stats)
    runtime.configure_ultralytics()
    if device == "cpu" and request is None:
        banner("no CUDA GPU found: training on the CPU. It works, about 100x slower; "
               "metrics are not comparable with GPU runs.")
    weights, weights_note = resolve_weights(model)
    print(f"time budget: {TIME_BUDGET:g} s | device: {device_name} | weights: {weights_note}")
    splits = {s: str(stats[s][0]) for s in ("train", "val")}
    _RUN = Run(str(data), yaml_path, kind, splits, device, device_name, weights, weights_note)
    threading.Thread(target=_watchdog, daemon=True).start()
    return _RUN


def _watchdog():
    """Stop a run that overran its budget (a machine too slow for the settings, a hang) from the inside."""
    time.sleep(OVERRUN_LIMIT)
    print(f"error: the run overran: still going {OVERRUN_LIMIT:.0f} s after its checks (time budget "
          f"{TIME_BUDGET:g} s) {training_progress(_TRAINER)}; stopped by the harness. A slow machine: lower "
          "IMGSZ, BATCH or the model's size; if training had stopped advancing, the end of the log shows "
          "what hung", flush=True)
    for child in multiprocessing.active_children():  # dataloader workers
        child.kill()
    for group in ddp.DDP_GROUPS:  # DDP workers, with their own dataloader workers
        ddp.stop_group(group, grace=0)
    os._exit(3)


def training_progress(trainer):
    """How far training got, in words: epoch, images trained and their rate."""
    images = getattr(trainer, "trained_images", 0)
    if not images:
        return "with no training batch finished in this process"
    seconds = time.time() - trainer.train_time_start
    return f"in epoch {trainer.epoch + 1}, {images} images trained ({images / seconds:.1f} images/s)"


def check_gpu_data_args(args):
    """Refuse knobs the GPU pipeline would otherwise ignore: say so at start-up, not never."""
    bad = [f"{k}={getattr(args, k)!r}" for k, ok in GPU_UNSUPPORTED.items() if getattr(args, k) != ok]
    if bad:
        raise HarnessError(f"{', '.join(bad)} is not supported by the GPU data pipeline; set GPU_DATA = False "
                           "in train.py to use Ultralytics' CPU dataloader for it")
    if args.cache:
        warn(f"cache={args.cache!r} has no effect with GPU_DATA = True: the training images are decoded once anyway")

# ---------------------------------------------------------------------------
# Training: Ultralytics' trainer with the harness's clock, image count, NaN stop and checkpoint policy
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

    from harness.gpu_data import GpuDataset, GpuLoader

    class Trainer(DetectionTrainer):
        """Ultralytics' detection trainer with the harness inside: the training clock stops where its final
        validation starts, every batch counts its images, a NaN loss ends the run at once, and checkpoints are
        written only when they can matter. Under DDP each worker process rebuilds this class by importing
        prepare, hands its clock, count and memory to the parent (harness/ddp.py), and the parent validates
        best.pt itself."""
        trained_images = 0         # images trained on (a DDP parent: every rank's)
        training_seconds = 0.0     # the trainer's clock when the final validation starts (DDP: rank 0's)

        def __init__(self, *args, **kwargs):
            global _TRAINER
            super().__init__(*args, **kwargs)
            _TRAINER = self

        def train(self):
            if not self.ddp:
                return super().train()
            ddp.train_ddp(self)
            print(f"DDP: the workers' last validation (each GPU a share of the val split): {FITNESS_KEY} "
                  f"{self.ddp_reports[0]['metrics'].get(FITNESS_KEY, float('nan')):.6f}; the summary reports "
                  "best.pt validated here on one GPU, as a one-GPU run does it")
            ddp.validate_best(self)

        def get_dataloader(self, dataset_path, batch_size=16, rank=0, mode="train"):
            if mode != "train" or os.environ.get(GPU_DATA_ENV) != "1":
                return super().get_dataloader(dataset_path, batch_size, rank, mode)
            check_gpu_data_args(self.args)
            if getattr(self, "gpu_data", None) is None:  # decoded once: an out-of-memory retry only re-batches
                from ultralytics.utils.torch_utils import torch_distributed_zero_first
                with torch_distributed_zero_first(rank):  # one process writes the label cache
                    dataset = self.build_dataset(dataset_path, "train", batch_size)
                self.gpu_data = GpuDataset(dataset, copy(self.args), self.device)
            return GpuLoader(self.gpu_data, batch_size, self.args.seed, rank, self.world_size)

        def preprocess_batch(self, batch):
            self.trained_images += len(batch["img"])  # the last batch of an epoch may be smaller
            return super().preprocess_batch(batch)

        def _get_warmup_iterations(self, num_batches):
            # Called right after Ultralytics re-estimates, from this process's own clock, how many epochs fit
            # the budget. DDP ranks that disagree validate after different epochs and deadlock (and follow
            # different LR schedules): every rank takes rank 0's estimate, as it takes rank 0's stop.
            if self.world_size > 1 and ddp.ddp_rank() >= 0:
                import torch.distributed as dist
                epochs = [self.epochs]
                dist.broadcast_object_list(epochs, 0)
                self.epochs = self.args.epochs = epochs[0]
            return super()._get_warmup_iterations(num_batches)

        def optimizer_step(self):
            super().optimizer_step()
            # Stop early: no point spending the rest of the budget. Checked after the step, beside the
            # trainer's own per-batch sync, so the GPU is not drained before the step's kernels are launched.
            if not bool(self.loss.isfinite()):
                raise HarnessError(f"loss is {float(self.loss)} in epoch {self.epoch + 1}: the training "
                                   "diverged; lower LR0, or try AMP = False")

        def last_validation_is_best(self):
            return self.fitness is not None and self.fitness == self.best_fitness

        def save_model(self):
            # Two checkpoints can matter: a new best validation, and the end (nothing resumes a 5-minute run).
            if self.stop or self.last_validation_is_best():
                return super().save_model()
            return False

        def final_eval(self):
            self.training_seconds = time.time() - self.train_time_start
            rank = ddp.ddp_rank()
            if rank >= 0:  # a DDP worker: the parent validates best.pt itself; hand it the rest
                ddp.write_handoff(rank, ddp.worker_report(self, rank))
                return
            if self.last_validation_is_best() and FITNESS_KEY in self.metrics:
                # best.pt holds the very weights the last validation just measured (always so with val=False).
                print(f"final validation: best.pt is epoch {self.epoch + 1}, validated above")
                return
            return super().final_eval()

    Trainer.__module__, Trainer.__qualname__ = __name__, "Trainer"  # pickled by reference under DDP
    return Trainer

# ---------------------------------------------------------------------------
# After training: the honest-metric guard, then the summary (the last lines of the log)
# ---------------------------------------------------------------------------


def guard(trainer, run):
    """The honest-metric guard: the metric must be the final validation on the fixed val split, with
    Ultralytics' default evaluation settings, after a run on the fixed time budget."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.data.utils import get_split_fraction
    args = trainer.args
    changed = []
    if str(Path(str(args.data)).resolve()) != str(Path(run.data).resolve()):
        changed.append(f"data={args.data} (must be run.data)")
    elif any(trainer.data.get(split) != folder for split, folder in run.splits.items()):
        changed.append(f"the dataset YAML {run.data} (its splits were rewritten)")
    if not args.time or abs(args.time * 3600 - TIME_BUDGET) > 1e-6:
        changed.append(f"time={args.time} (must be TIME_BUDGET / 3600 = {TIME_BUDGET / 3600:g})")
    changed += [f"{k}={getattr(args, k)!r} (default {DEFAULT_CFG_DICT[k]!r})"
                for k in EVAL_ARGS if getattr(args, k) != DEFAULT_CFG_DICT[k]]
    if get_split_fraction(args.fraction, "val") != 1.0:
        changed.append(f"fraction={args.fraction!r} (validation must use the whole val split)")
    if changed:
        raise HarnessError("train.py changed what gets evaluated: " + "; ".join(changed) + "; put it back")
    if not trainer.metrics or FITNESS_KEY not in trainer.metrics:
        raise HarnessError("nothing was validated: the run ended without a final validation, "
                           "so there is no metric to report")


def finish(model):
    """Guard the metric, then print the summary: the last thing the run prints. Returns the summary."""
    run, trainer = _RUN, getattr(model, "trainer", None)
    if run is None or trainer is None:
        raise HarnessError("train.py must call prepare.start() and then model.train() before prepare.finish()")
    if not isinstance(trainer, _trainer_class()):
        raise HarnessError("train.py must pass trainer=prepare.Trainer to model.train(): it carries the "
                           "harness's clock and checks; put it back")
    guard(trainer, run)
    if trainer.ddp:  # the workers trained and validated with their own copy of the settings: guard those too
        guard(ddp.worker_view(trainer.ddp_reports[0]), run)
    m = trainer.metrics
    fitness = float(m[FITNESS_KEY])
    if not math.isfinite(fitness):
        raise HarnessError(f"{FITNESS_KEY} is {fitness}: the training diverged; lower LR0, or try AMP = False")
    training_seconds = trainer.training_seconds
    summary = {
        "fitness_key": FITNESS_KEY,
        "fitness": f"{fitness:.6f}",
        "training_seconds": f"{training_seconds:.1f}",
        "total_seconds": f"{time.time() - T0:.1f}",
        "peak_vram_mb": f"{ddp.run_peak_vram_mb(run, trainer):.1f}",
        "precision": f"{float(m['metrics/precision(B)']):.6f}",
        "recall": f"{float(m['metrics/recall(B)']):.6f}",
        "map50": f"{float(m['metrics/mAP50(B)']):.6f}",
        "map50_95": f"{fitness:.6f}",
        "epoch": trainer.epoch + 1,
        "time_budget_s": f"{TIME_BUDGET:g}",
        "train_images_per_s": f"{trainer.trained_images / max(training_seconds, 1e-9):.1f}",
        "data": run.kind,
        "dataset": str(run.source),
        "weights": run.weights_note,
        "device": run.device_name,
        "run_dir": str(RUN_DIR),
    }
    print("---")
    for k, v in summary.items():
        print(f"{k}: {v}")
    return summary

# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv=None):
    import argparse

    from harness import progress, synthetic
    parser = argparse.ArgumentParser(description="Dataset prep and checks for autoresearch on ships.")
    parser.add_argument("command", nargs="?", default="check", choices=["check", "progress"])
    parser.add_argument("--synthetic", choices=sorted(synthetic.SYNTH_SCALES),
                        help="generate the stand-in at this scale")
    parser.add_argument("--weights", metavar="NAME.pt", help="download Ultralytics weights into weights/")
    parser.add_argument("--results", default="results.tsv", help="progress: the results file to read")
    args = parser.parse_args(argv)
    if args.command == "progress":
        return progress.progress(args.results, "progress.png")
    if args.weights:
        download_weights(args.weights)
        return 0
    if args.synthetic:
        yaml_path, kind = synthetic.make_synthetic(args.synthetic), "synthetic"
    else:
        yaml_path, kind = find_dataset()
    print(dataset_line(yaml_path, kind, check_dataset(yaml_path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
