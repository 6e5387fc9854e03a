"""The run record: one JSON line for every run of train.py, whatever its end, appended by the supervisor alone
to record/runs.jsonl in the checkout (ignored by git, like results.tsv), and a bounded archive of the weights
of the baseline and of every new best, which `uv run prepare.py progress --test` validates on the test split.

A line: time, commit (HEAD) and train_py_changed (train.py differs from it), train_py (a digest of the file),
repeat (how many earlier lines ran the same experiment: experiment()), changed (the knobs that differ from the
record's first run, the baseline; the first line has all of them as `knobs`), contract (digests of the
read-only files) and dataset (a digest of the dataset's content, once checked: harness/night.py), summary (the
summary's values by key) or error (the `error:` line's text), wall_seconds, and for an archived run weights
(its path, relative to the record's folder).
"""

import ast
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from harness import night
from harness.common import REPO_DIR

RECORD_DIR = REPO_DIR / "record"
RECORD = RECORD_DIR / "runs.jsonl"
ARCHIVE = RECORD_DIR / "best"
ARCHIVE_MAX_FILES = 20   # the baseline and the newest bests: older bests go first
ARCHIVE_MAX_MB = 2000
DEVICE_INDEX = re.compile(r"^cuda:[\d,]+\s+")  # "cuda:0 " of the summary's device: two H100s are one card

# ---------------------------------------------------------------------------
# What a run was
# ---------------------------------------------------------------------------


def knobs_of(source):
    """{name: value} of the module-level UPPER_CASE assignments in train.py's source (a value that is not a
    literal as its source text)."""
    knobs = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        unpacked = (isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                    and len(target.elts) == len(value.elts))  # HSV_H, HSV_S, HSV_V = 0.015, 0.7, 0.4
        pairs = zip(target.elts, value.elts) if unpacked else [(target, value)]
        for name, val in pairs:
            if isinstance(name, ast.Name) and name.id.isupper():
                try:
                    knobs[name.id] = ast.literal_eval(val)
                except ValueError:
                    knobs[name.id] = ast.unparse(val)
    return knobs


def git_state(train_py):
    """(HEAD's commit, whether train.py differs from HEAD's); (None, None) outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", str(Path(train_py).parent), *args], capture_output=True,
                              text=True, timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return None, None
        return head.stdout.strip(), git("diff", "--quiet", "HEAD", "--", Path(train_py).name).returncode != 0
    except (OSError, subprocess.TimeoutExpired):
        return None, None


def describe_run(train_py, wall_seconds, summary=None, error=None, **facts):
    """The record line of this run, less what depends on earlier lines (append() adds that); facts: what the
    supervisor learnt of the run (its dataset's digest)."""
    source = Path(train_py).read_bytes()
    commit, changed = git_state(train_py)
    try:
        knobs = json.loads(json.dumps(knobs_of(source), default=str))  # as the record will read them back
    except SyntaxError:
        knobs = {}
    return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "train_py_changed": changed,
            "train_py": hashlib.sha256(source).hexdigest()[:16], "knobs": knobs,
            "contract": night.contract(Path(train_py).parent), **facts, "summary": summary, "error": error,
            "wall_seconds": round(wall_seconds, 1)}



def card(line):
    """The kind of card a line's run measured on: the summary's device without its cuda index ('NVIDIA H100
    80GB HBM3', '2 x NVIDIA H100 80GB HBM3', 'cpu'); None for a run without a summary or device."""
    device = (line.get("summary") or {}).get("device")
    return DEVICE_INDEX.sub("", str(device)) if device else None


def experiment(line):
    """What makes two runs repeats of one experiment: the same train.py (its digest) on the same dataset and
    the same kind of card."""
    return line.get("train_py"), line.get("dataset"), card(line)


def reruns(lines):
    """{line number: line number of the first successful run of the same experiment} for each line that
    repeats an experiment already measured (numbers 1-based, as best/NNNN.pt). A repeat of a crash is no
    re-run: the crash measured nothing."""
    first, found = {}, {}
    for i, line in enumerate(lines, start=1):
        key = experiment(line)
        if key in first:
            found[i] = first[key]
        elif line.get("summary"):
            first[key] = i
    return found

# ---------------------------------------------------------------------------
# The record file: appends only, one locked write a line
# ---------------------------------------------------------------------------


def read_record(path=RECORD):
    """The record's lines, oldest first ([] without a record); a line that does not parse is skipped."""
    if not Path(path).is_file():
        return []
    lines = []
    for raw in Path(path).read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def weights_path(line, record_path=RECORD):
    """Where a line's archived weights are (None if it has none): stored relative to the record's folder."""
    return Path(record_path).parent / line["weights"] if line.get("weights") else None


def is_new_best(line, earlier):
    """Whether a run beats every earlier fitness in the record (the first successful run, the baseline,
    does)."""
    if not line.get("summary"):
        return False
    fitness = float(line["summary"]["fitness"])
    return all(fitness > float(e["summary"]["fitness"]) for e in earlier if e.get("summary"))


def append(line, best_pt=None, path=RECORD):
    """Append one run's line under an exclusive lock, completed from the earlier lines (repeat, changed);
    a new best's weights (best_pt) are archived first. Returns the line as written."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a second supervisor of this checkout waits here
        earlier = read_record(path)
        line["repeat"] = sum(experiment(e) == experiment(line) for e in earlier)
        if earlier:
            base = earlier[0].get("knobs", {})
            line["changed"] = {k: v for k, v in line.pop("knobs").items() if base.get(k, object()) != v}
        if best_pt and is_new_best(line, earlier):
            folder = Path(path).parent
            copy = archive(best_pt, len(earlier) + 1, folder / ARCHIVE.name)
            line["weights"] = str(copy.relative_to(folder))
        os.write(fd, (json.dumps(line, default=str) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return line


def archive(best_pt, number, folder=ARCHIVE):
    """Copy a new best's weights into the archive as NNNN.pt (its record line's number), then drop the
    oldest bests but the baseline past ARCHIVE_MAX_FILES or ARCHIVE_MAX_MB. Returns the copy's path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{number:04d}.pt"
    shutil.copy2(best_pt, target.with_suffix(".tmp"))
    os.replace(target.with_suffix(".tmp"), target)
    kept = sorted(folder.glob("*.pt"))
    while len(kept) > 2 and (len(kept) > ARCHIVE_MAX_FILES or
                             sum(p.stat().st_size for p in kept) > ARCHIVE_MAX_MB * 2**20):
        kept.pop(1).unlink()  # [0] is the baseline, [-1] the new best
    return target
