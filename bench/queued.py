"""
What the Ray queue adds to one experiment: the committed train.py run directly against the same commit through
`prepare.py submit` and `prepare.py wait`, on this machine's local Ray head (started first, and timed apart: a
night starts it once). The first queued run is the first in its slot on the worker, as each slot's first
experiment of a night, and is reported apart; then --pairs pairs of a direct run and a queued one, in turn, so
that both see the same machine.

Usage (repo root, train.py committed, no other run on the GPU):
    python bench/queued.py                          # AUTORESEARCH_TIME_BUDGET as set, else the default
    python bench/queued.py --pairs 3 --logs /tmp/queue-bench

A 10 s direct run goes first, untimed, so that every timed run finds the label caches and the page cache
warm. Prints rows: each run's wall clock (queued: from submit's start to wait's end), what the queue added
against the median direct run, and each run's summary.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import run_logged
from report import Row, lines

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from harness.summary import parse_summary  # noqa: E402

SUMMARY_KEYS = ("training_seconds", "total_seconds", "val_seconds", "train_images_per_s", "fitness")


def timed_run(args, log, env=None):
    """Seconds that `python args...` took in the repo root, its output into log; a failure ends the bench."""
    t = time.perf_counter()
    code = run_logged([sys.executable, *args], log, env=env)
    seconds = time.perf_counter() - t
    if code:
        sys.exit(f"error: `python {' '.join(args)}` ended with exit code {code}; its log is {log}")
    return seconds


def queued_run(name, logs):
    """Seconds from submit's start to wait's end for HEAD queued once; wait's output goes to logs/name.log."""
    submit = timed_run(["prepare.py", "submit"], logs / f"{name}-submit.log")
    return submit + timed_run(["prepare.py", "wait"], logs / f"{name}.log")


def queue_rows(logs, pairs):
    """Rows of direct runs against the same commit queued, with their logs in the folder logs."""
    timed_run(["train.py"], logs / "warm-up.log", env={"AUTORESEARCH_TIME_BUDGET": "10"})
    head = timed_run(["prepare.py", "list"], logs / "head.log")
    walls = {"queued-first": queued_run("queued-first", logs)}
    for i in range(1, pairs + 1):
        walls[f"direct-{i}"] = timed_run(["train.py"], logs / f"direct-{i}.log")
        walls[f"queued-{i}"] = queued_run(f"queued-{i}", logs)
    direct = statistics.median(walls[f"direct-{i}"] for i in range(1, pairs + 1))
    added = [walls[f"queued-{i}"] - direct for i in range(1, pairs + 1)]
    rows = [Row("local Ray head started (s, once a night)", f"{head:.1f}"),
            Row("queue added, first in its slot (s; vs the median direct run)",
                f"{walls['queued-first'] - direct:+.1f}"),
            Row("queue added, slot warm (s; median; each)",
                f"{statistics.median(added):+.1f}; " + ", ".join(f"{a:+.1f}" for a in added))]
    for name, wall in walls.items():
        summary = parse_summary("\n" + (logs / f"{name}.log").read_text())
        values = ", ".join(f"{key} {summary.get(key)}" for key in SUMMARY_KEYS)
        rows.append(Row(f"{name}: wall clock (s)", f"{wall:.1f}; {values}"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2, help="direct and queued runs in turn (default 2)")
    parser.add_argument("--logs", type=Path,
                        help="a folder for the runs' logs (default: a new temporary one)")
    args = parser.parse_args()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="queue-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    print("\n".join(lines(queue_rows(logs, args.pairs))))


if __name__ == "__main__":
    main()
