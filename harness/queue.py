"""The experiment queue, the checkout's side: one agent keeps N experiments in flight on N GPUs, on this
machine or a Ray cluster, into this checkout's one record. prepare.py's commands submit [COMMIT], wait, list,
cancel ID and stop-ray land here; harness/queue_worker.py is what runs in Ray.

Ray: RAY_ADDRESS names a cluster; without it the first command starts a local Ray head on 127.0.0.1 that owns
this machine's GPUs and outlives the command (`ray start --head --block` in a session of its own), until
stop-ray. Every command first collects the finished experiments: each one's whole log into
record/queue/<id>.log (the newest KEEP kept) and its record line, with the experiment, node and GPUs, into
record/runs.jsonl through record.append. An experiment whose Ray is gone ends there with an `error:` line.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from harness import night, queue_worker, record
from harness.common import CACHE_DIR, REPO_DIR, HarnessError, write_atomic

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

QUEUE_DIR = Path("record") / "queue"   # in the checkout: <id>.json at submit, <id>.log once it ended
KEEP = 200                             # experiments kept in QUEUE_DIR; the oldest finished go first
NAMESPACE = "autoresearch"             # the actors' Ray namespace; one actor per checkout
HEAD_FILE = CACHE_DIR / "ray-head.json"   # the local head this machine's commands share: pid, address
HEAD_START_SECONDS = 60
WAIT_POLL = 30                         # seconds of one wait on the actor before collecting again
LOST = ("experiment {id} was lost with the Ray instance that ran it (restarted or stopped) or its queue "
        "(harness/ changed): submit it again")


class Entry(NamedTuple):
    """One experiment of the checkout as `list` shows it."""
    id: str
    commit: str
    state: str      # queued, running, finished
    node: str
    gpus: list
    end: str        # fitness or the error line, once finished


# ---------------------------------------------------------------------------
# Ray: the cluster and this checkout's actor
# ---------------------------------------------------------------------------


def connect():
    """Connect this process to RAY_ADDRESS's cluster, else to the local head (started if needed)."""
    import ray
    if ray.is_initialized():
        return
    from ray._private import ray_constants
    # Workers run the node's own environment (README: `uv sync` on every node). Under `uv run`, Ray would
    # instead give each job a new venv, built by `uv run` in a copy of this folder.
    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False
    if not os.environ.get("RAY_ADDRESS"):
        on_loopback()
    address = os.environ.get("RAY_ADDRESS") or local_head()
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)


def on_loopback():
    """Keep a local Ray on 127.0.0.1: Ray turns 127.0.0.1 in an address into this machine's outward IP,
    where a loopback head does not listen, unless its switch for one-machine clusters is set (read at
    Ray's import, so also set for the head and the workers it starts)."""
    from ray._private import ray_constants
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def local_head():
    """The address of this machine's local Ray head, started now if none runs."""
    head = json.loads(HEAD_FILE.read_text()) if HEAD_FILE.is_file() else {}
    if head and Path(f"/proc/{head['pid']}").exists():
        return head["address"]
    port = free_port()
    HEAD_FILE.parent.mkdir(parents=True, exist_ok=True)
    log = open(HEAD_FILE.with_suffix(".log"), "w")
    # RAY_worker_niceness: train.py runs at a direct run's priority (Ray starts its workers at niceness 15)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
                             "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "RAY_worker_niceness": "0"})
    address = f"127.0.0.1:{port}"
    deadline = time.time() + HEAD_START_SECONDS
    while "Ray runtime started" not in HEAD_FILE.with_suffix(".log").read_text():
        if proc.poll() is not None or time.time() > deadline:
            raise HarnessError(f"the local Ray head did not start (see {log.name}); or set RAY_ADDRESS to "
                               "a running cluster")
        time.sleep(0.5)
    write_atomic(HEAD_FILE, json.dumps({"pid": proc.pid, "address": address}).encode())
    return address


def free_port():
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_local_head():
    """Stop the local head (its experiments are then lost). Returns its pid, or None when none ran."""
    head = json.loads(HEAD_FILE.read_text()) if HEAD_FILE.is_file() else {}
    HEAD_FILE.unlink(missing_ok=True)
    if not head or not Path(f"/proc/{head['pid']}").exists():
        return None
    os.kill(head["pid"], signal.SIGTERM)  # `ray start --block` stops every Ray process it started
    for _ in range(60):
        if not Path(f"/proc/{head['pid']}").exists():
            break
        time.sleep(0.5)
    return head["pid"]


def queue_actor(repo):
    """This checkout's Queue actor, created on the head node if it is not there (a new Ray knows nothing):
    worker nodes may come and go in the night, the head stays."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    ray.cloudpickle.register_pickle_by_value(queue_worker)  # workers need no checkout to run it
    heads = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]]
    head = heads[0] if heads else ray.get_runtime_context().get_node_id()
    return queue_worker.Queue.options(
        name=actor_name(repo), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()


def actor_name(repo):
    """The name of the checkout's actor: the checkout's, and a digest of queue_worker.py, whose code an actor
    keeps from when it was made: after a change of the harness the next command makes a new actor, and the
    old one's experiments end as lost ones do."""
    code = hashlib.sha1(Path(queue_worker.__file__).read_bytes()).hexdigest()[:8]
    return f"queue-{checkout_name(repo)}-{code}"


# ---------------------------------------------------------------------------
# Submit
# ---------------------------------------------------------------------------


def git(repo, *args):
    """git's output in repo; a failure is a HarnessError with git's message."""
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=60)
    if proc.returncode:
        raise HarnessError(f"git {' '.join(args)} in {repo}: {proc.stderr.decode().strip()}")
    return proc.stdout


def gpus_needed(device):
    """Whole GPUs an experiment takes for train.py's DEVICE: None one, "cpu" none, [0, 1] two. Ray picks
    the cards, so DEVICE counts them from 0."""
    if device is None:
        return 1
    if device == "cpu":
        return 0
    ids = device if isinstance(device, list) else [device]
    if sorted(ids) != list(range(len(ids))):
        raise HarnessError(f"DEVICE = {device!r} in train.py: in the queue Ray picks the GPUs, counted "
                           "from 0; use None (one GPU), [0, 1] (two) or \"cpu\", commit, and submit again")
    return len(ids)


def check_cluster(gpus):
    """An error when no node of the cluster has `gpus` GPUs (the experiment would wait forever)."""
    import ray
    most = max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
    if gpus > most:
        where = os.environ.get("RAY_ADDRESS") or "the local Ray head"
        raise HarnessError(f"{where} has no node with {gpus} GPU{'s' if gpus > 1 else ''} (the most is "
                           f"{most:g}): add GPU nodes, or set DEVICE = \"cpu\" in train.py to run on the CPU")


def submit(commit="HEAD", repo=REPO_DIR):
    """Queue the committed train.py of `commit` as one experiment; returns its id."""
    repo = Path(repo)
    if subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--", "train.py"]).returncode:
        raise HarnessError(f"{repo / 'train.py'} has uncommitted edits, and an experiment is a commit: "
                           "commit them (git commit -am ...) or drop them (git checkout train.py), then "
                           "submit")
    sha = git(repo, "rev-parse", "--verify", f"{commit}^{{commit}}").decode().strip()
    gpus = gpus_needed(record.knobs_of(git(repo, "show", f"{sha}:train.py")).get("DEVICE"))
    connect()
    collect(repo)
    check_cluster(gpus)
    records = repo / "record" / "runs.jsonl"
    in_flight = [meta["id"] for meta in metas(repo) if "code" not in meta]
    if in_flight and night.baseline(record.read_record(records), "dataset")[1] is None:
        raise HarnessError(f"experiment {in_flight[0]} is the night's baseline and has not ended: wait for "
                           "it (uv run prepare.py wait), then submit; every later experiment is checked "
                           "against its dataset and read-only files, on whatever node it runs")
    data_dir = repo / "ships-aerial-images"
    exp = queue_worker.Experiment(
        id=secrets.token_hex(3), commit=sha, checkout=checkout_name(repo),
        archive=git(repo, "archive", "--format=tar", sha),
        record=records.read_bytes() if records.is_file() else b"", gpus=gpus,
        data_dir=str(data_dir.resolve()) if (data_dir / "data.yaml").is_file() else "",
        env={k: os.environ[k] for k in queue_worker.FORWARDED_ENV if k in os.environ},
        datasets=queue_worker.dataset_lists(repo / "record"))
    import ray
    with locked(repo):  # a collector sees the experiment in the actor and in the checkout, or in neither
        ray.get(queue_actor(repo).submit.remote(exp))
        write_atomic(repo / QUEUE_DIR / f"{exp.id}.json", json.dumps({"id": exp.id, "commit": sha}).encode())
    return exp.id


def checkout_name(repo):
    """The checkout's name on the cluster, for its actor and its slots on the workers: its folder's name and a
    digest of host and path (two machines' checkouts at one path are two checkouts)."""
    key = f"{socket.gethostname()}:{Path(repo).resolve()}".encode()
    return f"{Path(repo).resolve().name}-{hashlib.sha1(key).hexdigest()[:8]}"


# ---------------------------------------------------------------------------
# Collect: finished experiments into the checkout
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def locked(repo):
    """One collector a checkout at a time (two commands never write one experiment twice)."""
    (repo / QUEUE_DIR).mkdir(parents=True, exist_ok=True)
    with open(repo / QUEUE_DIR / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def collect(repo):
    """Land every finished experiment (log, record line) and every lost one; returns [Job] still in flight."""
    import ray
    actor = queue_actor(repo)
    with locked(repo):
        done = ray.get(actor.finished.remote())
        for job, log in done:
            land(repo, job, log)
        ray.get(actor.acknowledge.remote([job.id for job, _ in done]))
        jobs = ray.get(actor.jobs_now.remote())
        known = {job.id for job in jobs}
        for meta in metas(repo):
            if meta["id"] not in known and "code" not in meta:  # its Ray is gone, and the actor with it
                error = LOST.format(id=meta["id"])
                land(repo, queue_worker.Job(meta["id"], meta["commit"], 0, "finished",
                                            result=queue_worker.Result(meta["id"], 1, error=error)), "")
        prune(repo)
    return jobs


def metas(repo):
    """The checkout's experiments as submit and land wrote them, oldest first."""
    paths = sorted((repo / QUEUE_DIR).glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text()) for p in paths]


def land(repo, job, log):
    """Write a finished experiment's log (its `error:` line last for one that never ended) and its record
    line, and mark it finished in its <id>.json."""
    result, folder = job.result, repo / QUEUE_DIR
    if result.error:
        log += f"error: {result.error}\n"
    write_atomic(folder / f"{job.id}.log", log.encode())
    for name, data in (result.datasets or {}).items():  # the dataset's file list, for the night's checks
        if not (repo / "record" / "datasets" / name).is_file():
            write_atomic(repo / "record" / "datasets" / name, data)
    line = record_line(repo, job, end_of(log))
    with tempfile.TemporaryDirectory() as tmp:
        best = Path(tmp) / "best.pt"
        if result.best_pt:
            best.write_bytes(result.best_pt)
        record.append(line, best if result.best_pt else None, path=repo / "record" / "runs.jsonl")
    meta = {"id": job.id, "commit": job.commit, "node": job.node, "gpus": job.gpus, "code": result.code,
            "end": end_of(log), "shown": False}
    write_atomic(folder / f"{job.id}.json", json.dumps(meta).encode())


def record_line(repo, job, last):
    """The experiment's record line before record.append: the worker supervisor's, else one made here
    with the error: the queue's, or the log's last line (`last`: a train.py that never imported prepare
    ends with Python's SyntaxError), plus experiment, node and gpus."""
    result = job.result
    with tempfile.TemporaryDirectory() as tmp:
        train_py = Path(tmp) / "train.py"
        train_py.write_bytes(git(repo, "show", f"{job.commit}:train.py"))
        error = result.error or last.removeprefix("error: ") or f"train.py ended with exit code {result.code}"
        made = record.describe_run(train_py, 0.0, None, error)
    line = dict(result.record_line or made)
    for key in ("repeat", "changed", "weights"):  # append() works these out again against this record
        line.pop(key, None)
    line.update(knobs=made["knobs"], commit=job.commit, train_py_changed=False, experiment=job.id,
                node=job.node, gpus=job.gpus)
    return line


def end_of(log):
    """`fitness: ...` of a run with a summary, else its last line (the error)."""
    lines = log.rstrip().splitlines()
    fitness = [line for line in lines if line.startswith("fitness:")]
    return fitness[-1] if fitness else (lines[-1] if lines else "")


def prune(repo):
    """Drop the oldest finished experiments' files past KEEP."""
    finished = [m for m in metas(repo) if "code" in m]
    for meta in finished[:max(0, len(metas(repo)) - KEEP)]:
        for suffix in (".json", ".log"):
            (repo / QUEUE_DIR / f"{meta['id']}{suffix}").unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# wait, list, cancel
# ---------------------------------------------------------------------------


def block_of(log, id, commit):
    """What wait prints: a summary's `---` block with experiment and commit added, else those two lines
    and the log's last line (its error)."""
    lines = log.rstrip().splitlines()
    tag = [f"experiment: {id}", f"commit: {commit}"]
    if any(line.startswith("fitness:") for line in lines) and "---" in lines:
        start = len(lines) - 1 - lines[::-1].index("---")
        return "\n".join(lines[start:] + tag)
    return "\n".join(tag + lines[-1:])


def wait(repo=REPO_DIR):
    """Print the next finished experiment's block; returns its exit code, as a direct run's."""
    import ray
    repo = Path(repo)
    connect()
    actor = queue_actor(repo)
    seen = ray.get(actor.count_changes.remote())  # read before collecting: an end in between is not missed
    while True:
        jobs = collect(repo)
        with locked(repo):
            unshown = [m for m in metas(repo) if m.get("shown") is False]
            if unshown:
                meta = unshown[0]
                path = repo / QUEUE_DIR / f"{meta['id']}.json"
                write_atomic(path, json.dumps({**meta, "shown": True}).encode())
                print(block_of(path.with_suffix(".log").read_text(), meta["id"], meta["commit"]))
                return meta["code"]
        if not jobs:
            raise HarnessError("nothing to wait for: no experiment is queued or running; submit one first "
                               "(uv run prepare.py submit)")
        seen = ray.get(actor.changed_since.remote(seen, WAIT_POLL))


def entries(repo=REPO_DIR):
    """[Entry] of the checkout's experiments, oldest first."""
    repo = Path(repo)
    connect()
    jobs = {job.id: job for job in collect(repo)}
    rows = []
    for meta in metas(repo):
        job = jobs.get(meta["id"])
        rows.append(Entry(meta["id"], meta["commit"][:9], job.state if job else "finished",
                          job.node if job else meta.get("node", ""),
                          job.gpus if job else meta.get("gpus", []), meta.get("end", "")))
    return rows


def cancel(id, repo=REPO_DIR):
    """Cancel a queued or running experiment; it ends with an `error:` line that wait prints."""
    import ray
    repo = Path(repo)
    connect()
    actor = queue_actor(repo)
    if not ray.get(actor.cancel.remote(id)):
        raise HarnessError(f"experiment {id} is not queued or running: `uv run prepare.py list` shows them")
    seen = ray.get(actor.count_changes.remote())
    for _ in range(10):  # the worker is killed at once; its end lands in the record here
        if all(job.id != id or job.state == "finished" for job in ray.get(actor.jobs_now.remote())):
            break
        seen = ray.get(actor.changed_since.remote(seen, 3))
    collect(repo)
