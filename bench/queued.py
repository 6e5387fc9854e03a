"""
What the Ray queue adds to one experiment: the committed train.py run directly, then the same commit twice
through `prepare.py submit` and `prepare.py wait`, on this machine's local Ray head (started first, and timed
apart: a night starts it once). The first queued run is the first in its slot on the worker, as each slot's
first experiment of a night; the second finds the slot as a direct run finds its checkout.

Usage (repo root, train.py committed, no other run on the GPU):
    python bench/queued.py                          # AUTORESEARCH_TIME_BUDGET as set, else the default
    python bench/queued.py --logs /tmp/queue-bench

A 10 s direct run goes first, untimed, so that every timed run finds the label caches and the page cache
warm. Prints rows: each run's wall clock, training and total seconds and fitness, and what the queue added.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench import run_logged
from report import Row, lines

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from harness.summary import parse_summary  # noqa: E402


def timed_run(args, log, env=None):
    """Seconds that `python args...` took in the repo root, its output into log; a failure ends the bench."""
    t = time.perf_counter()
    code = run_logged([sys.executable, *args], log, env=env)
    seconds = time.perf_counter() - t
    if code:
        sys.exit(f"error: `python {' '.join(args)}` ended with exit code {code}; its log is {log}")
    return seconds


def queue_rows(logs):
    """Rows of a direct run against the same commit queued twice, with their logs in the folder logs."""
    timed_run(["train.py"], logs / "warm-up.log", env={"AUTORESEARCH_TIME_BUDGET": "10"})
    walls = {"direct": timed_run(["train.py"], logs / "direct.log")}
    head = timed_run(["prepare.py", "list"], logs / "head.log")
    for name in ("queued-1", "queued-2"):
        submit = timed_run(["prepare.py", "submit"], logs / f"{name}-submit.log")
        walls[name] = submit + timed_run(["prepare.py", "wait"], logs / f"{name}.log")
    runs = {name: parse_summary("\n" + (logs / f"{name}.log").read_text()) for name in walls}
    rows = [Row("local Ray head started (s, once a night)", f"{head:.1f}")]
    for name, wall in walls.items():
        rows.append(Row(f"{name}: wall clock (s; queued: submit to the end of wait)", f"{wall:.1f}"))
    for name in ("queued-1", "queued-2"):
        rows.append(Row(f"{name}: added by the queue (s)", f"{walls[name] - walls['direct']:+.1f}"))
    for key in ("training_seconds", "total_seconds", "val_seconds", "train_images_per_s", "epoch", "fitness"):
        values = " / ".join(str(summary.get(key)) for summary in runs.values())
        rows.append(Row(f"{key}: direct / queued-1 / queued-2", values))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=Path,
                        help="a folder for the runs' logs (default: a new temporary one)")
    args = parser.parse_args()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="queue-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    print("\n".join(lines(queue_rows(logs))))


if __name__ == "__main__":
    main()
