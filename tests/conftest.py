"""Shared fixtures: a private cache folder, small generated datasets, and a runner for train.py.

Every test that trains runs the real train.py in a subprocess, on a copy of the repo's files in a
temporary folder (so the run folder, weights/ and caches are the test's own), with a few seconds
of budget and tiny images.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A test's spawned worker process imports this file again, in its session's environment: it keeps that cache.
CACHE = Path(os.environ.get("AUTORESEARCH_CACHE", ""))
if not CACHE.name.startswith("autoresearch-test-cache-"):
    CACHE = Path(tempfile.mkdtemp(prefix="autoresearch-test-cache-"))
os.environ["AUTORESEARCH_CACHE"] = str(CACHE)  # before prepare is imported anywhere
os.environ.pop("YOLO_DATA", None)

from easy_data import generate_easy  # noqa: E402
from harness import supervisor  # noqa: E402
from harness.knobs import add_arguments, edit_knobs, insert  # noqa: E402
from harness.summary import parse_summary as summary_of  # noqa: E402, F401  (tests import it from here)
from harness.synthetic import generate_synthetic  # noqa: E402

TINY = {"train": 12, "valid": 6, "test": 4}
FAST_KNOBS = {"IMGSZ": "64", "BATCH": "4", "NBS": "4", "WORKERS": "0"}
# A few CPU seconds on the tiny data score mAP 0, so tests that compare metrics train on easy_data with these
# knobs and this budget instead (an epoch is 8 steps of 4 images at 96 px; no mosaic, no warmup, twice the
# learning rate), and first assert mAP50-95 above EASY_MAP_FLOOR: a comparison of two metrics then never
# compares 0 with 0. What it takes is steps: ~50 give 0.1-0.45, ~80 give 0.35-0.7. Measured after EASY_BUDGET
# on a 2-core machine: 0.5-0.8 with the CPU to itself, 0.2-0.5 beside a second test suite.
EASY_KNOBS = {"IMGSZ": "96", "BATCH": "4", "NBS": "4", "LR0": "0.02", "WARMUP_EPOCHS": "0.0", "MOSAIC": "0.0"}
EASY_BUDGET = 20
EASY_MAP_FLOOR = 0.1
# best.pt validated with Ultralytics' own defaults in a process of its own, after the run (the child may not
# read the val split outside its validations).
VALIDATE = """
import json, sys
import prepare
from harness import runtime
runtime.configure_ultralytics()
from ultralytics import YOLO
m = YOLO(sys.argv[1]).val(data=sys.argv[2], split="val", device="cpu", plots=False, project=sys.argv[3],
                          name="v")
print("METRICS " + json.dumps({k: float(v) for k, v in m.results_dict.items()}))
"""


def pytest_sessionfinish(session, exitstatus):
    """The private cache goes with the session: a suite run leaves nothing in the temporary folder."""
    shutil.rmtree(CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped, with the reason shown, where PyTorch sees no CUDA device."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run `uv run pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_data():
    """A small synthetic dataset in the Kaggle layout, generated once; tests must not modify it."""
    root = CACHE / "tiny-ships"
    if not root.exists():
        generate_synthetic(root, TINY, seed=1, workers=2)
    return root


@pytest.fixture(scope="session")
def easy_data():
    """Big bright boxes on a dark background (tests/easy_data.py), generated once:
    a short CPU run learns them."""
    root = CACHE / "easy-ships"
    if not root.exists():
        generate_easy(root)
    return root


@pytest.fixture(scope="session")
def easy_run(easy_data, tmp_path_factory):
    """One real run of train.py on the easy data, in a checkout committed first: its metrics are well above 0,
    so comparing them means something; its record holds the baseline, with its weights archived as
    record/best/0001.pt. Shared by the tests that need a trained model: they must not change it. Returns
    (repo, log)."""
    repo = make_repo(tmp_path_factory.mktemp("easy"), knobs=EASY_KNOBS)
    commit_all(repo)
    rc, log = run_train(repo, easy_data / "data.yaml", budget=EASY_BUDGET)
    assert rc == 0, log[-3000:]
    assert (repo / "record" / "best" / "0001.pt").is_file()
    return repo, log


@pytest.fixture
def dataset(tiny_data, tmp_path):
    """A private copy of the tiny dataset that a test may break."""
    return Path(shutil.copytree(tiny_data, tmp_path / "ships-aerial-images"))


def make_repo(tmp_path, knobs=None, call_extra="", before_train="", after_train="", name="repo"):
    """A copy of prepare.py, harness/ and train.py in tmp_path/<name>, with knobs set, extra arguments
    added to model.train(...), and optional lines inserted before model.train(...) or
    prepare.finish(model), each by harness/knobs.py's checked edits (one that matches no line fails)."""
    repo = tmp_path / name
    repo.mkdir(exist_ok=True)
    shutil.copy(REPO / "prepare.py", repo / "prepare.py")
    shutil.copytree(REPO / "harness", repo / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    text = edit_knobs((REPO / "train.py").read_text(), {**FAST_KNOBS, **(knobs or {})})
    if call_extra:
        text = add_arguments(text, call_extra)
    if before_train:
        text = insert(text, "model = YOLO(run.weights)\n", f"{before_train}\n")
    if after_train:
        text = insert(text, "\nprepare.finish(model)", f"\n{after_train}", after=False)
    (repo / "train.py").write_text(text)
    return repo


def git(repo, *args):
    """git in repo (as a user named t); returns its output. A failing git command fails the test."""
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          capture_output=True, text=True, check=True, timeout=300).stdout


def commit_all(repo, message="baseline"):
    """repo as the agent's checkout: a git repository with the project's .gitignore, everything committed.
    Returns the commit."""
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    if not (repo / ".git").is_dir():
        git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()


def communicate_or_fail(proc, timeout, what):
    """(stdout, stderr) of proc, started in a session of its own, once it exits. Past timeout the whole
    session is killed and the test fails with `what` and the end of the output."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{what}:\n{(out or '')[-2000:]}{(err or '')[-2000:]}")


def validate_independently(repo, data_yaml, folder):
    """Ultralytics' own validation of a run's best.pt with its default settings, in a process of its own,
    after the run. Returns its metrics by Ultralytics' keys."""
    out = subprocess.run([sys.executable, "-c", VALIDATE, str(repo / "run" / "weights" / "best.pt"),
                          str(data_yaml), str(folder)], cwd=repo, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(next(line[8:] for line in out.stdout.splitlines() if line.startswith("METRICS ")))


def run_train(repo, data_yaml=None, budget=3, env=None, timeout=600):
    """Run train.py like the agent does (stdout and stderr into one log); returns (exit code, log). A run
    still going after `timeout` seconds is a hang: it gets SIGTERM, as from `timeout 600 uv run train.py` (the
    harness then stops its DDP workers too), and the test fails."""
    full_env = {**os.environ, "AUTORESEARCH_TIME_BUDGET": str(budget), **(env or {})}
    full_env.pop("PYTEST_CURRENT_TEST", None)  # else Ultralytics writes its runs into its own tests/ folder
    if data_yaml is not None:
        full_env["YOLO_DATA"] = str(data_yaml)
    log = repo / "run.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "train.py"], cwd=repo, env=full_env, stdout=f,
                                stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_run(proc)
            pytest.fail(f"train.py hung: still running after {timeout} s, stopped. The log ends:\n"
                        f"{log.read_text()[-3000:]}")
        finally:
            if proc.poll() is None:  # the test itself was stopped (pytest-timeout, Ctrl-C): the run goes too
                stop_run(proc)
    return proc.returncode, log.read_text()


def stop_run(proc):
    """Stop a train.py process as `timeout` would (SIGTERM: the harness stops its DDP workers), then kill, by
    id, whatever it started that is still there: torch.distributed.run starts each worker in a session of its
    own, so a worker stuck in a collective can outlive the harness's stop of the run's process group."""
    tree = descendants(proc.pid)
    supervisor.stop(proc, 90)  # the harness gives DDP workers 30 s after SIGTERM, then kills them
    proc.wait()
    for pid, started in tree:
        kill_if_same(pid, started)


def _stat(pid):
    """(parent id, start time) of a process, from /proc; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[19]


def descendants(pid):
    """[(id, start time)] of every process below pid: its children, theirs, and so on."""
    stats = {int(p.name): _stat(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}
    tree, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, stat in stats.items():
            if stat and stat[0] == parent:
                tree.append((child, stat[1]))
                todo.append(child)
    return tree


def kill_if_same(pid, started):
    """SIGKILL a process, unless it has exited (and its id was perhaps reused since)."""
    stat = _stat(pid)
    if stat and stat[1] == started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def snapshot(*folders, leave_out=()):
    """Every file below the folders, with its size and mtime, but those under a top folder named in
    leave_out."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for folder in folders for p in Path(folder).rglob("*")
            if p.is_file() and not set(p.relative_to(folder).parts[:1]) & set(leave_out)}


def gpu_pipeline(args, data_yaml, device="cpu", fits_on_gpu=None):
    """Ultralytics' augmenting training dataset over data_yaml's train split, as prepare.Trainer builds it,
    and the GPU pipeline's over the same files on `device`: (dataset, GpuDataset)."""
    from copy import copy

    import torch

    from harness import runtime
    from harness.gpu_data import GpuDataset
    runtime.configure_ultralytics()
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    data = check_det_dataset(str(data_yaml))
    dataset = build_yolo_dataset(args, data["train"], 16, data, mode="train", stride=32)
    return dataset, GpuDataset(dataset, copy(args), torch.device(device), fits_on_gpu)


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
