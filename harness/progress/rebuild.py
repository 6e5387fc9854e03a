"""--rebuild: results.tsv written from the run record, for a night whose agent lost or never wrote it."""

import sys
from pathlib import Path

from harness import record
from harness.progress.reconcile import error_text, fitness_of, short_commit
from harness.progress.results import RERUN, RESULTS_COLUMNS


def rebuilt_rows(lines):
    """results.tsv's 5 fields (strings) for each record line: crash for an error, keep for a line that
    beats every earlier fitness, discard otherwise; described by its changed knobs, `baseline` (the first
    run), `re-run of <commit>` or its error (error_text)."""
    reruns, rows = record.reruns(lines), []
    first_success = next((i for i, line in enumerate(lines, 1) if fitness_of(line) is not None), None)
    for i, line in enumerate(lines, start=1):
        if fitness_of(line) is None:
            rows.append([short_commit(line), "0.000000", "0.0", "crash", error_text(line)])
            continue
        knobs = " ".join(f"{k}={v}" for k, v in (line.get("changed") or {}).items())
        if i in reruns:
            description = f"{RERUN} of {short_commit(lines[reruns[i] - 1])}"
        elif i == first_success:  # after crashes its knobs may differ from the first line's
            description = f"baseline {knobs}"
        else:
            description = knobs or "train.py edited, no knob changed"
        memory = float(line["summary"].get("peak_vram_mb", 0)) / 1024
        status = "keep" if record.is_new_best(line, lines[:i - 1]) else "discard"
        rows.append([short_commit(line), f"{fitness_of(line):.6f}", f"{memory:.1f}", status,
                     " ".join(description.split())])  # no tab or newline of a knob's value splits the row
    return rows


def rebuild_results(lines, path, record_path):
    """Write results.tsv at path from the record, never over an existing file. Returns an exit code."""
    if Path(path).exists():
        print(f"error: {path} exists and --rebuild never overwrites it; move it away "
              f"(mv {path} {path}.old) or pass --results rebuilt.tsv", file=sys.stderr)
        return 1
    if not lines:
        print(f"error: {record_path}: no runs recorded, nothing to rebuild from; each `uv run train.py` "
              "adds one", file=sys.stderr)
        return 1
    text = "".join("\t".join(fields) + "\n" for fields in [RESULTS_COLUMNS, *rebuilt_rows(lines)])
    Path(path).write_text(text, encoding="utf-8")
    print(f"wrote {path}: {len(lines)} rows from {record_path}")
    return 0
