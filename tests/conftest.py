"""Shared fixtures: a private cache folder, small generated datasets, and a runner for train.py.

Every test that trains runs the real train.py in a subprocess, on a copy of the repo's files in a
temporary folder (so the run folder, weights/ and caches are the test's own), with a few seconds
of budget and tiny images.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(tempfile.mkdtemp(prefix="autoresearch-test-cache-"))
os.environ["AUTORESEARCH_CACHE"] = str(CACHE)  # before prepare is imported anywhere
os.environ.pop("YOLO_DATA", None)

from harness.synthetic import generate_synthetic  # noqa: E402

TINY = {"train": 12, "valid": 6, "test": 4}
FAST_KNOBS = {"IMGSZ": "64", "BATCH": "4", "NBS": "4", "WORKERS": "0"}


@pytest.fixture(scope="session")
def tiny_data():
    """A small synthetic dataset in the Kaggle layout, generated once; tests must not modify it."""
    root = CACHE / "tiny-ships"
    if not root.exists():
        generate_synthetic(root, TINY, seed=1, workers=2)
    return root


@pytest.fixture
def dataset(tiny_data, tmp_path):
    """A private copy of the tiny dataset that a test may break."""
    return Path(shutil.copytree(tiny_data, tmp_path / "ships-aerial-images"))


def make_repo(tmp_path, knobs=None, call_extra="", before_train="", after_train="", name="repo"):
    """A copy of prepare.py, harness/ and train.py in tmp_path/<name>, with knobs replaced, extra arguments added
    to model.train(...), and optional lines inserted before model.train(...) or prepare.finish(model)."""
    repo = tmp_path / name
    repo.mkdir(exist_ok=True)
    shutil.copy(REPO / "prepare.py", repo / "prepare.py")
    shutil.copytree(REPO / "harness", repo / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    text = (REPO / "train.py").read_text()
    for name, value in {**FAST_KNOBS, **(knobs or {})}.items():
        text, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", text, flags=re.M)
        assert n == 1, f"knob {name} not found in train.py"
    if call_extra:
        text = text.replace("seed=SEED,", f"seed=SEED, {call_extra},")
    if before_train:
        text = text.replace("model = YOLO(run.weights)\n", f"model = YOLO(run.weights)\n{before_train}\n")
    if after_train:
        text = text.replace("prepare.finish(model)", f"{after_train}\nprepare.finish(model)")
    (repo / "train.py").write_text(text)
    return repo


def run_train(repo, data_yaml=None, budget=3, env=None, timeout=600):
    """Run train.py like the agent does (stdout and stderr into one log); returns (exit code, log)."""
    full_env = {**os.environ, "AUTORESEARCH_TIME_BUDGET": str(budget), **(env or {})}
    if data_yaml is not None:
        full_env["YOLO_DATA"] = str(data_yaml)
    log = repo / "run.log"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "train.py"], cwd=repo, env=full_env, stdout=f,
                              stderr=subprocess.STDOUT, timeout=timeout)
    return proc.returncode, log.read_text()


def summary_of(log):
    """The key: value lines after the last '---' line."""
    tail = log.rsplit("\n---\n", 1)[1]
    return dict(line.split(": ", 1) for line in tail.strip().splitlines())


def seed_grep(log):
    """The seed program.md's exact command: grep "^fitness:\\|^peak_vram_mb:" run.log"""
    return [line for line in log.splitlines() if line.startswith(("fitness:", "peak_vram_mb:"))]


def assert_failed(rc, log, prefix):
    """A failure as the agent's loop sees it: non-zero exit, an empty seed grep, and the log's
    last line an `error:` line starting with prefix. Returns that line."""
    assert rc != 0
    assert seed_grep(log) == []
    last = log.rstrip().splitlines()[-1]
    assert last.startswith(prefix), last
    return last
