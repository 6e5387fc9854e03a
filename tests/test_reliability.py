"""Behaviour over a night: faults end with one `error:` line, and nothing is lost or left behind."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from conftest import assert_failed, commit_all, git, make_repo, run_train, snapshot, summary_of
from harness.dataset import check_dataset


def disk_use(folder):
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def test_nan_loss_stops_the_run_at_once(tiny_data, tmp_path):
    repo = make_repo(tmp_path, call_extra="box=float('nan')")
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=30)
    assert_failed(rc, log, "error: loss is nan in epoch 1: the training diverged")


def test_disk_full_while_saving_a_checkpoint(tiny_data, tmp_path):
    # last.pt points at /dev/full: writing it fails with ENOSPC, as on a full disk
    repo = make_repo(tmp_path, before_train=(
        "model.add_callback('on_train_start', lambda t: (t.wdir / 'last.pt').symlink_to('/dev/full'))"))
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    assert_failed(rc, log, "error: disk full (while writing): free space on the disk")


def test_a_night_of_runs_loses_nothing_and_keeps_disk_use_flat(dataset, tmp_path):
    repo = make_repo(tmp_path)
    commit_all(repo)
    (repo / "results.tsv").write_text("commit\tmetric\tmemory_gb\tstatus\tdescription\n")
    cache = tmp_path / "cache"
    env = {"AUTORESEARCH_CACHE": str(cache)}
    before = snapshot(dataset), git(repo, "status", "--porcelain"), git(repo, "rev-parse", "HEAD")
    sizes, logs, results = [], [], []
    for _ in range(3):
        rc, log = run_train(repo, dataset / "data.yaml", budget=1, env=env)
        assert rc == 0, log[-3000:]
        sizes.append(disk_use(repo) + disk_use(cache))
        logs.append(log)
        results.append((repo / "run" / "results.csv").read_text().splitlines())
    # the label scan costs seconds on a Kaggle-size set: only the first run of a dataset pays it
    assert [log.count("New cache created") for log in logs] == [2, 0, 0]  # train and val
    # the run folder is reused: results.csv holds this run's epochs only
    assert [len(rows) - 1 for rows in results] == [int(summary_of(log)["epoch"]) for log in logs]
    assert results[2][0] == results[0][0]
    assert (snapshot(dataset), git(repo, "status", "--porcelain"), git(repo, "rev-parse", "HEAD")) == before
    assert (repo / "results.tsv").read_text() == "commit\tmetric\tmemory_gb\tstatus\tdescription\n"
    assert list((cache / "labels").glob("*.cache")), "label caches live in the harness cache"
    assert abs(sizes[2] - sizes[1]) < 0.05 * sizes[1], sizes


def test_a_truncated_jpeg_in_a_large_set_warns_and_is_never_rewritten(tmp_path):
    for split, n in (("train", 120), ("valid", 4)):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(tmp_path / split / "images" / f"{i}.jpg"), np.full((64, 64, 3), 2 * i, np.uint8))
            (tmp_path / split / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.3 0.3\n")
    truncated = tmp_path / "train" / "images" / "5.jpg"
    truncated.write_bytes(truncated.read_bytes()[:-40])
    (tmp_path / "data.yaml").write_text("train: train/images\nval: valid/images\nnc: 1\nnames: ['ship']\n")
    original = truncated.read_bytes()
    check_dataset(tmp_path / "data.yaml")  # 1 of 120: a warning, not an error
    rc, log = run_train(make_repo(tmp_path), tmp_path / "data.yaml", budget=1)
    assert rc == 0, log[-3000:]
    assert "WARNING: 1 broken file(s) in train" in log and "truncated JPEG" in log
    assert truncated.read_bytes() == original


def test_two_agents_at_once_do_not_interfere(tiny_data, tmp_path):
    repos = [make_repo(tmp_path, name=f"worktree{i}") for i in (1, 2)]
    env = {**os.environ, "AUTORESEARCH_TIME_BUDGET": "3", "YOLO_DATA": str(tiny_data / "data.yaml"),
           "AUTORESEARCH_CACHE": str(tmp_path / "shared-cache")}
    procs = []
    try:
        for r in repos:
            with open(r / "run.log", "w") as log:
                procs.append(subprocess.Popen([sys.executable, "train.py"], cwd=r, env=env, stdout=log,
                                              stderr=subprocess.STDOUT))
        assert [p.wait(timeout=600) for p in procs] == [0, 0]
    finally:
        for p in procs:  # a run still going when the test failed (a timeout) is stopped, not left behind
            p.kill()
            p.wait(timeout=60)
    for r in repos:
        summary = summary_of((r / "run.log").read_text())
        assert summary["run_dir"] == str(r / "run")
        rows = (r / "run" / "results.csv").read_text().splitlines()
        assert len(rows) - 1 == int(summary["epoch"])
