"""--test: the archived baseline and bests (record/best/) validated on the dataset's held-out test split as
the metric is on val, their table, and the last --test's results kept beside the record for later plots."""

import json
import os
import shutil
from pathlib import Path

from harness import record
from harness.common import CACHE_DIR
from harness.progress.reconcile import fitness_of, short_commit
from harness.progress.results import RERUN

HELD_OUT_DIR = CACHE_DIR / "held-out"  # the test split's YAML and Ultralytics' val folder, outside run/
TESTED_NAME = "held_out.json"          # beside the record: the last --test, drawn until the next one


def validate_on_test(weights, stats):
    """[test mAP50-95] of each weights file: validation.metric_of, the metric's validator and settings, on the
    test split instead of val."""
    from harness import dataset, device, runtime, validation
    runtime.go_offline()  # before Ultralytics is imported, as prepare.py does
    runtime.configure_ultralytics()
    gpu, folder = device.pick_device(None)[0], HELD_OUT_DIR / str(os.getpid())
    if view := dataset.link_view(stats["test"].folder, folder / "test"):  # not taken for a run's reads
        stats = {**stats, "test": stats["test"]._replace(folder=view)}
    data = dataset.write_run_yaml(stats, folder / "data.yaml")
    try:
        return [float(validation.metric_of(w, data, "test", gpu, folder).box.map) for w in weights]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def held_out_table(lines, tested):
    """The --test table: per archived run its record line, commit, val and test mAP50-95, and the gains of
    both over the first row (the baseline, unless its weights are gone)."""
    first_val, first_test = fitness_of(lines[tested[0][0] - 1]), tested[0][1]
    reruns = record.reruns(lines)  # a re-run's gains are noise: the table says which lines are
    table = [f"{'line':>4}  {'commit':<7}  {'val mAP50-95':>12}  {'test mAP50-95':>13}  {'val gain':>9}  "
             f"{'test gain':>9}"]
    for n, (i, test_map) in enumerate(tested):
        line = lines[i - 1]
        gains = ("baseline", "baseline") if n == 0 else (f"{fitness_of(line) - first_val:+.6f}",
                                                         f"{test_map - first_test:+.6f}")
        note = f"  {RERUN} of line {reruns[i]}" if i in reruns else ""
        table.append(f"{i:>4}  {short_commit(line):<7}  {fitness_of(line):>12.6f}  {test_map:>13.6f}  "
                     f"{gains[0]:>9}  {gains[1]:>9}{note}")
    return table


def validate_archived(lines, record_path):
    """Validate the archived weights still on disk on the dataset's test split and print the table.
    Returns [(record line number, test mAP50-95)]: [] without weights or without a test split."""
    from harness import dataset
    archived = [i for i, line in enumerate(lines, start=1) if line.get("weights")]
    on_disk = [i for i in archived if record.weights_path(lines[i - 1], record_path).is_file()]
    if not on_disk:
        print(f"held-out check: the {len(archived)} archived weights that {record_path} names are gone from "
              "disk; nothing to validate" if archived else f"held-out check: no archived weights in "
              f"{record_path} yet (the first successful run archives the baseline's); nothing to validate")
        return []
    yaml_path, _ = dataset.find_dataset()
    stats = dataset.check_dataset(yaml_path)
    if "test" not in stats:
        print(f"held-out check: {yaml_path} has no test split (no `test:` entry, or no images there); "
              "nothing held out to validate on")
        return []
    print(f"held-out check: {len(on_disk)} archived run(s) on the test split of {yaml_path} "
          f"({stats['test'].images} images), validated as the metric is on val")
    weights = [record.weights_path(lines[i - 1], record_path) for i in on_disk]
    tested = list(zip(on_disk, validate_on_test(weights, stats)))
    baseline = "the baseline" if on_disk[0] == archived[0] else "the earliest archived weights left"
    print(f"held-out check: the archived runs, gains over {baseline}")
    print("\n".join(held_out_table(lines, tested)))
    return tested


def tested_path(record_path):
    """Where the last --test's results are kept: beside the record."""
    return Path(record_path).with_name(TESTED_NAME)


def save_tested(tested, lines, record_path):
    """Keep a --test's [(record line number, test mAP50-95)], each with its line's commit and time."""
    kept = [{"line": i, "commit": lines[i - 1].get("commit"), "time": lines[i - 1].get("time"), "test_map": m}
            for i, m in tested]
    tested_path(record_path).write_text(json.dumps(kept) + "\n", encoding="utf-8")


def last_tested(lines, record_path):
    """The last --test's [(record line number, test mAP50-95)] whose lines the record still holds as they
    were; [] before any --test."""
    try:
        kept = json.loads(tested_path(record_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [(t["line"], t["test_map"]) for t in kept if 0 < t["line"] <= len(lines)
            and [lines[t["line"] - 1].get(k) for k in ("commit", "time")] == [t["commit"], t["time"]]]
