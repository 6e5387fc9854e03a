"""The run record (harness/record.py): one line for every run, whatever its end, written by the supervisor
alone, surviving git and a second agent; and the bounded archive of the baseline's and the new bests'
weights."""

import hashlib
import multiprocessing
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, commit_all, git, make_repo, run_train, summary_of
from harness import device, record

CHEAP_ERROR = {"CACHE": '"disk"'}  # refused when the trainer is built: a run that ends in seconds
HANG_DEAF_TO_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"


def lines_of(repo):
    return record.read_record(repo / "record" / "runs.jsonl")


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def use_train_py(repo, tmp_path, **edits):
    """Give repo the train.py that make_repo builds with these edits; returns its digest."""
    variant = make_repo(tmp_path, name=f"variant-{len(list(tmp_path.glob('variant-*')))}", **edits)
    shutil.copy(variant / "train.py", repo / "train.py")
    return digest(repo / "train.py")


def test_every_run_leaves_one_record_line_whatever_its_end(tiny_data, tmp_path):
    repo = make_repo(tmp_path)
    ends = [({}, 3), ({"before_train": "raise RuntimeError('boom')"}, 3),
            ({"after_train": HANG_DEAF_TO_SIGTERM}, 2), ({"knobs": CHEAP_ERROR}, 3), ({}, 3)]
    digests, logs = [], []
    for i, (edits, budget) in enumerate(ends):
        digests.append(use_train_py(repo, tmp_path, **edits))
        if i == 4:  # code above `import prepare`: refused before the child starts
            (repo / "train.py").write_text("import os\n" + (repo / "train.py").read_text())
            digests[-1] = digest(repo / "train.py")
        logs.append(run_train(repo, tiny_data / "data.yaml", budget=budget)[1])
        if i == 0:
            trained = device.weights_digest(repo / "run" / "weights" / "best.pt")
    lines = lines_of(repo)
    assert [line["train_py"] for line in lines] == digests
    ok, crash, overrun, refused, first_statement = lines
    assert ok["error"] is None and ok["summary"] == summary_of(logs[0])
    for line, log, start in ((crash, logs[1], "RuntimeError: boom"), (overrun, logs[2], "the run overran"),
                             (refused, logs[3], "cache='disk' writes"),
                             (first_statement, logs[4], f"{repo / 'train.py'} line 1: `import os`")):
        assert line["summary"] is None and line["error"].startswith(start), line["error"]
        assert log.rstrip().splitlines()[-1] == f"error: {line['error']}"
    # the overrun: past the budget, the longest step and the allowance for the checkpoint; SIGKILL followed
    step = float(re.search(r"\(the time budget 2 s, the longest step ([\d.]+) s, 15 s for the checkpoint\)",
                           overrun["error"])[1])
    waited = int(re.search(r"not reached (\d+) s", overrun["error"])[1])
    assert 16 + step <= waited <= 19 + step  # 2 s + 15 s + the step, rounded
    assert all(line["wall_seconds"] > 0 for line in lines[:4]) and first_statement["wall_seconds"] < 5
    assert all(line["commit"] is None for line in lines)  # not a git checkout
    assert ok["knobs"]["IMGSZ"] == 64 and refused["changed"] == {"CACHE": "disk"}
    # the baseline's weights are archived: the weights of that run's best.pt
    assert ok["weights"] == "best/0001.pt"  # relative to the record's folder: a night moved aside keeps it
    assert device.weights_digest(repo / "record" / ok["weights"]) == trained
    assert [line.get("weights") for line in lines[1:]] == [None] * 4


def refused_at_once(repo):
    """Put code above `import prepare` in repo's train.py: its runs end before the child starts, in a second
    or two, and still leave their record line."""
    (repo / "train.py").write_text("import os\n" + (repo / "train.py").read_text())


def test_the_record_survives_git_reset_and_names_the_commit_and_its_edits(tiny_data, tmp_path):
    repo = make_repo(tmp_path)
    refused_at_once(repo)
    first = commit_all(repo)
    run_train(repo, tiny_data / "data.yaml")
    use_train_py(repo, tmp_path, knobs={"IMGSZ": "32"})
    refused_at_once(repo)
    second = commit_all(repo, "imgsz 32")
    run_train(repo, tiny_data / "data.yaml")
    git(repo, "reset", "-q", "--hard", first)
    git(repo, "clean", "-qfd")  # untracked files go; ignored ones, like the record, stay
    use_train_py(repo, tmp_path, knobs={"IMGSZ": "48"})  # not committed
    refused_at_once(repo)
    run_train(repo, tiny_data / "data.yaml")
    git(repo, "checkout", "-q", "train.py")
    run_train(repo, tiny_data / "data.yaml")
    lines = lines_of(repo)
    assert [(line["commit"], line["train_py_changed"]) for line in lines] == \
        [(first, False), (second, False), (first, True), (first, False)]
    assert [line.get("changed") for line in lines] == [None, {"IMGSZ": 32}, {"IMGSZ": 48}, {}]
    assert [line["repeat"] for line in lines] == [0, 0, 0, 1]  # the last is a re-run of the first
    assert git(repo, "status", "--porcelain") == ""  # the record is ignored by git, like results.tsv


def test_two_agents_at_once_each_keep_their_own_record(tiny_data, tmp_path):
    repos = [make_repo(tmp_path, knobs={"IMGSZ": size}, name=f"agent{size}") for size in ("32", "48")]
    for repo in repos:
        refused_at_once(repo)
    env = {**os.environ, "AUTORESEARCH_TIME_BUDGET": "3", "YOLO_DATA": str(tiny_data / "data.yaml")}
    procs = [subprocess.Popen([sys.executable, "train.py"], cwd=r, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT) for r in repos]
    assert [p.wait(300) for p in procs] == [1, 1]
    for r in repos:
        (line,) = lines_of(r)
        assert line["train_py"] == digest(r / "train.py")
        assert line["error"].startswith(f"{r / 'train.py'} line 1")


def append_many(path, n, size):
    for _ in range(n):
        record.append({"train_py": "same", "knobs": {}, "summary": None, "error": "x" * size}, path=path)


def test_appends_from_several_supervisors_at_once_are_whole_lines_in_order(tmp_path):
    path = tmp_path / "record" / "runs.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=append_many, args=(path, 25, 100_000)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    lines = record.read_record(path)
    assert len(lines) == 100 and len(path.read_text().splitlines()) == 100
    assert [line["repeat"] for line in lines] == list(range(100))  # each saw every line before its own


def add_digests(path, worker, n):
    device.TRAINED_DIGESTS = path
    for i in range(n):
        device.add_trained_digests({f"{worker}-{i}"})


def test_runs_that_end_at_once_each_keep_their_weights_digests(tmp_path, monkeypatch):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=add_digests, args=(tmp_path / "trained.txt", w, 200)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    monkeypatch.setattr(device, "TRAINED_DIGESTS", tmp_path / "trained.txt")
    device.add_trained_digests({"0-0", "new"})  # one it has, one it lacks
    assert sorted((tmp_path / "trained.txt").read_text().split()) == sorted(
        [f"{w}-{i}" for w in range(4) for i in range(200)] + ["new"])


def fake_run(fitness):
    return {"train_py": f"t{fitness}", "knobs": {}, "summary": {"fitness": f"{fitness:.6f}"}, "error": None}


@pytest.mark.parametrize("max_files, max_mb, left", [(3, 100, ["0001.pt", "0005.pt", "0006.pt"]),
                                                     (20, 2.5, ["0001.pt", "0006.pt"])])
def test_the_archive_keeps_the_baseline_and_the_newest_bests_within_its_bounds(tmp_path, monkeypatch,
                                                                                 max_files, max_mb, left):
    monkeypatch.setattr(record, "ARCHIVE_MAX_FILES", max_files)
    monkeypatch.setattr(record, "ARCHIVE_MAX_MB", max_mb)
    path, best = tmp_path / "record" / "runs.jsonl", tmp_path / "best.pt"
    folder, archived = path.parent / "best", []
    for n, fitness in enumerate([0.50, 0.40, 0.55, 0.55, 0.60, 0.70, 0.65], start=1):
        best.write_bytes(bytes([n]) * 2**20)  # 1 MiB
        archived.append(record.append(fake_run(fitness), best, path).get("weights"))
        kept = sorted(folder.glob("*"))
        assert len(kept) <= max_files and sum(p.stat().st_size for p in kept) <= max_mb * 2**20
        assert kept[0].name == "0001.pt"
    assert [a is not None for a in archived] == [True, False, True, False, True, True, False]
    assert sorted(p.name for p in folder.glob("*")) == left
    assert (folder / "0006.pt").read_bytes() == bytes([6]) * 2**20


@pytest.mark.parametrize("source, knobs", [
    ('"""doc"""\nimport prepare\nA = 1\nB, C = 0.5, "x"\nD = [0, 1]\nE = f(2)\nlower = 3\n',
     {"A": 1, "B": 0.5, "C": "x", "D": [0, 1], "E": "f(2)"}),
])
def test_the_knobs_are_train_pys_upper_case_assignments(source, knobs):
    assert record.knobs_of(source) == knobs


def test_the_shipped_train_py_knobs_are_what_the_record_reads():
    knobs = record.knobs_of((REPO / "train.py").read_text())
    assert {"MODEL", "IMGSZ", "BATCH", "HSV_H", "HSV_S", "HSV_V", "DEVICE"} <= knobs.keys()
    assert knobs["HSV_V"] == 0.4 and knobs["DEVICE"] is None
