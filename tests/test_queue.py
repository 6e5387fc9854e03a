"""The experiment queue on Ray (harness/queue.py): commits run as experiments on a Ray cluster made on this
machine, on loopback only (a head without GPUs and a node with two logical ones: experiments train on the
CPU), each one's log and record line into the submitting checkout; a fault ends one with an `error:` line."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback addresses stay loopback (harness/queue.py)
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from conftest import commit_all, descendants, git, make_repo, seed_grep  # noqa: E402
from harness import queue, queue_worker, record  # noqa: E402
from harness.common import HarnessError, command_line  # noqa: E402

NODE = {"node_ip_address": "127.0.0.1", "object_store_memory": 100_000_000}
BUDGET = "3"


@pytest.fixture(scope="module")
def cluster():
    """A head (no GPU: the actors live there) and a node with two logical GPUs, shared by the file's tests."""
    head = {**NODE, "num_cpus": 1, "num_gpus": 0, "include_dashboard": False}
    c = Cluster(initialize_head=True, head_node_args=head)
    gpu_node = c.add_node(**NODE, num_cpus=2, num_gpus=2)
    os.environ["RAY_ADDRESS"] = c.address
    try:
        queue.connect()
    finally:
        del os.environ["RAY_ADDRESS"]
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
    yield repo
    remove_slots(repo)


def remove_slots(repo):
    """Remove the slots that a test checkout's experiments took on the node (a night's checkout keeps its
    own, but a suite's would pile up in /tmp)."""
    for slot in queue_worker.WORK_ROOT.glob(f"{queue.checkout_name(repo)}-*"):
        if slot.is_dir():
            shutil.rmtree(slot, ignore_errors=True)
        else:
            slot.unlink()


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
    baseline = queue.submit("HEAD", checkout)
    with pytest.raises(HarnessError, match=f"experiment {baseline} is the night's baseline and has not"):
        queue.submit("HEAD", checkout)  # each later experiment is checked against the baseline's dataset
    assert queue.wait(checkout) == 0
    commits = [commit_knob(checkout, "SEED", seed) for seed in (1, 2, 3)]
    ids = [queue.submit(c, checkout) for c in commits]
    states = wait_for(lambda: [e.state for e in queue.entries(checkout)][1:].count("running") == 2
                      and [e.state for e in queue.entries(checkout)][1:])
    assert sorted(states) == ["queued", "running", "running"]
    running = [e for e in queue.entries(checkout) if e.state == "running"]
    assert sorted(g for e in running for g in e.gpus) == [0, 1]  # never one GPU for two
    capsys.readouterr()
    codes = [queue.wait(checkout) for _ in ids]
    blocks = capsys.readouterr().out.split("---\n")[1:]
    logs = {p.name: p.read_text()[-3000:] for p in (checkout / "record" / "queue").glob("*.log")}
    assert codes == [0, 0, 0] and len(blocks) == 3, (blocks, logs)
    lines = record.read_record(checkout / "record" / "runs.jsonl")
    assert lines[0]["experiment"] == baseline
    assert sorted(line["experiment"] for line in lines[1:]) == sorted(ids)
    for line in lines[1:]:
        log = (checkout / "record" / "queue" / f"{line['experiment']}.log").read_text()
        block = next(b for b in blocks if f"experiment: {line['experiment']}\n" in b)
        assert block.startswith("fitness_key: ") and f"commit: {line['commit']}" in block
        assert seed_grep(log)[0] == f"fitness: {line['summary']['fitness']}" and line["error"] is None
        assert line["node"].endswith("(127.0.0.1)") and len(line["gpus"]) == 1
        assert log.startswith(f"queue: experiment {line['experiment']}, ")
        assert f"with {sys.executable}\n" in log  # the node's own environment, not a venv Ray built
        assert log.splitlines()[1].startswith("WARNING: this Ray worker and train.py run at niceness 15,")
        assert line["commit"] == commits[ids.index(line["experiment"])] and line["train_py_changed"] is False
    assert [set(line["changed"]) for line in lines[1:]] == [{"SEED"}] * 3
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


def test_a_slot_holds_the_commit_the_checkouts_record_and_dataset_and_keeps_run_and_unchanged_files(
        checkout, tmp_path):
    (checkout / "train.py").write_text("uncommitted\n")
    data = tmp_path / "data"
    data.mkdir()
    exp = queue_worker.Experiment(id="ab", commit="c", checkout="k", archive=git_bytes(checkout, "archive",
                                  "HEAD"), record=b'{"baseline": 1}\n', gpus=1, data_dir=str(data))
    work = tmp_path / "work"
    queue_worker.sync(exp, work)
    assert (work / "train.py").read_bytes() == git_bytes(checkout, "show", "HEAD:train.py")
    assert (work / "record" / "runs.jsonl").read_bytes() == exp.record  # the night's baseline first
    assert (work / "ships-aerial-images").resolve() == data
    (work / "record" / "runs.jsonl").write_bytes(exp.record + b'{"summary": null}\n')
    assert queue_worker.worker_line(work, exp.record) == {"summary": None}
    (work / "run").mkdir()
    (work / "run" / "labels.cache").write_text("warm")
    os.utime(work / "prepare.py", (1, 1))
    git(checkout, "rm", "-q", "harness/README.md")
    commit_knob(checkout, "SEED", 7)
    exp.archive, exp.record = git_bytes(checkout, "archive", "HEAD"), b""
    queue_worker.sync(exp, work)
    assert (work / "train.py").read_bytes() == git_bytes(checkout, "show", "HEAD:train.py")
    assert not (work / "harness" / "README.md").exists() and (work / "prepare.py").stat().st_mtime == 1
    assert (work / "run" / "labels.cache").read_text() == "warm"
    assert (work / "record" / "runs.jsonl").read_bytes() == b"" and list(data.iterdir()) == []


def test_train_py_gets_the_submitters_data_and_budget_never_those_of_the_command_that_started_ray():
    worker = {"PATH": "/p", "OMP_NUM_THREADS": "1", "AUTORESEARCH_TIME_BUDGET": "7", "YOLO_DATA": "/old.yaml"}
    assert queue_worker.train_env(worker, {"YOLO_DATA": "/d.yaml"}) == {"PATH": "/p", "YOLO_DATA": "/d.yaml"}


def test_a_changed_queue_worker_gets_a_new_actor_which_never_runs_the_old_code(tmp_path, monkeypatch):
    before = queue.actor_name(tmp_path)
    assert before.startswith(f"queue-{queue.checkout_name(tmp_path)}-")
    changed = tmp_path / "queue_worker.py"
    changed.write_bytes(Path(queue_worker.__file__).read_bytes() + b"# changed\n")
    monkeypatch.setattr(queue_worker, "__file__", str(changed))
    assert queue.actor_name(tmp_path) != before


def test_a_slot_that_a_run_holds_is_not_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(queue_worker, "WORK_ROOT", tmp_path)
    first, lock = queue_worker.take_slot("k")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=[lock.fileno()])
    lock.close()  # the run (here: a sleep) still holds it, as train.py holds its slot
    second, other = queue_worker.take_slot("k")
    assert (first.name, second.name) == ("k-0", "k-1")
    holder.kill()
    holder.wait()
    other.close()
    assert queue_worker.take_slot("k")[0].name == "k-0"


def test_without_ray_address_submit_starts_a_local_head_on_loopback_and_stop_ray_stops_it(checkout, tmp_path):
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    commit_knob(checkout, "DEVICE", list(range(16)))  # more GPUs than any machine that runs the tests

    def cli(command):
        return subprocess.run([sys.executable, "prepare.py", command], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=240)
    submit = cli("submit")
    head = json.loads((tmp_path / "cache" / "ray-head.json").read_text())
    try:
        assert head["address"].startswith("127.0.0.1:") and Path(f"/proc/{head['pid']}").exists()
        assert submit.returncode == 1 and submit.stdout.rstrip().splitlines()[-1].startswith(
            "error: the local Ray head has no node with 16 GPUs")
        actors = [pid for pid, _ in descendants(head["pid"]) if command_line(pid).startswith("ray::Queue")]
        # Ray's workers, and train.py, at a direct run's priority
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in actors] == [0]
        assert cli("stop-ray").stdout == f"stopped the local Ray head (pid {head['pid']})\n"
        port = head["address"].split(":")[1]
        wait_for(lambda: not [p for p in Path("/proc").glob("[0-9]*/cmdline") if port in read(p)], 30)
    finally:  # `ray start --block` stops what it started on SIGTERM (SIGKILL would leave them running)
        if Path(f"/proc/{head['pid']}").exists():
            os.kill(head["pid"], signal.SIGTERM)


def read(path):
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_train_py_gets_sigterm_when_the_worker_that_started_it_dies(tmp_path):
    (tmp_path / "train.py").write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (open('stopped', 'w').close(), sys.exit(0)))\n"
        "open('ready', 'w').close()\ntime.sleep(60)\n")
    worker = subprocess.Popen([sys.executable, "-c", "import os, subprocess, sys, time; subprocess.Popen("
                               "[sys.executable, '-c', sys.argv[1], str(os.getpid())]); time.sleep(60)",
                               queue_worker.LAUNCH], cwd=tmp_path)
    wait_for(lambda: (tmp_path / "ready").exists(), 30)
    worker.kill()
    worker.wait()
    wait_for(lambda: (tmp_path / "stopped").exists(), 10)  # the supervisor's clean stop starts here


def test_a_landed_experiment_gets_one_record_line_worked_out_against_this_record(checkout, monkeypatch):
    commit = git(checkout, "rev-parse", "HEAD").strip()
    worker = {"time": "t", "commit": None, "train_py_changed": None, "train_py": "d", "summary": None,
              "error": "boom", "wall_seconds": 1.0, "repeat": 7, "changed": {"X": 1}, "weights": "/w/0001.pt"}
    ends = [(queue_worker.Result("aa", 1, worker), "log\nerror: boom\n"),
            (queue_worker.Result("bb", 1), "  File x\nSyntaxError: invalid syntax\n")]
    for result, log in ends:
        job = queue_worker.Job(result.id, commit, 0, "finished", "n", "", [1], result=result)
        queue.land(checkout, job, log)
    first, second = record.read_record(checkout / "record" / "runs.jsonl")
    assert first["repeat"] == 0 and "changed" not in first and first["knobs"]["IMGSZ"] == 64
    assert (first["error"], first["commit"], first["experiment"], first["node"], first["gpus"]) == \
        ("boom", commit, "aa", "n", [1]) and "weights" not in first
    assert second["error"] == "SyntaxError: invalid syntax" and second["changed"] == {}
    monkeypatch.setattr(queue, "KEEP", 1)
    queue.prune(checkout)
    assert sorted(p.name for p in (checkout / "record" / "queue").iterdir()) == ["bb.json", "bb.log"]


def git_bytes(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True).stdout


def test_wait_prints_the_summary_block_or_the_error_line_last():
    log = "x\n---\nold: 1\n---\nfitness_key: k\nfitness: 0.5\n"
    assert queue.block_of(log, "ab", "c1").splitlines() == ["---", "fitness_key: k", "fitness: 0.5",
                                                            "experiment: ab", "commit: c1"]
    assert queue.block_of("x\nerror: boom\n", "ab", "c1").splitlines() == ["experiment: ab", "commit: c1",
                                                                           "error: boom"]


def test_a_cancelled_or_forgotten_experiment_ends_with_an_error_line_and_its_run_stops(cluster, checkout,
                                                                                      monkeypatch):
    queue.submit("HEAD", checkout)
    assert queue.wait(checkout) == 0  # the night's baseline
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "300")  # both still train when the test ends them
    first, second = queue.submit("HEAD", checkout), queue.submit("HEAD", checkout)
    folders = [wait_for(lambda: work_folder(checkout, id)) for id in (first, second)]
    for folder in folders:
        wait_for(lambda: train_py_pids(folder), 60)
    queue.cancel(second, checkout)
    wait_for(lambda: not train_py_pids(folders[1]), 30)  # the killed worker's train.py stopped too
    # Ray restarted: the checkout's actor is gone, and the tasks it owned with it
    ray.kill(ray.get_actor(queue.actor_name(checkout), namespace=queue.NAMESPACE))
    wait_for(lambda: not train_py_pids(folders[0]), 30)
    assert [e.state for e in queue.entries(checkout)] == ["finished"] * 3
    lines = {line["experiment"]: line for line in record.read_record(checkout / "record" / "runs.jsonl")}
    assert lines[second]["error"] == (f"experiment {second} was cancelled (prepare.py cancel) before it "
                                      "ended: submit it again to run it")
    assert lines[first]["error"] == queue.LOST.format(id=first)
    for id in (first, second):
        log = (checkout / "record" / "queue" / f"{id}.log").read_text()
        assert log.rstrip().splitlines()[-1] == f"error: {lines[id]['error']}" and seed_grep(log) == []


def work_folder(repo, id):
    """The worker's copy of an experiment, from the first line of its log so far."""
    actor = ray.get_actor(queue.actor_name(repo), namespace=queue.NAMESPACE)
    for job in ray.get(actor.jobs_now.remote()):
        if job.id == id and job.state == "running":
            return Path(job.folder)
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


def test_a_worker_whose_dataset_differs_from_the_night_s_baseline_ends_with_an_error_line(
        cluster, dataset, tmp_path, monkeypatch, capsys, request):
    monkeypatch.setenv("YOLO_DATA", str(dataset / "data.yaml"))
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", BUDGET)
    repo = make_repo(tmp_path)
    commit_all(repo)
    request.addfinalizer(lambda: remove_slots(repo))
    queue.submit("HEAD", repo)
    assert queue.wait(repo) == 0  # the night's baseline, on the checkout's dataset
    for sub in ("images", "labels"):  # the node's copy now holds the val split in train/
        for f in (dataset / "valid" / sub).iterdir():
            (dataset / "train" / sub / f"v_{f.name}").write_bytes(f.read_bytes())
    queue.submit("HEAD", repo)
    capsys.readouterr()
    assert queue.wait(repo) != 0
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last.startswith("error: the dataset differs from the night's baseline (")
    assert "added (train/images/v_" in last
    lines = record.read_record(repo / "record" / "runs.jsonl")
    assert lines[1]["error"] == last.removeprefix("error: ") and lines[1]["dataset"] != lines[0]["dataset"]


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


def test_a_task_that_fails_names_its_error_and_a_lost_one_its_worker():
    job = queue_worker.Job("ab12cd", "c0ffee", 0.0, node="n1 (10.0.0.2)")
    try:
        raise OSError(28, "No space left on device")
    except OSError as cause:
        failed = ray.exceptions.RayTaskError("run_experiment", "", cause).as_instanceof_cause()
    assert queue_worker.unfinished(job, failed) == (
        "failed in its Ray task on n1 (10.0.0.2) (OSError: [Errno 28] No space left on device)")
    lost = ray.exceptions.WorkerCrashedError()
    assert queue_worker.unfinished(job, lost) == (
        "was lost with its Ray worker on n1 (10.0.0.2) (WorkerCrashedError)")
