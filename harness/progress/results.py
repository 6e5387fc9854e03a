"""results.tsv, the agent's log of the night: one row per run (commit, metric, memory_gb, status,
description), read leniently, and what a row's outcome is."""

import math
import re
from dataclasses import dataclass
from pathlib import Path

RESULTS_COLUMNS = ["commit", "metric", "memory_gb", "status", "description"]
STATUSES = ("keep", "discard", "crash")
RERUN = "re-run"         # a fourth outcome: a repeat of a train.py already measured, a sample of the noise


@dataclass
class Row:
    n: int               # experiment number, 1-based in file order
    commit: str
    metric: float        # mAP50-95, 0.0 for crashes
    memory_gb: float
    status: str          # keep | discard | crash
    description: str
    rerun: bool = False  # a repeat of a train.py already measured (reconcile.mark_reruns)


def split_line(line):
    """Split one line into 5 fields; returns (fields, was_tab_separated)."""
    if "\t" in line:
        fields = [f.strip() for f in line.split("\t")]
        # a description may itself contain tabs: glue columns 5+ back together
        if len(fields) > len(RESULTS_COLUMNS):
            fields = fields[:4] + [" ".join(f for f in fields[4:] if f)]
        return fields, True
    # agents sometimes write spaces or commas; the first 4 fields never contain
    # either, so splitting at most 4 times keeps the description intact
    return re.split(r"[,\s]+", line.strip(), maxsplit=4), False


def parse_number(text, column):
    """text as a finite float; raises ValueError otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # "nan"/"inf" parse as floats but would poison best/gain
        raise ValueError(f"non-numeric {column} {text!r}")
    return value


def parse_fields(fields):
    """Turn 5 string fields into (commit, metric, memory, status, desc) or raise ValueError."""
    if len(fields) < len(RESULTS_COLUMNS):
        raise ValueError(f"expected {len(RESULTS_COLUMNS)} columns, got {len(fields)}")
    commit, metric, memory, status, description = fields
    status = status.lower()
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r} (expected keep, discard or crash)")
    return (commit, parse_number(metric, "metric"), parse_number(memory, "memory_gb"),
            status, description.strip())


def read_results(path):
    """Parse results.tsv leniently, skipping bad lines with a warning instead of failing. Returns (rows,
    warnings)."""
    path, rows, warnings, saw_non_tab = Path(path), [], [], False
    text = path.read_text(encoding="utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), start=1):  # splitlines handles CRLF
        if not line.strip():
            continue
        fields, is_tab = split_line(line)
        if fields[0].lower() == RESULTS_COLUMNS[0]:  # header row (optional: may be missing)
            continue
        try:
            parsed = parse_fields(fields)
        except ValueError as e:
            warnings.append(f"{path}:{lineno}: skipped line, {e}")
            continue
        saw_non_tab = saw_non_tab or not is_tab
        rows.append(Row(len(rows) + 1, *parsed))
    if saw_non_tab:
        # warn once per file, not once per line: the fix is the same either way
        warnings.insert(0, f"{path}: not tab-separated; split columns on spaces/commas instead")
    return rows, warnings


def outcome(row):
    """keep, discard, crash or re-run: a re-run that measured something is counted apart from the changes,
    a crashed one is a crash."""
    return RERUN if row.rerun and row.status != "crash" else row.status


def baseline_and_best(rows):
    """(baseline, best): the first successful run and the highest kept run (or any successful run);
    (None, None) when every run crashed."""
    ran = [r for r in rows if r.status != "crash"]
    if not ran:
        return None, None
    kept = [r for r in ran if outcome(r) == "keep"]
    best = max(kept or ran, key=lambda r: r.metric)
    return ran[0], best
