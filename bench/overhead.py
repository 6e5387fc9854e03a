"""
What the checks around a run cost on its wall clock: each step the supervisor adds for the night and the
held-out splits, timed alone on a dataset (the stand-in by default), a few times each.

Usage (repo root):
    python bench/overhead.py                       # the dataset a run would use
    python bench/overhead.py --data /path/to/data.yaml --repeat 5

Prints one row per step: the median and the largest of its seconds. The dataset's content fingerprint, which
the supervisor took before these checks existed, is timed too, for scale.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from report import Row, lines

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from harness import dataset, night, supervisor, watch  # noqa: E402


def timed(step, repeat):
    """(median, largest) seconds of step() over `repeat` calls."""
    seconds = []
    for _ in range(repeat):
        t = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t)
    return statistics.median(seconds), max(seconds)


def overhead_rows(yaml_path, repeat):
    """Rows of each step's (median, largest) seconds on the dataset at yaml_path."""
    stats = dataset.check_dataset(yaml_path)
    folders = [stats[s].folder for s in dataset.SPLITS if s in stats]
    fingerprint = dataset.content_fingerprint(yaml_path, folders)[0]
    scratch = Path(tempfile.mkdtemp(prefix="overhead-", dir=REPO))  # beside run/: the same filesystem
    views = iter(range(repeat))

    def view_and_watch():
        folder = scratch / str(next(views))
        child, view = dataset.views(stats, folder)
        watch.HeldOut(stats, view, first_of_night=False).check({"val": False})

    steps = {"content fingerprint (unchanged dataset, as before)": lambda: dataset.content_fingerprint(
                 yaml_path, folders),
             "contract digests": night.contract,
             "dataset digest": lambda: night.dataset_of(stats, fingerprint),
             "view of the val split + watch on, then off": view_and_watch,
             "leftover check (none left)": lambda: supervisor.stop_leftovers(grace=0)}
    rows = [Row("dataset", f"{yaml_path} ({sum(stats[s].images for s in dataset.SPLITS if s in stats)} "
                           "images)")]
    for name, step in steps.items():
        median, worst = timed(step, repeat)
        rows.append(Row(name, f"{median:.3f} s median, {worst:.3f} s max"))
    os.system(f"rm -rf {scratch}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a dataset YAML (default: the one a run would use)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    yaml_path = args.data or dataset.find_dataset()[0]
    print("\n".join(lines(overhead_rows(yaml_path, args.repeat))))


if __name__ == "__main__":
    main()
