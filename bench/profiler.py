"""
Where a run's time goes: a profiler that a bench copy of train.py attaches to its YOLO model, and the
table rows tests/bench.py prints from what it wrote. Ultralytics copies the model's callbacks into the
trainer, and the trainer hands its callbacks to its validator, so one set of callbacks sees it all.

Usage:
    # in a copy of train.py, right after `model = YOLO(run.weights)` (tests/bench.py inserts this line):
    import bench_profile; bench_profile.attach(model)   # writes $BENCH_PROFILE_OUT
                                                        # (default bench_profile.json)

    # table rows for one run (tests/bench.py calls these functions; LABEL prefixes every row):
    python tests/bench_profile.py report LABEL --log run.log --profile p.json [--ceiling ceiling.json ...]
                                         [--wall wall.txt] [--smi run.smi --idle run.idle]
    # mean and spread of fitness over runs:
    python tests/bench_profile.py noise LABEL run1.log run2.log ...
    # the ceiling's rows (tests/bench_ceiling.py's JSON):
    python tests/bench_profile.py ceiling LABEL ceiling.json

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
import math
import os
import statistics
import sys
import time
from pathlib import Path

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

DEFAULT_OUT = "bench_profile.json"
STALL_S = 0.005          # a data wait longer than this counts as a stall (the loader fell behind)
LABEL_WIDTH = 64         # tests/bench.py's table: label column width
# issue #7's targets on H100, shown beside the figures they judge
TARGETS = {"ceiling": "target >= 90%", "steps": "target >= 85%", "overhead": "target <= 15 s",
           "vram": "target within 5%"}

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

# ---------------------------------------------------------------------------
# Reporting (tests/bench.py): table rows with units
# ---------------------------------------------------------------------------


def row(label, name, value):
    print(f"{f'{label}: {name}':<{LABEL_WIDTH}} {value}")


def summary_of(log_text):
    """The key: value lines after the last '---' line of a run log ({} if the run failed)."""
    if "\n---\n" not in log_text:
        return {}
    tail = log_text.rsplit("\n---\n", 1)[1]
    return dict(line.split(": ", 1) for line in tail.strip().splitlines() if ": " in line)


def pct(part, whole):
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def report(label, log, profile, ceilings=None, wall=None, smi=None, idle=None):
    """Rows for one run: throughput against the ceiling, the budget's shares, the overhead, memory."""
    summary = summary_of(Path(log).read_text(errors="replace")) if Path(log).is_file() else {}
    if not Path(profile).is_file():
        row(label, "profile", f"missing ({profile}); run failed? see {log}")
        return
    p = json.loads(Path(profile).read_text())
    t, m = p["totals"], p["moments"]
    if "clock_start" not in m:
        row(label, "profile (moments)", f"the run ended before the training clock started; see {log}")
        return
    # 2. training throughput against the model-only ceiling: the fastest of its measurements (before and after
    #    the runs), since a busy host only ever slows a measurement down
    found = [json.loads(Path(c).read_text()) for c in ceilings or [] if Path(c).is_file()]
    if found:
        c = max(found, key=lambda c: c.get("best_img_per_s") or 0.0)
        best, layout = c.get("best_img_per_s") or 0.0, c.get("best_layout")
        of = f", the faster of {len(found)}" if len(found) > 1 else ""
        ratio = (f" = {pct(t['steady_img_per_s'], best)} of ceiling "
                 f"({layout} {best:.0f} img/s{of}; {TARGETS['ceiling']})")
        step_ratio = f" = {pct(t['steady_step_img_per_s'], best)} of ceiling"
    else:
        ratio = step_ratio = " (no ceiling)"
    epochs = "-".join(map(str, sorted(set(t["steady_epochs"][:1] + t["steady_epochs"][-1:]))))
    row(label, f"steady img/s (epochs {epochs}, steps + waits)", f"{t['steady_img_per_s']:.1f}{ratio}")
    row(label, "steady img/s counting steps only", f"{t['steady_step_img_per_s']:.1f}{step_ratio}")
    first, later = p["epochs"][0], [e["step_s"] for e in p["epochs"][1:-1]]  # the last epoch may be cut short
    if "first_step_s" in first and later:
        row(label, "epoch 1 in steps (s; its first batch; later epochs' mean)",
            f"{first['step_s']:.1f}; {first['first_step_s']:.1f}; {statistics.mean(later):.1f}")
    if len(p["epochs"]) > 1 and len(first.get("steps", [])) > 20 and p["epochs"][1].get("steps"):
        steps, second = first["steps"], p["epochs"][1]["steps"]
        slow = sorted(range(len(steps)), key=steps.__getitem__)[-5:]
        row(label, "epoch 1's 5 slowest steps (s at batch index)",
            ", ".join(f"{steps[i]:.2f} at {i}" for i in slow))
        row(label, "epoch 1 steps 1-10 / 11-end, epoch 2 (mean ms)",
            f"{1e3 * statistics.mean(steps[:10]):.0f} / {1e3 * statistics.mean(steps[10:]):.0f}, "
            f"{1e3 * statistics.mean(second):.0f}")
    # 3. where the training clock went
    train_s = t["training_s"]
    row(label, "training clock, profiled (s)",
        f"{train_s:.1f} (summary: {summary.get('training_seconds', '?')})")
    row(label, "  in steps (% of clock, s, batches)",
        f"{pct(t['step_s'], train_s)}, {t['step_s']:.1f} s, {t['batches']} ({TARGETS['steps']})")
    row(label, f"  in data waits (%, s, waits > {STALL_S * 1000:.0f} ms)",
        f"{pct(t['wait_s'], train_s)}, {t['wait_s']:.1f} s, {t['stalls']}")
    row(label, "  in per-epoch validation (%, s, count)",
        f"{pct(t['val_s'], train_s)}, {t['val_s']:.1f} s, {t['validations']}")
    row(label, "  in checkpoint saves (%, s, count)",
        f"{pct(t['save_s'], train_s)}, {t['save_s']:.1f} s, {t['saves']}")
    row(label, "  other (%, s: scheduler, EMA, CSV, gc)",
        f"{pct(t['other_s'], train_s)}, {t['other_s']:.1f} s")
    # 4. overhead outside the budget
    if summary:
        total, training = float(summary["total_seconds"]), float(summary["training_seconds"])
        row(label, "overhead: total - training_seconds (s)",
            f"{total - training:.1f} ({TARGETS['overhead']})")
        pre, setup = m.get("pretrain_start", 0), m.get("pretrain_end", 0) - m.get("pretrain_start", 0)
        row(label, "  T0 -> clock start (s = start + setup + rest)",
            f"{m['clock_start']:.1f} = {pre:.1f} + {setup:.1f} + {m['clock_start'] - pre - setup:.1f}")
        if "final_end" in m:
            final = m["final_end"] - m["final_start"]
            row(label, "  final eval (s = val loop + load, strip)",
                f"{final:.1f} = {t['final_val_s']:.1f} + {final - t['final_val_s']:.1f}")
            row(label, "  final eval end -> summary printed (s)", f"{total - m['final_end']:.1f}")
    if wall and Path(wall).is_file():
        start, end = map(float, Path(wall).read_text().split()[:2])
        row(label, "  python start -> T0 (s, before total)", f"{p['t0'] - start:.1f}")
        if summary:
            row(label, "  summary -> process exit (s, after total)", f"{end - p['t0'] - total:.1f}")
        row(label, "process wall clock (s)", f"{end - start:.1f}")
        row(label, "experiments an hour (3600 s / wall clock)", f"{3600 / (end - start):.1f}")
    # 5. peak memory: the summary against nvidia-smi (whole card, sampled every 200 ms, minus idle)
    if smi and Path(smi).is_file() and summary:
        samples = [float(x) for x in Path(smi).read_text().split() if x.replace(".", "", 1).isdigit()]
        idle_mib = float(Path(idle).read_text().split()[0]) if idle and Path(idle).is_file() else 0.0
        seen = max(samples, default=0.0) - idle_mib
        vram = float(summary["peak_vram_mb"])
        row(label, "peak_vram_mb vs nvidia-smi peak - idle (MiB)",
            f"{vram:.0f} vs {seen:.0f} ({100 * (vram - seen) / seen:+.1f}%; {TARGETS['vram']})" if seen > 0
            else f"{vram:.0f} vs n/a")
    if p.get("peak_memory"):
        pm = p["peak_memory"]
        row(label, "  torch max reserved / allocated (MiB)",
            f"{pm['max_reserved_mib']:.0f} / {pm['max_allocated_mib']:.0f}")


def ceiling(label, path):
    """Rows for the model-only ceiling: img/s per memory layout. False if the JSON is missing."""
    if not Path(path).is_file():
        return False
    c = json.loads(Path(path).read_text())
    row(label, "card, model, imgsz (px), batch, nbs, amp, determ.",
        f"{c['card']}, {c['model']}, {c['imgsz']}, {c['batch']}, {c['nbs']}, {c['amp']}, "
        f"{c['deterministic']}")
    for name, r in c["layouts"].items():
        value = f"{r['img_per_s']:.1f} ({r['ms_per_batch']:.1f} ms/batch)" if "img_per_s" in r else r["error"]
        row(label, f"{name} (img/s, model only)", value)
    return True


def noise(label, logs):
    """Mean and spread of fitness over runs (a missing summary counts as a failed run, not a zero)."""
    values = []
    for log in logs:
        s = summary_of(Path(log).read_text(errors="replace")) if Path(log).is_file() else {}
        if "fitness" in s:
            values.append(float(s["fitness"]))
    failed = len(logs) - len(values)
    note = f", {failed} failed" if failed else ""
    if not values:
        row(label, "fitness (mAP50-95)", f"no finished runs{note}")
        return
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    runs = f"{len(values)} run" + ("s" if len(values) != 1 else "")
    row(label, f"fitness mean (mAP50-95, {runs}{note})", f"{statistics.mean(values):.4f}")
    if len(values) > 1:
        row(label, "fitness spread max-min / std (mAP50-95)", f"{max(values) - min(values):.4f} / {std:.4f}")
        row(label, "fitness values", " ".join(f"{v:.4f}" for v in values))


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description="table rows from bench profiles")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report")
    r.add_argument("label")
    r.add_argument("--log", required=True)
    r.add_argument("--profile", required=True)
    r.add_argument("--ceiling", action="append", help="a ceiling JSON; again for more measurements")
    r.add_argument("--wall", help="file with the process start and end (epoch seconds), one per line")
    r.add_argument("--smi", help="nvidia-smi memory.used samples (MiB), one per line")
    r.add_argument("--idle", help="file with the card's memory.used before the run (MiB)")
    c = sub.add_parser("ceiling")
    c.add_argument("label")
    c.add_argument("json")
    n = sub.add_parser("noise")
    n.add_argument("label")
    n.add_argument("logs", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "report":
        report(args.label, args.log, args.profile, args.ceiling, args.wall, args.smi, args.idle)
    elif args.command == "ceiling":
        return 0 if ceiling(args.label, args.json) else 1
    else:
        noise(args.label, args.logs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
