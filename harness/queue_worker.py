"""The Ray side of the experiment queue (harness/queue.py is the checkout's side): `Queue`, the detached actor
of one checkout that owns its experiments and keeps each one's log and result until the checkout collects
them, and `run_experiment`, the task that runs one experiment on a worker: the commit's files unpacked in a
temporary folder, the checkout's record copied in, `python train.py` run there exactly as a direct run.

Only the standard library and Ray: Ray sends this module's code by value, so a worker imports nothing of
the checkout; it needs the locked environment (this venv's Python runs the Ray worker and train.py).
"""

import asyncio
import io
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
WORK_ROOT = Path(tempfile.gettempdir()) / "autoresearch-queue"  # a worker's copies: <id>-<worker pid>/
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
    log: list = field(default_factory=list)
    result: Result = None
    cancelled: bool = False


# ---------------------------------------------------------------------------
# The actor: one per checkout, detached, so experiments outlive the command that submitted them
# ---------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class Queue:
    def __init__(self):
        self.jobs, self.refs, self.event = {}, {}, asyncio.Event()

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
        except Exception as e:  # the task never returned: cancelled, or its worker or node is gone
            where = f" on {job.node}" if job.node else ""
            why = ("cancelled (prepare.py cancel) before it ended" if job.cancelled else
                   f"lost with its Ray worker{where} ({type(e).__name__})")
            job.result = Result(id, 1, error=f"experiment {id} was {why}: submit it again to run it")
        job.state = "finished"
        del self.refs[id]
        self._changed()

    def _changed(self):
        self.event.set()
        self.event = asyncio.Event()

    async def started(self, id, node, node_id, gpus):
        job = self.jobs[id]
        job.node, job.node_id, job.gpus = node, node_id, gpus
        if job.state == "queued":  # an async actor may run this call after the task's end
            job.state = "running"
        self._changed()

    async def log(self, id, number, text):
        self.jobs[id].log.append((number, text))

    async def jobs_now(self):
        """[Job] without logs and results, oldest first."""
        return [Job(j.id, j.commit, j.submitted, j.state, j.node, j.node_id, j.gpus)
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

    async def wait_change(self, timeout):
        """Return when an experiment starts or ends, or after timeout seconds."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except asyncio.TimeoutError:
            pass


# ---------------------------------------------------------------------------
# The task: one experiment on one worker
# ---------------------------------------------------------------------------


@ray.remote(max_retries=0)
def run_experiment(exp, queue):
    """Run exp's train.py in a fresh copy of its commit; returns its Result. The log goes to the actor in
    chunks as it comes."""
    context = ray.get_runtime_context()
    node = f"{os.uname().nodename} ({ray.util.get_node_ip_address()})"
    queue.started.remote(exp.id, node, context.get_node_id(), [int(g) for g in ray.get_gpu_ids()])
    remove_leftovers()
    work = WORK_ROOT / f"{exp.id}-{os.getpid()}"
    try:
        unpack(exp, work)
        queue.log.remote(exp.id, 0, f"queue: experiment {exp.id}, commit {exp.commit}, on {node} in {work}\n")
        # Ray gives a worker OMP_NUM_THREADS=1 (its num_cpus): a direct run has the machine's threads
        env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, **exp.env}
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(os.getpid())], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
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
        datasets = {p.name: p.read_bytes() for p in (work / "record" / "datasets").glob("*.json")}
        return Result(exp.id, code, line, best_pt, datasets=datasets)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unpack(exp, work):
    """The commit's files in work/, the checkout's record in work/record/, its dataset folder linked."""
    work.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(exp.archive)) as tar:
        tar.extractall(work, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(work)
    (work / "record").mkdir(exist_ok=True)
    (work / "record" / "runs.jsonl").write_bytes(exp.record)
    for name, data in exp.datasets.items():  # for an error line that names the files that differ
        (work / "record" / "datasets").mkdir(exist_ok=True)
        (work / "record" / "datasets" / name).write_bytes(data)
    if exp.data_dir:  # missing on this node: the run's own dataset check ends it with an error line
        shutil.rmtree(work / "ships-aerial-images", ignore_errors=True)
        (work / "ships-aerial-images").symlink_to(exp.data_dir)


def worker_line(work, seeded):
    """The line the worker's supervisor appended to the copy's record; None if it wrote none."""
    lines = (work / "record" / "runs.jsonl").read_bytes().splitlines() if (work / "record").is_dir() else []
    fresh = lines[len(seeded.splitlines()):]
    try:
        return json.loads(fresh[-1]) if fresh else None
    except ValueError:
        return None


def remove_leftovers():
    """Remove the copies of experiments whose worker was killed (its pid is gone), on this node."""
    for folder in WORK_ROOT.glob("*-*") if WORK_ROOT.is_dir() else []:
        pid = folder.name.rsplit("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)

