"""Paths and cache folders, the one-line error type, and atomic writes: what every harness module needs."""

import contextlib
import os
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_DIR / "ships-aerial-images" / "data.yaml"  # YOLO_DATA overrides it
RUN_DIR = REPO_DIR / "run"          # one run folder, emptied at the start of every run
WEIGHTS_DIR = REPO_DIR / "weights"  # local pretrained weights (*.pt)
# Stand-in, label caches, check fingerprints, Ultralytics settings: shared by every checkout on the machine.
GPU_DATA_ENV = "AUTORESEARCH_GPU_DATA"  # how train.py's GPU_DATA reaches the trainer and DDP workers
CACHE_DIR = Path(os.environ.get("AUTORESEARCH_CACHE", "~/.cache/autoresearch-ships")).expanduser()


class HarnessError(Exception):
    """A failure with a one-line explanation: printed as `error: ...`, no traceback."""


def warn(msg):
    print(f"WARNING: {msg}")


def banner(msg):
    line = "=" * 78
    print(f"{line}\nWARNING: {msg}\n{line}")


@contextlib.contextmanager
def atomic_path(path):
    """A temporary name beside `path` to write to, moved onto `path` in one step once written: another
    process reading `path` (two agents share the cache) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    yield tmp
    if tmp.exists():
        os.replace(tmp, path)


def write_atomic(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def command_line(pid):
    """A process's command line, shortened, from /proc ('?' where it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:120] or "?"


def find_trainer(tb):
    """The Ultralytics trainer whose frame raised, if any (to say which batch ran out of memory)."""
    trainer = None
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if type(obj).__name__.endswith("Trainer") and hasattr(obj, "args"):
            trainer = obj
        tb = tb.tb_next
    return trainer
