"""Watching the night: results.tsv and the run record (harness/record.py) -> a few lines of text and
progress.png (`uv run prepare.py progress`): the counts, the best run, the noise floor of this machine's card,
the rows that disagree with the record; --rebuild writes results.tsv from the record, --test validates the
archived baseline and bests on the held-out test split. One job a module: results (parsing), summary, plot,
reconcile (rows against the record), floor (the noise floor), rebuild, held_out (--test); the command here."""

import sys
from pathlib import Path

from harness import record
from harness.progress.floor import noise_floor, noise_floor_line
from harness.progress.held_out import last_tested, save_tested, validate_archived
from harness.progress.plot import plot_progress, running_best_steps
from harness.progress.rebuild import rebuild_results
from harness.progress.reconcile import (
    disagreements,
    mark_reruns,
    match_record,
    night_warnings,
    with_record_metrics,
)
from harness.progress.results import Row, read_results
from harness.progress.summary import summarize_results

__all__ = ["Row", "mark_reruns", "match_record", "night_warnings", "noise_floor", "plot_progress", "progress",
           "read_results", "running_best_steps", "summarize_results"]


def progress(path="results.tsv", out_path="progress.png", record_path=None, test=False, rebuild=False):
    """CLI entry: print warnings, a summary and (with a record) the noise floor, write the plot. rebuild:
    first write results.tsv at path from the record; test: validate the archived runs on the test split
    too (kept beside the record and drawn until the next --test). Returns an exit code."""
    record_path = Path(record_path or record.RECORD)
    lines = record.read_record(record_path)
    if rebuild and (code := rebuild_results(lines, path, record_path)):
        return code
    if not Path(path).is_file():
        hint = (f"; {record_path} holds {len(lines)} run(s): `uv run prepare.py progress --rebuild` writes "
                "it from them" if lines else "")
        print(f"error: {path} not found — run an experiment first (see program.md){hint}",
              file=sys.stderr)
        return 1
    rows, warnings = read_results(path)
    matched = match_record(rows, lines)
    rows = mark_reruns(rows, lines, matched)
    if lines:
        warnings += disagreements(rows, lines, matched, path, record_path)
        warnings += night_warnings(lines, record_path)
        rows = with_record_metrics(rows, lines, matched)  # after the warnings, which quote both
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(summarize_results(rows))
    if record_path.is_file():
        print(noise_floor_line(lines, record_path))
    if test:
        save_tested(tested := validate_archived(lines, record_path), lines, record_path)
    else:
        tested = last_tested(lines, record_path)
    row_of_line = {i: n for n, i in matched.items()}
    plot_progress(rows, out_path, [(row_of_line[i], m) for i, m in tested if i in row_of_line])
    print(f"wrote {out_path}")
    return 0
