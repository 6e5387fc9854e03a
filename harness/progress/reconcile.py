"""results.tsv beside the run record (harness/record.py): which row is which run, which rows are re-runs, the
record's fitness for a row that disagrees with it, and one warning per disagreement or per change of the
night's dataset or read-only files (harness/night.py)."""

from dataclasses import replace

from harness import night, record
from harness.progress.results import RERUN

METRIC_TOLERANCE = 5e-7  # results.tsv rounds the metric to 6 decimals
SHORT_COMMIT = 7         # results.tsv's commit: the first 7 characters of the record's
MIN_COMMIT_PREFIX = 4    # git's shortest abbreviation: a shorter commit in results.tsv matches no run
ERROR_MAX_CHARS = 200    # an error quoted in a row or warning: its whole line, cut at a word past this


def fitness_of(line):
    """A record line's fitness as a float; None for a run that ended in an error."""
    return float(line["summary"]["fitness"]) if line.get("summary") else None


def error_text(line):
    """A crashed line's error on one line (tabs and newlines become spaces), whole up to ERROR_MAX_CHARS, else
    cut at the last word boundary before it with an ellipsis: the error's advice usually follows its cause."""
    text = " ".join(str(line.get("error") or "no summary, no error").split())
    if len(text) <= ERROR_MAX_CHARS:
        return text
    cut = text[:ERROR_MAX_CHARS].rsplit(" ", 1)[0] or text[:ERROR_MAX_CHARS]
    return cut.rstrip(" ,;:") + " …"


def short_commit(line):
    """A record line's commit as results.tsv writes it ('none' outside a git checkout)."""
    return (line.get("commit") or "none")[:SHORT_COMMIT]


def runs_of_commit(lines, commit):
    """Record line numbers (oldest first) whose full commit starts with a results.tsv row's commit."""
    short = commit.lower()
    if len(short) < MIN_COMMIT_PREFIX:
        return []
    return [i for i, line in enumerate(lines, start=1) if str(line.get("commit") or "").startswith(short)]


def match_record(rows, lines):
    """{row number: record line number}. The rule: a row names its run by a short commit, a prefix of the
    record's full commit; the k-th row of a commit, in file order, is the k-th record line of that commit,
    oldest first. A row past its commit's record lines, or of a commit the record lacks, matches none."""
    seen, matched = {}, {}
    for r in rows:
        k = seen[r.commit.lower()] = seen.get(r.commit.lower(), 0) + 1
        runs = runs_of_commit(lines, r.commit)
        if k <= len(runs):
            matched[r.n] = runs[k - 1]
    return matched


def mark_reruns(rows, lines, matched):
    """The rows with rerun set: from the record where a line matches the row (record.reruns), else from a
    description that starts with `re-run`."""
    reruns = record.reruns(lines)
    return [replace(r, rerun=matched[r.n] in reruns if r.n in matched
                    else r.description.lower().startswith(RERUN)) for r in rows]


def metric_disagrees(row, line):
    """Whether a row that measured something logs another metric than its record line's fitness."""
    fitness = fitness_of(line)
    return row.status != "crash" and fitness is not None and abs(row.metric - fitness) > METRIC_TOLERANCE


def with_record_metrics(rows, lines, matched):
    """The rows, each matched row that logs another metric than its run's fitness given the record's: the
    record is what the supervisor measured, the row what an agent copied."""
    return [replace(r, metric=fitness_of(lines[matched[r.n] - 1]))
            if r.n in matched and metric_disagrees(r, lines[matched[r.n] - 1]) else r for r in rows]


def disagreements(rows, lines, matched, path, record_path):
    """One warning per way a row disagrees with its run in the record (status, metric, a missing run,
    train.py edits that no commit holds)."""
    warnings = []
    for r in rows:
        where = f"{path} row {r.n} ({r.commit})"
        if r.n not in matched:
            recorded = len(runs_of_commit(lines, r.commit))
            missing = (f"more rows of this commit than its {recorded} run(s) in {record_path}" if recorded
                       else f"no run of this commit in {record_path}")
            warnings.append(f"{where}: {missing}; log one row per `uv run train.py`, with the commit it ran")
            continue
        i = matched[r.n]
        line, at = lines[i - 1], f"{record_path} line {i}"
        fitness = fitness_of(line)
        if r.status != "crash" and fitness is None:
            warnings.append(f"{where}: status {r.status}, but the run ended in an error ({at}: "
                            f"{error_text(line)}); log it as crash, metric 0.000000")
        elif r.status == "crash" and fitness is not None:
            warnings.append(f"{where}: status crash, but the run finished with fitness {fitness:.6f} ({at}); "
                            "log its metric and keep or discard it")
        elif metric_disagrees(r, line):
            warnings.append(f"{where}: metric {r.metric:.6f}, but the run's fitness is {fitness:.6f} ({at}); "
                            f"the summary counts {fitness:.6f}; copy the summary's `fitness:` line")
        if line.get("train_py_changed"):
            warnings.append(f"{where}: ran with uncommitted edits to train.py ({at}), so the commit does not "
                            "hold what ran; commit before each run")
    return warnings


def night_warnings(lines, record_path):
    """One warning per record line whose dataset or read-only files differ from the night's baseline's, and
    per commit since the baseline that changed read-only files (harness/night.py)."""
    warnings = []
    n_data, data = night.baseline(lines, "dataset")
    n_contract, contract = night.baseline(lines, "contract")
    for i, line in enumerate(lines, start=1):
        where = f"{record_path} line {i} ({short_commit(line)})"
        if data and line.get("dataset") and line["dataset"] != data["dataset"]:
            warnings.append(f"{where}: another dataset than the night's baseline's (line {n_data}); its runs "
                            "are not compared with the night's")
        if contract and line.get("contract") and (
                changed := night.contract_changes(contract["contract"], line["contract"])):
            warnings.append(f"{where}: read-only files differ from the night's baseline's (line "
                            f"{n_contract}): {night.named(changed)}")
    for commit in night.contract_commits(contract.get("commit") if contract else None):
        warnings.append(f"commit {commit}: changed read-only files after the night's baseline")
    return warnings
