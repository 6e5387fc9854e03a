"""
Table rows from what a bench run left: a run's profile (bench/profiler.py), log, wall clock and nvidia-smi
samples (bench/smi.py); the model-only ceiling (bench/ceiling.py's JSON); the noise of fitness over runs.
Each function returns rows, names with their units; bench/bench.py writes them into its table, and the
commands below print them.

Usage (repo root; LABEL prefixes every row):
    python bench/report.py run LABEL --log run.log --profile p.json [--ceiling ceiling.json ...]
                                 [--wall wall.txt] [--smi run.smi --idle run.idle]
    python bench/report.py noise LABEL run1.log run2.log ...      # mean and spread of fitness over runs
    python bench/report.py ceiling LABEL ceiling.json             # the ceiling's rows
"""

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

from profiler import STALL_S
from smi import peak_above_idle

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from harness.summary import parse_summary  # noqa: E402

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

LABEL_WIDTH = 64         # the table's name column
# issue #7's targets on H100, shown beside the figures they judge
TARGETS = {"ceiling": "target >= 90%", "steps": "target >= 85%", "overhead": "target <= 15 s",
           "vram": "target within 5%"}


class Row(NamedTuple):
    name: str    # what, with its units in parentheses
    value: str


def lines(rows):
    """The rows as the table's lines: the name padded to LABEL_WIDTH, then the value."""
    return [f"{row.name:<{LABEL_WIDTH}} {row.value}" for row in rows]


def pct(part, whole):
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def read_summary(log):
    """The summary of the run log at path log ({} if the run failed or there is no log)."""
    return parse_summary(Path(log).read_text(errors="replace")) if Path(log).is_file() else {}

# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------


def run_rows(label, log, profile, ceilings=(), wall=None, smi=None, idle=None):
    """Rows for one run: throughput against the ceiling, the budget's shares, the overhead, memory."""
    rows = []

    def add(name, value):
        rows.append(Row(f"{label}: {name}", value))

    summary = read_summary(log)
    if not Path(profile).is_file():
        add("profile", f"missing ({profile}); run failed? see {log}")
        return rows
    p = json.loads(Path(profile).read_text())
    t, m = p["totals"], p["moments"]
    if "clock_start" not in m:
        add("profile (moments)", f"the run ended before the training clock started; see {log}")
        return rows
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
    add(f"steady img/s (epochs {epochs}, steps + waits)", f"{t['steady_img_per_s']:.1f}{ratio}")
    add("steady img/s (counting steps only)", f"{t['steady_step_img_per_s']:.1f}{step_ratio}")
    first, later = p["epochs"][0], [e["step_s"] for e in p["epochs"][1:-1]]  # the last epoch may be cut short
    if "first_step_s" in first and later:
        add("epoch 1 in steps (s; its first batch; later epochs' mean)",
            f"{first['step_s']:.1f}; {first['first_step_s']:.1f}; {statistics.mean(later):.1f}")
    if len(p["epochs"]) > 1 and len(first.get("steps", [])) > 20 and p["epochs"][1].get("steps"):
        steps, second = first["steps"], p["epochs"][1]["steps"]
        slow = sorted(range(len(steps)), key=steps.__getitem__)[-5:]
        add("epoch 1's 5 slowest steps (s at batch index)", ", ".join(f"{steps[i]:.2f} at {i}" for i in slow))
        add("epoch 1 steps 1-10 / 11-end, epoch 2 (mean ms)",
            f"{1e3 * statistics.mean(steps[:10]):.0f} / {1e3 * statistics.mean(steps[10:]):.0f}, "
            f"{1e3 * statistics.mean(second):.0f}")
    # 3. where the training clock went
    train_s = t["training_s"]
    add("training clock, profiled (s)", f"{train_s:.1f} (summary: {summary.get('training_seconds', '?')})")
    add("  in steps (% of clock, s, batches)",
        f"{pct(t['step_s'], train_s)}, {t['step_s']:.1f} s, {t['batches']} ({TARGETS['steps']})")
    add(f"  in data waits (%, s, waits > {STALL_S * 1000:.0f} ms)",
        f"{pct(t['wait_s'], train_s)}, {t['wait_s']:.1f} s, {t['stalls']}")
    add("  in per-epoch validation (%, s, count)",
        f"{pct(t['val_s'], train_s)}, {t['val_s']:.1f} s, {t['validations']}")
    add("  in checkpoint saves (%, s, count)",
        f"{pct(t['save_s'], train_s)}, {t['save_s']:.1f} s, {t['saves']}")
    add("  other (%, s: scheduler, EMA, CSV, gc)", f"{pct(t['other_s'], train_s)}, {t['other_s']:.1f} s")
    # 4. overhead outside the budget
    if summary:
        total, training = float(summary["total_seconds"]), float(summary["training_seconds"])
        add("overhead: total - training_seconds (s)", f"{total - training:.1f} ({TARGETS['overhead']})")
        pre, setup = m.get("pretrain_start", 0), m.get("pretrain_end", 0) - m.get("pretrain_start", 0)
        add("  T0 -> clock start (s = start + setup + rest)",
            f"{m['clock_start']:.1f} = {pre:.1f} + {setup:.1f} + {m['clock_start'] - pre - setup:.1f}")
        if "final_end" in m:
            final = m["final_end"] - m["final_start"]
            add("  final eval (s = val loop + load, strip)",
                f"{final:.1f} = {t['final_val_s']:.1f} + {final - t['final_val_s']:.1f}")
            add("  final eval end -> summary printed (s)", f"{total - m['final_end']:.1f}")
    if wall and Path(wall).is_file():
        start, end = map(float, Path(wall).read_text().split()[:2])
        add("  python start -> T0 (s, before total)", f"{p['t0'] - start:.1f}")
        if summary:
            add("  summary -> process exit (s, after total)", f"{end - p['t0'] - total:.1f}")
        add("process wall clock (s)", f"{end - start:.1f}")
        add("experiments an hour (3600 s / wall clock)", f"{3600 / (end - start):.1f}")
    # 5. peak memory: the summary against nvidia-smi (whole card, sampled every 200 ms, minus idle)
    seen = peak_above_idle(smi, idle) if smi and summary else None
    if seen is not None:
        vram = float(summary["peak_vram_mb"])
        add("peak_vram_mb vs nvidia-smi peak - idle (MiB)",
            f"{vram:.0f} vs {seen:.0f} ({100 * (vram - seen) / seen:+.1f}%; {TARGETS['vram']})" if seen > 0
            else f"{vram:.0f} vs n/a")
    if p.get("peak_memory"):
        pm = p["peak_memory"]
        add("  torch max reserved / allocated (MiB)",
            f"{pm['max_reserved_mib']:.0f} / {pm['max_allocated_mib']:.0f}")
    return rows


def ceiling_rows(label, path):
    """Rows for the model-only ceiling: img/s per memory layout ([] if the JSON is missing)."""
    if not Path(path).is_file():
        return []
    c = json.loads(Path(path).read_text())
    rows = [Row(f"{label}: card, model, imgsz (px), batch, nbs, amp, determ.",
                f"{c['card']}, {c['model']}, {c['imgsz']}, {c['batch']}, {c['nbs']}, {c['amp']}, "
                f"{c['deterministic']}")]
    for name, r in c["layouts"].items():
        value = f"{r['img_per_s']:.1f} ({r['ms_per_batch']:.1f} ms/batch)" if "img_per_s" in r else r["error"]
        rows.append(Row(f"{label}: {name} (img/s, model only)", value))
    return rows


def noise_rows(label, logs):
    """Rows for the mean and spread of fitness over runs (a missing summary counts as a failed run, not a
    zero)."""
    values = [float(s["fitness"]) for s in map(read_summary, logs) if "fitness" in s]
    failed = len(logs) - len(values)
    note = f", {failed} failed" if failed else ""
    if not values:
        return [Row(f"{label}: fitness (mAP50-95)", f"no finished runs{note}")]
    runs = f"{len(values)} run" + ("s" if len(values) != 1 else "")
    rows = [Row(f"{label}: fitness mean (mAP50-95, {runs}{note})", f"{statistics.mean(values):.4f}")]
    if len(values) > 1:
        rows += [Row(f"{label}: fitness spread max-min / std (mAP50-95)",
                     f"{max(values) - min(values):.4f} / {statistics.stdev(values):.4f}"),
                 Row(f"{label}: fitness values", " ".join(f"{v:.4f}" for v in values))]
    return rows

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description="table rows from bench profiles")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
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
    if args.command == "run":
        rows = run_rows(args.label, args.log, args.profile, args.ceiling, args.wall, args.smi, args.idle)
    elif args.command == "ceiling":
        rows = ceiling_rows(args.label, args.json)
    else:
        rows = noise_rows(args.label, args.logs)
    print("\n".join(lines(rows)))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
