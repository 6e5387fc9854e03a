"""
Where a run's time goes: a profiler that a bench copy of train.py attaches to its YOLO model; it writes a
JSON that bench/report.py turns into table rows. Ultralytics copies the model's callbacks into the trainer,
and the trainer hands its callbacks to its validator, so one set of callbacks sees it all. It runs inside
train.py, beside nothing but the harness: it imports no other bench module.

Usage, in a copy of train.py, right after `model = YOLO(run.weights)` (bench/bench.py inserts this line):
    import profiler; profiler.attach(model)   # writes $BENCH_PROFILE_OUT (default profile.json)

What it records (seconds, from time.time(); on CUDA after torch.cuda.synchronize(), so a step's GPU
work lands in the step and not in the next data wait; BENCH_PROFILE_SYNC=0 turns the syncs off):
- per epoch: data waits (previous batch's end, or the epoch's start, to the next batch's start),
  steps (batch start to batch end: forward, loss, backward, optimizer step when due, logging), the
  first batch's step, every step of epochs 1 and 2 (where epoch 1's extra time goes), validation
  (trainer.validate), checkpoint saves (trainer.save_model and whether one was written), the whole epoch;
- moments relative to prepare.T0 (total_seconds counts from there): pretrain routine start and end,
  the clock start (trainer.train_time_start), final_eval start and end (inside it the validation loop
  of best.pt, on_val_start to on_val_end, timed apart), on_train_end, and atexit (after the summary).
The JSON: t0 (prepare.T0, epoch seconds), moments (seconds after t0), totals over the training clock
(training_s, step_s, wait_s, val_s, save_s, other_s, batches, stalls, images, steady_epochs,
steady_img_per_s = images / (steps + waits) of the epochs after the first, steady_step_img_per_s,
final_val_s), peak_memory (torch's max reserved and allocated, MiB) and the per-epoch records.
Under DDP (device=[0, 1]) the callbacks travel into the workers and rank 0 writes the profile: its
moments count from that worker's own import of prepare, not the parent's.
"""

import atexit
import json
import os
import sys
import time
from pathlib import Path

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

DEFAULT_OUT = "profile.json"
STALL_S = 0.005          # a data wait longer than this counts as a stall (the loader fell behind)

# ---------------------------------------------------------------------------
# Recording (runs inside train.py)
# ---------------------------------------------------------------------------


class Profile:
    """Callbacks that time a training run. Plain attributes only: it pickles (DDP copies callbacks)."""

    def __init__(self, out):
        self.out = str(Path(out).resolve())
        prepare = sys.modules.get("prepare")
        self.t0 = getattr(prepare, "T0", time.time())  # total_seconds counts from prepare's import
        self.sync = os.environ.get("BENCH_PROFILE_SYNC", "1") != "0"
        self.cuda = False
        self.moments = {}          # name -> seconds after T0
        self.epochs = []           # one dict per epoch (a restarted OOM epoch gets a new one)
        self.batch_start = self.last_end = self.val_start = None
        self.in_final = False
        self.final_val_s = 0.0
        self.peak = {}

    # -- helpers --
    def now(self):
        if self.cuda and self.sync:
            import torch
            torch.cuda.synchronize()
        return time.time()

    def mark(self, name, t=None):
        self.moments[name] = round((t if t is not None else self.now()) - self.t0, 4)

    def images_so_far(self, trainer):
        """Training images so far, as prepare.Trainer counts them (each batch's real size: the last one is
        smaller); under DDP every rank trains as many as rank 0, so its count times the ranks is the run's."""
        return trainer.trained_images * max(trainer.world_size, 1)

    def close_batch(self, t):
        """A batch that started but never reached on_train_batch_end (the time stop, an OOM restart)."""
        if self.batch_start is not None and self.epochs:
            e = self.epochs[-1]
            if not e["batches"]:  # the run's first batch pays for cuDNN's kernel choice (epoch 1 row)
                e["first_step_s"] = t - self.batch_start
            # every step of epochs 1 and 2: is epoch 1's extra time early, or spread?
            if len(self.epochs) <= 2:
                e.setdefault("steps", []).append(round(t - self.batch_start, 4))
            e["step_s"] += t - self.batch_start
            e["batches"] += 1
            self.batch_start = None

    # -- trainer callbacks --
    def on_pretrain_routine_start(self, trainer):
        self.mark("pretrain_start")
        # instance attributes shadow the methods; the wrappers include set-up that precedes on_val_start
        trainer.validate = self.timed(trainer.validate, "val_s")
        trainer.save_model = self.timed(trainer.save_model, "save_s")
        trainer.final_eval = self.timed_final_eval(trainer.final_eval)

    def on_pretrain_routine_end(self, trainer):
        self.mark("pretrain_end")

    def on_train_start(self, trainer):
        self.cuda = getattr(trainer.device, "type", "cpu") == "cuda"
        self.mark("clock_start", trainer.train_time_start)

    def on_train_epoch_start(self, trainer):
        t = self.now()
        self.close_batch(t)
        self.epochs.append({"epoch": trainer.epoch + 1, "start": t, "images0": self.images_so_far(trainer),
                            "batches": 0, "wait_s": 0.0, "wait_max_s": 0.0, "stalls": 0, "step_s": 0.0,
                            "val_s": 0.0, "save_s": 0.0, "saved": False})
        self.last_end = t

    def on_train_batch_start(self, trainer):
        t = self.now()
        e, wait = self.epochs[-1], t - self.last_end
        e["wait_s"] += wait
        e["wait_max_s"] = max(e["wait_max_s"], wait)
        e["stalls"] += wait > STALL_S
        self.batch_start = t

    def on_train_batch_end(self, trainer):
        t = self.now()
        self.close_batch(t)
        self.last_end = t

    def on_train_epoch_end(self, trainer):
        t = self.now()
        self.close_batch(t)
        e = self.epochs[-1]
        e["images"] = self.images_so_far(trainer) - e["images0"]
        e["loop_s"] = t - e["start"]

    def on_val_start(self, validator):  # the validator runs the trainer's callbacks
        self.val_start = self.now()

    def on_val_end(self, validator):
        if self.in_final:  # per-epoch validations are timed whole by the trainer.validate wrapper
            self.final_val_s += self.now() - self.val_start

    def on_model_save(self, trainer):  # a checkpoint written (prepare.Trainer skips those that cannot matter)
        if self.epochs:
            self.epochs[-1]["saved"] = True

    def on_fit_epoch_end(self, trainer):
        if not self.in_final and self.epochs:  # final_eval calls it once more: not an epoch
            self.epochs[-1]["epoch_s"] = self.now() - self.epochs[-1]["start"]

    def on_train_end(self, trainer):
        self.mark("train_end")
        if self.cuda:
            import torch
            self.peak = {"max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
                         "max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}
        self.write()

    # -- wrappers --
    def timed(self, method, key):
        """Add the method's time to the current epoch's `key` (not inside final_eval: that is after the
        clock)."""
        def wrapper(*args, **kwargs):
            t = self.now()
            try:
                return method(*args, **kwargs)
            finally:
                if self.epochs and not self.in_final:
                    self.epochs[-1][key] += self.now() - t
        return wrapper

    def timed_final_eval(self, final_eval):
        def wrapper():
            self.mark("final_start")
            self.in_final = True
            try:
                return final_eval()
            finally:
                self.in_final = False
                self.mark("final_end")
        return wrapper

    # -- output --
    def totals(self):
        """Sums over the training clock (clock start to final_eval start = training_seconds)."""
        m = self.moments
        end = m.get("final_start", m.get("train_end", round(time.time() - self.t0, 4)))
        training_s = end - m.get("clock_start", end)
        parts = {k: sum(e[k] for e in self.epochs) for k in ("step_s", "wait_s", "val_s", "save_s")}
        parts["other_s"] = training_s - sum(parts.values())  # scheduler, EMA attrs, CSV, gc, epoch set-up
        steady = self.epochs[1:] or self.epochs  # the first epoch pays for warm-up and worker start
        images = sum(e.get("images", 0) for e in steady)
        step, wait = sum(e["step_s"] for e in steady), sum(e["wait_s"] for e in steady)
        return {"training_s": training_s, **parts,
                "batches": sum(e["batches"] for e in self.epochs),
                "stalls": sum(e["stalls"] for e in self.epochs),
                "images": sum(e.get("images", 0) for e in self.epochs),
                "saves": sum(e["saved"] for e in self.epochs),
                "validations": sum(e["val_s"] > 0 for e in self.epochs),
                "steady_epochs": [e["epoch"] for e in steady],
                "steady_img_per_s": images / (step + wait) if step + wait > 0 else 0.0,
                "steady_step_img_per_s": images / step if step > 0 else 0.0,
                "final_val_s": self.final_val_s}

    def write(self):
        if int(os.environ.get("RANK", -1)) not in (-1, 0):
            return
        epochs = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in e.items() if k != "start"}
                  for e in self.epochs]
        data = {"t0": self.t0, "cuda": self.cuda, "sync": self.sync, "moments": self.moments,
                "totals": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.totals().items()},
                "peak_memory": self.peak, "epochs": epochs}
        tmp = f"{self.out}.{os.getpid()}.tmp"
        Path(tmp).write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, self.out)

    def at_exit(self):
        if "clock_start" not in self.moments and Path(self.out).is_file():
            return  # a DDP parent: its rank-0 worker trained, and wrote the profile
        self.mark("atexit", time.time())  # no sync: the GPU work is long done
        self.write()


def attach(model, out=None):
    """Add the profile's callbacks to a YOLO model before model.train(); returns the Profile."""
    profile = Profile(out or os.environ.get("BENCH_PROFILE_OUT", DEFAULT_OUT))
    for event in ("on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start",
                  "on_train_epoch_start", "on_train_batch_start", "on_train_batch_end", "on_train_epoch_end",
                  "on_val_start", "on_val_end", "on_model_save", "on_fit_epoch_end", "on_train_end"):
        model.add_callback(event, getattr(profile, event))
    atexit.register(profile.at_exit)  # after prepare.finish() printed the summary: the exit's share
    return profile
