"""The experiment queue on Ray (harness/queue.py): commits run as experiments on a Ray cluster made on this
machine, on loopback only (a head without GPUs and a node with two logical ones: experiments train on the
CPU), each one's log and record line into the submitting checkout; a fault ends one with an `error:` line."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback addresses stay loopback (harness/queue.py)
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from conftest import commit_all, git, make_repo, seed_grep  # noqa: E402
from harness import queue, record  # noqa: E402
from harness.common import HarnessError  # noqa: E402

NODE = {"node_ip_address": "127.0.0.1", "object_store_memory": 100_000_000}
BUDGET = "3"


@pytest.fixture(scope="module")
def cluster():
    """A head (no GPU: the actors live there) and a node with two logical GPUs, shared by the file's tests."""
    head = {**NODE, "num_cpus": 1, "num_gpus": 0, "include_dashboard": False}
    c = Cluster(initialize_head=True, head_node_args=head)
    gpu_node = c.add_node(**NODE, num_cpus=2, num_gpus=2)
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    yield c, gpu_node
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def checkout(tiny_data, tmp_path, monkeypatch):
    """An agent's checkout, its baseline committed; train.py's runs read the tiny data for a few seconds."""
    monkeypatch.setenv("YOLO_DATA", str(tiny_data / "data.yaml"))
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", BUDGET)
    repo = make_repo(tmp_path)
    commit_all(repo)
    return repo


def commit_knob(repo, name, value):
    """Commit train.py with one knob changed; returns the commit."""
    text = (repo / "train.py").read_text()
    lines = [f"{name} = {value}" if line.startswith(f"{name} = ") else line for line in text.splitlines()]
    (repo / "train.py").write_text("\n".join(lines) + "\n")
    return commit_all(repo, f"{name} = {value}")


def wait_for(what, seconds=120):
    """Poll what() until it is true; fails the test after `seconds`."""
    deadline = time.time() + seconds
    while not (value := what()):
        assert time.time() < deadline, f"not reached in {seconds} s: {what.__doc__ or what}"
        time.sleep(0.5)
    return value


def test_two_gpus_run_two_experiments_a_third_waits_and_all_land_in_one_record(cluster, checkout, capsys):
    commits = [commit_knob(checkout, "SEED", seed) for seed in (1, 2, 3)]
    ids = [queue.submit(c, checkout) for c in commits]
    states = wait_for(lambda: [e.state for e in queue.entries(checkout)].count("running") == 2
                      and [e.state for e in queue.entries(checkout)])
    assert sorted(states) == ["queued", "running", "running"]
    running = [e for e in queue.entries(checkout) if e.state == "running"]
    assert sorted(g for e in running for g in e.gpus) == [0, 1]  # never one GPU for two
    capsys.readouterr()
    codes = [queue.wait(checkout) for _ in ids]
    blocks = capsys.readouterr().out.split("---\n")[1:]
    assert codes == [0, 0, 0] and len(blocks) == 3
    lines = record.read_record(checkout / "record" / "runs.jsonl")
    assert sorted(line["experiment"] for line in lines) == sorted(ids)
    for line in lines:
        log = (checkout / "record" / "queue" / f"{line['experiment']}.log").read_text()
        block = next(b for b in blocks if f"experiment: {line['experiment']}\n" in b)
        assert block.startswith("fitness_key: ") and f"commit: {line['commit']}" in block
        assert seed_grep(log)[0] == f"fitness: {line['summary']['fitness']}" and line["error"] is None
        assert line["node"].endswith("(127.0.0.1)") and len(line["gpus"]) == 1
        assert line["commit"] == commits[ids.index(line["experiment"])] and line["train_py_changed"] is False
    assert lines[0]["knobs"]["SEED"] in (1, 2, 3)
    assert [set(line["changed"]) for line in lines[1:]] == [{"SEED"}] * 2
    assert (checkout / "record" / "best" / "0001.pt").is_file()  # the baseline's weights, from the worker
    with pytest.raises(HarnessError, match="nothing to wait for"):
        queue.wait(checkout)


def test_an_uncommitted_train_py_is_refused_with_an_error_line(checkout):
    (checkout / "train.py").write_text((checkout / "train.py").read_text() + "# edit\n")
    proc = subprocess.run([sys.executable, "prepare.py", "submit"], cwd=checkout, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout.rstrip().splitlines()[-1] == (
        f"error: {checkout / 'train.py'} has uncommitted edits, and an experiment is a commit: commit them "
        "(git commit -am ...) or drop them (git checkout train.py), then submit")
    assert not (checkout / "record" / "queue").exists()


@pytest.mark.parametrize("device, gpus", [(None, 1), ("cpu", 0), ([0, 1], 2), (0, 1), (1, None),
                                         ([1, 2], None)])
def test_an_experiment_takes_the_gpus_device_names_counted_from_0(device, gpus):
    if gpus is None:
        with pytest.raises(HarnessError, match="Ray picks the GPUs"):
            queue.gpus_needed(device)
    else:
        assert queue.gpus_needed(device) == gpus


def test_wait_prints_the_summary_block_or_the_error_line_last():
    log = "x\n---\nold: 1\n---\nfitness_key: k\nfitness: 0.5\n"
    assert queue.block_of(log, "ab", "c1").splitlines() == ["---", "fitness_key: k", "fitness: 0.5",
                                                            "experiment: ab", "commit: c1"]
    assert queue.block_of("x\nerror: boom\n", "ab", "c1").splitlines() == ["experiment: ab", "commit: c1",
                                                                           "error: boom"]


def test_a_cancelled_or_forgotten_experiment_ends_with_an_error_line_and_its_run_stops(cluster, checkout,
                                                                                      monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "300")  # both still train when the test ends them
    first, second = queue.submit("HEAD", checkout), queue.submit("HEAD", checkout)
    folders = [wait_for(lambda: work_folder(checkout, id)) for id in (first, second)]
    for folder in folders:
        wait_for(lambda: train_py_pids(folder), 60)
    queue.cancel(second, checkout)
    wait_for(lambda: not train_py_pids(folders[1]), 30)  # the killed worker's train.py stopped too
    # Ray restarted: the checkout's actor is gone, and the tasks it owned with it
    ray.kill(ray.get_actor(actor_name(checkout), namespace=queue.NAMESPACE))
    wait_for(lambda: not train_py_pids(folders[0]), 30)
    assert [e.state for e in queue.entries(checkout)] == ["finished", "finished"]
    lines = {line["experiment"]: line for line in record.read_record(checkout / "record" / "runs.jsonl")}
    assert lines[second]["error"] == (f"experiment {second} was cancelled (prepare.py cancel) before it "
                                      "ended: submit it again to run it")
    assert lines[first]["error"] == queue.LOST.format(id=first)
    for id in (first, second):
        log = (checkout / "record" / "queue" / f"{id}.log").read_text()
        assert log.rstrip().splitlines()[-1] == f"error: {lines[id]['error']}" and seed_grep(log) == []


def actor_name(repo):
    return "queue-" + str(Path(repo).resolve()).replace("/", "_")


def work_folder(repo, id):
    """The worker's copy of an experiment, from the first line of its log so far."""
    actor = ray.get_actor(actor_name(repo), namespace=queue.NAMESPACE)
    for job in ray.get(actor.jobs_now.remote()):
        if job.id == id and job.state == "running":
            return next(Path("/tmp").glob(f"autoresearch-queue/{id}-*"), None)
    return None


def train_py_pids(folder):
    """Processes whose working folder is folder (train.py's supervisor and its child)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(proc / "cwd").resolve() == folder.resolve():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_lost_node_ends_its_experiment_with_an_error_line_then_a_cluster_without_gpus_refuses(cluster,
                                                                                               checkout):
    c, gpu_node = cluster
    id = queue.submit("HEAD", checkout)
    folder = wait_for(lambda: work_folder(checkout, id))
    wait_for(lambda: train_py_pids(folder), 60)
    c.remove_node(gpu_node, allow_graceful=False)
    wait_for(lambda: not train_py_pids(folder), 30)  # no run outlives its worker
    assert queue.wait(checkout) == 1
    line = record.read_record(checkout / "record" / "runs.jsonl")[-1]
    assert line["experiment"] == id
    assert line["error"].startswith(f"experiment {id} was lost with its Ray worker")
    assert line["error"].endswith("submit it again to run it")
    wait_for(lambda: not ray.cluster_resources().get("GPU"), 90)  # Ray's health checks: 15-60 s
    with pytest.raises(HarnessError, match="has no node with 1 GPU"):
        queue.submit("HEAD", checkout)
    assert json.loads((checkout / "record" / "queue" / f"{id}.json").read_text())["code"] == 1
    git(checkout, "status")
