"""The Ray side of the experiment queue (harness/queue.py is the checkout's side): `Queue`, the detached actor
of one checkout that owns its experiments and keeps each one's log and result until the checkout collects
them, and `run_experiment`, the task that runs one experiment on a worker: the commit's files synced into a
slot folder of the checkout on that node, the checkout's record copied in, `python train.py` run there exactly
as a direct run. A slot keeps its run/ folder and unchanged files between experiments, as a checkout does
between direct runs, so label caches and compiled modules stay warm.

Only the standard library and Ray: Ray sends this module's code by value, so a worker imports nothing of
the checkout; it needs the locked environment (this venv's Python runs the Ray worker and train.py).
"""

import asyncio
import fcntl
import filecmp
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

LOG_EVERY = 2.0        # seconds between the log's chunks to the actor: a lost worker loses at most these
WORK_ROOT = Path(tempfile.gettempdir()) / "autoresearch-queue"  # slots: <checkout>-<n>/, <checkout>-<n>.lock
FORWARDED_ENV = ("YOLO_DATA", "AUTORESEARCH_TIME_BUDGET")  # the submitter's, given to train.py
FILES = ".queue-files"  # in a slot: the commit's files synced there last, one path a line
# train.py's process gets SIGTERM when the worker that started it dies (PR_SET_PDEATHSIG survives exec):
# the supervisor turns it into a clean stop of its child, so no run outlives its Ray task.
LAUNCH = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
          "os.getppid() == int(sys.argv[1]) or sys.exit(1); "  # the worker died before prctl
          "os.execv(sys.executable, [sys.executable, 'train.py'])")

# ---------------------------------------------------------------------------
# What travels
# ---------------------------------------------------------------------------


@dataclass
class Experiment:
    """One submitted commit, as the worker gets it."""
    id: str
    commit: str
    checkout: str          # the submitting checkout, as a name for its slots on a node
    archive: bytes         # `git archive` of the commit: a tar of its tracked files
    record: bytes          # the checkout's record/runs.jsonl at submit: the night's baseline comes first
    gpus: int              # whole GPUs, as many as DEVICE names (0: DEVICE = "cpu")
    data_dir: str = ""     # the checkout's ships-aerial-images/, linked into the copy ("": none there)
    env: dict = field(default_factory=dict)   # YOLO_DATA, AUTORESEARCH_TIME_BUDGET as submitted
    datasets: dict = field(default_factory=dict)  # record/datasets/: {name: bytes}, the baseline's file list


@dataclass
class Result:
    """How an experiment ended: train.py's exit code and record line, or `error` for one that never ended
    (a lost worker, a cancel); best.pt's bytes for a run with a summary; the copy's record/datasets/ files."""
    id: str
    code: int
    record_line: dict = None
    best_pt: bytes = None
    error: str = None
    datasets: dict = None


@dataclass
class Job:
    """The actor's view of one experiment. state: queued, running or finished."""
    id: str
    commit: str
    submitted: float
    state: str = "queued"
    node: str = ""
    node_id: str = ""
    gpus: list = field(default_factory=list)
    folder: str = ""       # the slot it runs in, on its node
    log: list = field(default_factory=list)
    result: Result = None
    cancelled: bool = False


# ---------------------------------------------------------------------------
# The actor: one per checkout, detached, so experiments outlive the command that submitted them
# ---------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class Queue:
    def __init__(self):
        self.jobs, self.refs, self.event, self.changes = {}, {}, asyncio.Event(), 0

    async def submit(self, exp):
        """Queue one experiment; Ray starts it when its GPUs are free. Returns its id."""
        self.jobs[exp.id] = Job(exp.id, exp.commit, time.time())
        me = ray.get_runtime_context().current_actor
        task = run_experiment.options(num_gpus=exp.gpus, num_cpus=1, max_retries=0)
        self.refs[exp.id] = task.remote(exp, me)
        asyncio.get_running_loop().create_task(self._watch(exp.id))
        return exp.id

    async def _watch(self, id):
        job = self.jobs[id]
        try:
            job.result = await self.refs[id]
        except Exception as e:  # the task never returned: cancelled, failed, or its worker or node is gone
            error = f"experiment {id} {unfinished(job, e)}: submit it again to run it"
            job.result = Result(id, 1, error=error)
        job.state = "finished"
        del self.refs[id]
        self._changed()

    def _changed(self):
        self.changes += 1
        self.event.set()
        self.event = asyncio.Event()

    async def started(self, id, node, node_id, gpus, folder):
        job = self.jobs[id]
        job.node, job.node_id, job.gpus, job.folder = node, node_id, gpus, folder
        if job.state == "queued":  # an async actor may run this call after the task's end
            job.state = "running"
        self._changed()

    async def log(self, id, number, text):
        self.jobs[id].log.append((number, text))

    async def jobs_now(self):
        """[Job] without logs and results, oldest first."""
        return [Job(j.id, j.commit, j.submitted, j.state, j.node, j.node_id, j.gpus, folder=j.folder)
                for j in self.jobs.values()]

    async def finished(self):
        """[(Job, log text)] of the finished experiments the checkout has not acknowledged."""
        return [(j, "".join(text for _, text in sorted(j.log))) for j in self.jobs.values()
                if j.state == "finished"]

    async def acknowledge(self, ids):
        for id in ids:
            self.jobs.pop(id, None)

    async def cancel(self, id):
        """Cancel a queued or running experiment (its worker is killed: train.py gets SIGTERM). Returns
        whether it was still in flight."""
        if id not in self.refs:
            return False
        self.jobs[id].cancelled = True
        ray.cancel(self.refs[id], force=True)
        return True

    async def changed_since(self, seen, timeout):
        """Wait until an experiment starts or ends after the count of changes was `seen` (no wait if one has),
        or for timeout seconds. Returns the count of changes now."""
        if self.changes == seen:
            try:
                await asyncio.wait_for(self.event.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return self.changes

    async def count_changes(self):
        return self.changes


def unfinished(job, error):
    """How an experiment whose task raised `error` ended, for its `error:` line."""
    where = f" on {job.node}" if job.node else ""
    if job.cancelled:
        return "was cancelled (prepare.py cancel) before it ended"
    if isinstance(error, ray.exceptions.RayTaskError):  # the task's own code failed, e.g. a full disk
        return f"failed in its Ray task{where} ({type(error.cause).__name__}: {error.cause})"
    return f"was lost with its Ray worker{where} ({type(error).__name__})"


# ---------------------------------------------------------------------------
# The task: one experiment on one worker
# ---------------------------------------------------------------------------


@ray.remote(max_retries=0)
def run_experiment(exp, queue):
    """Run exp's train.py in a free slot of its checkout, synced to its commit; returns its Result. The log
    goes to the actor in chunks as it comes."""
    context = ray.get_runtime_context()
    node = f"{os.uname().nodename} ({ray.util.get_node_ip_address()})"
    work, lock = take_slot(exp.checkout)
    queue.started.remote(exp.id, node, context.get_node_id(), [int(g) for g in ray.get_gpu_ids()], str(work))
    with lock:
        sync(exp, work)
        queue.log.remote(exp.id, 0, f"queue: experiment {exp.id}, commit {exp.commit}, on {node} in {work}, "
                                    f"with {sys.executable}\n" + niceness_warning())
        env = train_env(dict(os.environ), exp.env)
        # train.py holds the slot's lock too, so a slot whose worker died is not taken until its run ends
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(os.getpid())], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                pass_fds=[lock.fileno()])
        chunk, sent, number = [], time.time(), 1
        for line in proc.stdout:
            chunk.append(line)
            if time.time() - sent > LOG_EVERY:
                queue.log.remote(exp.id, number, "".join(chunk))
                chunk, sent, number = [], time.time(), number + 1
        code = proc.wait()
        ray.get(queue.log.remote(exp.id, number, "".join(chunk)))  # the whole log is there before the result
        line = worker_line(work, exp.record)
        best = work / "run" / "weights" / "best.pt"
        best_pt = best.read_bytes() if line and line.get("summary") and best.is_file() else None
        return Result(exp.id, code, line, best_pt, datasets=dataset_lists(work / "record"))


def train_env(worker_env, submitted):
    """train.py's environment: the worker's, less Ray's OMP_NUM_THREADS=1 (its num_cpus; a direct run has the
    machine's threads) and the FORWARDED_ENV that the command which started Ray had, plus the submitter's."""
    dropped = ("OMP_NUM_THREADS", *FORWARDED_ENV)
    return {**{k: v for k, v in worker_env.items() if k not in dropped}, **submitted}


def niceness_warning():
    """A log line when this worker, and so train.py, runs at a lower priority than a direct run (Ray's
    default niceness for workers is 15; a process cannot lower its own niceness); else ""."""
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if not niceness:
        return ""
    return (f"WARNING: this Ray worker and train.py run at niceness {niceness}, below a direct run: start "
            "Ray with RAY_worker_niceness=0 in its environment (README, Beyond one GPU)\n")


def take_slot(checkout):
    """(folder, lock file) of the checkout's first slot on this node that no run holds, locked now."""
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():
        lock = open(WORK_ROOT / f"{checkout}-{n}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return WORK_ROOT / f"{checkout}-{n}", lock
        except BlockingIOError:
            lock.close()


def sync(exp, work):
    """work/ as the commit's files (unchanged ones untouched, so their compiled modules stay valid; run/ and
    other untracked files kept), the checkout's record in work/record/, its dataset folder linked."""
    fresh = work.with_name(work.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(exp.archive)) as tar:
        tar.extractall(fresh, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(fresh)
    data = work / "ships-aerial-images"
    if data.is_symlink():  # never write the commit's files into the checkout's dataset
        data.unlink()
    files = {str(p.relative_to(fresh)) for p in fresh.rglob("*") if not p.is_dir()}
    listed = work / FILES
    for gone in set(listed.read_text().splitlines() if listed.is_file() else ()) - files:
        (work / gone).unlink(missing_ok=True)
    for name in files:
        if not ((work / name).is_file() and filecmp.cmp(fresh / name, work / name, shallow=False)):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(fresh / name, work / name)
    listed.write_text("\n".join(sorted(files)))
    shutil.rmtree(fresh)
    shutil.rmtree(work / "record", ignore_errors=True)
    (work / "record" / "datasets").mkdir(parents=True)
    (work / "record" / "runs.jsonl").write_bytes(exp.record)
    for name, data_file in exp.datasets.items():  # for an error line that names the files that differ
        (work / "record" / "datasets" / name).write_bytes(data_file)
    if exp.data_dir:  # missing on this node: the run's own dataset check ends it with an error line
        shutil.rmtree(data, ignore_errors=True)
        data.symlink_to(exp.data_dir)


def dataset_lists(record_dir):
    """{name: bytes} of a record folder's datasets/ files: the night's dataset file lists."""
    return {p.name: p.read_bytes() for p in (Path(record_dir) / "datasets").glob("*.json")}


def worker_line(work, seeded):
    """The line the worker's supervisor appended to the copy's record; None if it wrote none."""
    lines = (work / "record" / "runs.jsonl").read_bytes().splitlines() if (work / "record").is_dir() else []
    fresh = lines[len(seeded.splitlines()):]
    try:
        return json.loads(fresh[-1]) if fresh else None
    except ValueError:
        return None

