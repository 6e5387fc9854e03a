"""One night: the runs of one record (record/runs.jsonl) train on one dataset under one contract. The
record's first line that names them is the night's baseline; a run whose dataset content or read-only files
differ from the baseline's ends before training. `uv run prepare.py night` starts a new night on purpose: the
current record moves, whole and readable, into record/nights/.
"""

import datetime
import hashlib
import json
import os
import subprocess
from pathlib import Path

from harness.common import REPO_DIR, HarnessError, write_atomic

# The contract: what the agent must not edit. Their digests go into every record line.
CONTRACT = ("prepare.py", "pyproject.toml", "uv.lock", "harness")
DIGEST_CHARS = 16
SHOWN = 3  # files named in an error line

# ---------------------------------------------------------------------------
# Fingerprints of the contract and of the dataset
# ---------------------------------------------------------------------------


def digest(data):
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def contract_files(repo=REPO_DIR):
    """The read-only files of a checkout, as paths relative to it (harness/'s files but its caches)."""
    files = []
    for name in CONTRACT:
        path = Path(repo) / name
        if path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        elif path.is_file():
            files.append(path)
    return sorted(str(p.relative_to(repo)) for p in files)


def contract(repo=REPO_DIR):
    """{relative path: digest} of the checkout's read-only files."""
    return {name: digest((Path(repo) / name).read_bytes()) for name in contract_files(repo)}


def dataset_files(stats, fingerprint):
    """{split/images|labels/relative path: sha1} of a content fingerprint ({absolute path: sha1}): the same
    keys on every machine, wherever the dataset lies. The YAML is left out (it may hold a machine's paths)."""
    from harness.dataset import SPLITS, label_folder
    tops = [(f"{s}/{kind}", str(top) + os.sep) for s in SPLITS if s in stats
            for kind, top in (("images", stats[s].folder), ("labels", label_folder(stats[s].folder)))]
    return {f"{name}/{path[len(top):]}": sha1 for path, sha1 in fingerprint.items()
            for name, top in tops if path.startswith(top)}


def dataset_of(stats, fingerprint):
    """(one digest of the dataset's classes and files, its file list: dataset_files) of a checked dataset and
    its content fingerprint."""
    files = dataset_files(stats, fingerprint)
    lines = [json.dumps([stats["nc"], stats["names"]])] + [f"{k}:{v}" for k, v in sorted(files.items())]
    return digest("\n".join(lines).encode()), files


def keep_dataset_files(record_path, key, files):
    """Store a dataset's file list beside the record once (datasets/<digest>.json), for a later run of
    another dataset to say which files differ."""
    path = Path(record_path).parent / "datasets" / f"{key}.json"
    if not path.is_file():
        write_atomic(path, json.dumps(files, sort_keys=True).encode())


def dataset_files_of(record_path, key):
    """The file list kept for a dataset digest; {} if it is gone."""
    path = Path(record_path).parent / "datasets" / f"{key}.json"
    return json.loads(path.read_text()) if path.is_file() else {}

# ---------------------------------------------------------------------------
# The night's baseline, and a run that differs from it
# ---------------------------------------------------------------------------


def baseline(lines, field):
    """(line number, line) of the record's first line that has `field` ('dataset' or 'contract'); (None, None)
    in a record without one."""
    return next(((i, line) for i, line in enumerate(lines, 1) if line.get(field)), (None, None))


def contract_changes(base, now):
    """The read-only files that differ between two contracts (added, removed or changed), sorted."""
    return sorted(name for name in set(base) | set(now) if base.get(name) != now.get(name))


def named(files, shown=SHOWN):
    return ", ".join(files[:shown]) + (f" and {len(files) - shown} more" if len(files) > shown else "")


def check_contract(lines, now, record_path):
    """Raise HarnessError when this checkout's read-only files differ from the night's baseline's."""
    n, base = baseline(lines, "contract")
    if base is None or not (changed := contract_changes(base["contract"], now)):
        return
    commit = (base.get("commit") or "")[:7]
    way_out = f"put them back: `git checkout {commit} -- {' '.join(changed)}`" if commit else "put them back"
    raise HarnessError(f"read-only files differ from the night's baseline ({record_path} line {n}): "
                       f"{named(changed)}; {way_out} (prepare.py, harness/, pyproject.toml and uv.lock are "
                       "the contract: one per night)")


def check_dataset(lines, key, files, record_path):
    """Raise HarnessError when this run's dataset (digest `key`, file list `files`) is not the night's
    baseline's, naming the first files that differ and the two ways out."""
    from harness.dataset import describe_changes
    n, base = baseline(lines, "dataset")
    if base is None or base["dataset"] == key:
        keep_dataset_files(record_path, key, files)
        return
    before = dataset_files_of(record_path, base["dataset"])
    changes = (describe_changes(before, files) or "its classes") if before else "its content's digest"
    raise HarnessError(f"the dataset differs from the night's baseline ({record_path} line {n}): {changes}; "
                       "put the dataset back, or start a new night on purpose with `uv run prepare.py night` "
                       "(the current record moves, readable, into record/nights/)")

# ---------------------------------------------------------------------------
# A new night
# ---------------------------------------------------------------------------


def start_new_night(record_path, lines):
    """Move the current night (the record, whose lines are `lines`, its archived weights, its dataset lists)
    into record/nights/<its first run's time>/, where `progress --record` still reads it. Returns that folder,
    or None when there was no record."""
    folder = Path(record_path).parent
    if not lines:
        return None
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = lines[0].get("time") or now.isoformat(timespec="seconds")
    target = folder / "nights" / stamp.replace(":", "").replace("+0000", "Z")
    while target.exists():
        target = target.with_name(target.name + "-")
    target.mkdir(parents=True)
    for name in (Path(record_path).name, "best", "datasets"):
        if (folder / name).exists():
            os.replace(folder / name, target / name)
    return target


def contract_commits(base_commit, repo=REPO_DIR):
    """['<short commit> <subject>: <files>'] of the commits after base_commit (to HEAD) that changed read-only
    files: what an edit of the contract left in git, even if it also disabled the checks."""
    if not base_commit:
        return []
    try:
        out = subprocess.run(["git", "-C", str(repo), "log", "--format=@%h %s", "--name-only",
                              f"{base_commit}..HEAD", "--", *CONTRACT], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    commits = []
    for block in out.stdout.split("@")[1:]:
        head, *files = [line for line in block.splitlines() if line.strip()]
        commits.append(f"{head}: {named(files)}")
    return commits

