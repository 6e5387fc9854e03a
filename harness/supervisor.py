"""The supervisor: train.py's own process runs train.py again as a child and watches it. The child trains and
reports through a pipe of its own (harness/report.py); the supervisor relays the child's output, holds the
time limits, stops the child's whole process group and what it left running, and leaves the verdict to
prepare.py. Nothing the child does can reach this process.
"""

import ast
import ctypes
import functools
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness import common
from harness.common import HarnessError
from harness.report import CHILD_ENV, REPORT_FD_ENV, Done, is_child, runs_train_py

BUDGET_ENV = "AUTORESEARCH_SUPERVISED_BUDGET"  # the budget the supervisor holds, for the child's guard
STOP_GRACE = 10                           # seconds between SIGTERM and SIGKILL
# The child's own grace for its DDP workers (ddp.train_ddp), added to STOP_GRACE while it has some: killed
# sooner, torchrun could not stop its workers, which run in sessions of their own.
DDP_STOP_GRACE = 30
CHILD_MARK = "train.py| "  # in front of a child's line that could pass for one of the supervisor's last lines
PR_SET_CHILD_SUBREAPER = 36
# After the child's exit, how long the processes it started get to end on their own before they are stopped
# (a DataLoader worker notices its parent is gone within about a second).
LEFTOVER_GRACE = 2


def check_first_statement(train_py):
    """Nothing of train.py may run before the supervisor: its first statement must be `import prepare`, with
    only a docstring, comments and `from __future__` imports above it. Raises HarnessError naming the line."""
    source = Path(train_py).read_text()
    for node in ast.parse(source, str(train_py)).body:
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            continue  # the docstring
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.Import) and [(a.name, a.asname) for a in node.names] == [("prepare", None)]:
            return
        line = ast.get_source_segment(source, node).splitlines()[0][:60]
        raise HarnessError(f"{train_py} line {node.lineno}: `{line}` runs before `import prepare`; "
                           "train.py's first statement must be `import prepare` (only a docstring, comments "
                           "and `from __future__` imports above it): move that line below it")


_WRITE = os.write  # taken when prepare is imported, before any of train.py's own code can run


def say(line):
    """Write one line of the supervisor's own (the summary, an `error:` line) to the log: past print() and
    sys.stdout, straight to file descriptor 1, after whatever is still buffered."""
    sys.stdout.flush()
    data = (line + "\n").encode()
    while data:
        data = data[_WRITE(1, data):]


def is_supervisor(train_py):
    """True in the process that runs this checkout's train.py directly: it supervises, and never trains."""
    return not is_child() and runs_train_py(train_py)


def mark(line, keys):
    """A child's line as the log shows it: marked when it could pass for a summary or error line (keys)."""
    key = line.split(":", 1)[0]
    return CHILD_MARK + line if line.strip() == "---" or (":" in line and key in keys) else line


class Child:
    """train.py run again as the child, in a session of its own, its output relayed line by line, its reports
    collected. `events` holds them in order, each with the supervisor's own time of arrival ("at")."""

    def __init__(self, argv, budget, marked=(), out=sys.stdout):
        read_fd, write_fd = os.pipe()
        env = {**os.environ, CHILD_ENV: "1", REPORT_FD_ENV: str(write_fd), BUDGET_ENV: f"{budget!r}",
               "PYTHONUNBUFFERED": "1"}
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(write_fd,), start_new_session=True)
        os.close(write_fd)
        self.events, self.groups, self.marked, self.out = [], set(), marked, out
        self.leftovers = []  # the processes the child left running, stopped at its end: ['pid (command)']
        self.changed = threading.Condition()
        self.threads = [threading.Thread(target=self._relay, daemon=True),
                        threading.Thread(target=self._collect, args=(read_fd,), daemon=True)]
        for t in self.threads:
            t.start()

    def _relay(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.out.write(mark(line, self.marked) + "\n")
            self.out.flush()

    def _collect(self, fd):
        with os.fdopen(fd, "rb") as pipe:
            for raw in pipe:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                event["at"] = time.time()
                with self.changed:
                    if event.get("event") == "process_group":  # DDP workers: stopped with the child
                        self.groups.add(int(event["pgid"]))
                    self.events.append(event)
                    self.changed.notify_all()

    def first(self, name):
        """The first event of that name, or None."""
        return next((e for e in self.events if e.get("event") == name), None)

    def wait(self, until, deadline):
        """Wait for the child's first report named `until` ("exit": its exit; or a function, until it is
        true), a second training, the child's exit or the deadline (epoch seconds, or a function giving them,
        asked again as reports arrive); returns whether `until` came."""
        came = until if callable(until) else functools.partial(self._came, until)
        end = deadline if callable(deadline) else lambda: deadline
        while not came() and self.running() and self.trainings() < 2 and time.time() < end():
            with self.changed:
                self.changed.wait(min(1.0, max(end() - time.time(), 0.01)))
        return bool(came())

    def _came(self, name):
        return not self.running() if name == "exit" else self.first(name) is not None

    def running(self):
        return self.proc.poll() is None

    def trainings(self):
        """How many trainings the child has started."""
        return sum(e.get("event") == "train_start" for e in self.events)

    def progress(self):
        """How far training got, in words, from the last epoch report."""
        epochs = [e for e in self.events if e.get("event") == "epoch"]
        if not epochs:
            return "no epoch done"
        return (f"{len(epochs)} epochs done, {epochs[-1]['images']} images at "
                f"{epochs[-1]['rate']:.1f} images/s")

    def slowest_step(self):
        """The longest training step the child has reported, in seconds (0.0 before the first)."""
        return max((e["seconds"] for e in self.events if e.get("event") == "step"), default=0.0)

    def train_py_seconds(self):
        """Seconds train.py's own code has run in the child so far, outside the training clock: from the end
        of its `import prepare` to prepare.start(), and from start()'s return to model.train(...)."""
        now = time.time()
        at = {name: (self.first(name) or {}).get("at")
              for name in ("imported", "start", "started", "trainer")}
        before = (at["start"] or now) - at["imported"] if at["imported"] else 0.0
        return before + ((at["trainer"] or now) - at["started"] if at["started"] else 0.0)

    def validation_seconds(self):
        """How long each validation the child reported took, on the supervisor's clock."""
        starts = [e["at"] for e in self.events if e.get("event") == "val_start"]
        ends = [e["at"] for e in self.events if e.get("event") == "val_end"]
        return [end - start for start, end in zip(starts, ends)]

    def stop(self):
        """SIGTERM to the child's session and its DDP workers' groups, SIGKILL to whatever is left after the
        grace."""
        stop(self.proc, STOP_GRACE + (DDP_STOP_GRACE if self.groups else 0), [self.proc.pid, *self.groups])

    def finish(self):
        """The child's exit code, once its output and reports are all read (the relay ends with its
        stdout)."""
        code = self.proc.wait()
        for pgid in self.groups:  # a DDP worker left behind by a child that died outright
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        # before the relay's end: a process left behind may hold the child's stdout open
        self.leftovers = stop_leftovers()
        for t in self.threads:
            t.join(10)
        if self.leftovers:
            say(f"supervisor: stopped what train.py left running: {'; '.join(self.leftovers)}")
        return code


# ---------------------------------------------------------------------------
# The time limits, on the supervisor's clock (prepare.py's constants say what each one covers)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    budget: float        # TIME_BUDGET
    setup: float         # SETUP_LIMIT
    train_py: float      # TRAIN_PY_LIMIT
    end_allowance: float  # END_ALLOWANCE
    first_val: float     # FIRST_VAL_ALLOWANCE
    exit_grace: float    # EXIT_GRACE


def hold_limits(child, limits):
    """Wait for the child under the limits. Returns its Done (None if it exited without one); stops the child
    and raises HarnessError at a limit or at a second training. At Ctrl-C / SIGTERM it stops the child and
    lets the KeyboardInterrupt go on, to the excepthook's `interrupted` line."""
    try:
        return _hold(child, limits)
    except KeyboardInterrupt:
        child.stop()
        child.finish()
        raise


def _hold(child, limits):
    child.wait("trainer", lambda: min(child.started + limits.setup,
                                      time.time() + limits.train_py - child.train_py_seconds()))
    if child.running() and (ran := child.train_py_seconds()) >= limits.train_py:
        child.stop()
        raise HarnessError(f"train.py's own code ran {ran:.0f} s outside the training clock (limit "
                           f"{limits.train_py:g} s, between `import prepare` and prepare.start() and between "
                           "start() and model.train(...)); stopped. Train only inside model.train(...)")
    if not child.wait("train_start", child.started + limits.setup) and child.running():
        child.stop()
        raise HarnessError(f"train.py had not started training {limits.setup:g} s after it began (imports, "
                           "checks, decoding the images, building the model); stopped. Look at the end of "
                           "the log for where it stood; a slow machine: lower IMGSZ or the model's size")
    if not (first := child.first("train_start")):
        return None
    finished = child.wait("done", lambda: first["at"] + end_limit(child, limits))
    if child.trainings() > 1:
        child.stop()
        raise HarnessError("train.py started a second training: one model.train(...) per run, one budget "
                           "of training; put everything in one call")
    if not finished and child.running():
        waited = time.time() - first["at"]  # before the stop, which may take STOP_GRACE
        child.stop()
        raise HarnessError(f"the run overran: prepare.finish() not reached {waited:.0f} s "
                           f"after training started (on_train_start), past the limit of "
                           f"{end_limit(child, limits):.0f} s ({end_limit(child, limits, parts=True)}), "
                           f"{child.progress()}; stopped. A slow machine: lower IMGSZ, BATCH or the model's "
                           "size; if training had stopped advancing, the end of the log shows what hung")
    if done := child.first("done"):
        say(f"supervisor: train.py's own code ran {child.train_py_seconds():.1f} s before model.train(...)"
            f" (limit {limits.train_py:g} s); {done['at'] - first['at']:.1f} s from the start of training to "
            f"prepare.finish() (limit {end_limit(child, limits):.0f} s)")
        if not child.wait("exit", done["at"] + limits.exit_grace):
            child.stop()
            raise HarnessError(f"train.py did not exit {limits.exit_grace:g} s after prepare.finish() (a "
                               "thread or process left running?); stopped")
    return Done.from_report(done) if done else None  # rebuilt once the child is gone


def end_limit(child, limits, parts=False):
    """The most seconds from the start of training (the child's on_train_start) to prepare.finish(): the
    budget, the longest step so far (limits.setup while none has finished), the end allowance, the longest
    validation so far (with VAL = True) and the DDP workers' start; parts: that sum in words."""
    first = child.first("train_start")
    last_val = max(child.validation_seconds(), default=limits.first_val) if first.get("val") else 0.0
    ddp_start = limits.setup if first.get("ddp") else 0
    # A slow machine's first step can outlast a short budget. The DDP workers' steps are never reported: the
    # allowance for their start stands instead.
    step = child.slowest_step() or (0.0 if ddp_start else limits.setup)
    if not parts:
        return limits.budget + step + limits.end_allowance + last_val + ddp_start
    step_words = (f"the longest step {step:.1f} s, " if child.slowest_step() else
                  "" if ddp_start else f"{step:g} s while no step has finished, ")
    return (f"the time budget {limits.budget:g} s, {step_words}{limits.end_allowance:g} s for the "
            "checkpoint" + (f", {last_val:.0f} s for the last validation" if last_val else "")
            + (f", {ddp_start:g} s for the DDP workers' start" if ddp_start else ""))


def stop(proc, grace, groups=()):
    """SIGTERM, then SIGKILL `grace` seconds later (at once if proc has exited by then): to the process groups
    `groups`, or to proc alone without them; then up to 5 s more for proc to exit."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        if not groups and proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass


# ---------------------------------------------------------------------------
# A run's processes end with it
# ---------------------------------------------------------------------------


def adopt_orphans():
    """Linux: every process the run starts stays below this one, even one that detaches (a session of its own,
    a double fork): when its parent exits it becomes this process's child instead of init's, so the run's end
    finds it (stop_leftovers)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def descendants(pid):
    """The ids of the live processes below `pid`; zombies among this process's children are reaped."""
    parents = {}
    for entry in (e for e in Path("/proc").iterdir() if e.name.isdigit()):
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        parents[int(entry.name)] = (int(ppid), state)
    below, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, state) in parents.items():
            if ppid != parent:
                continue
            todo.append(child)
            if state != "Z":
                below.append(child)
            elif ppid == os.getpid():
                try:
                    os.waitpid(child, os.WNOHANG)
                except ChildProcessError:
                    pass
    return below


def stop_leftovers(grace=LEFTOVER_GRACE):
    """After the child's exit: the processes still below this one get `grace` seconds to end, then SIGTERM and
    SIGKILL. Returns ['pid (command line)'] of those that had to be stopped."""
    end = time.time() + grace
    while (left := descendants(os.getpid())) and time.time() < end:
        time.sleep(0.1)
    named = [f"{pid} ({common.command_line(pid)})" for pid in left]
    for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5)):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.time() + wait
        while left and time.time() < end:
            time.sleep(0.1)
            left = descendants(os.getpid())
    return named


def left_behind(leftovers):
    """The `error:` line's text for a child that left processes running after it exited."""
    shown = "; ".join(leftovers[:3]) + (" ..." if len(leftovers) > 3 else "")
    return (f"train.py left {len(leftovers)} process{'es' * (len(leftovers) > 1)} running after it exited, "
            f"now stopped: {shown}. A run's processes end with it (one could train outside the clock or hold "
            "the GPU in the next run): start none that outlive train.py")


def ended_early(code):
    """The `error:` line's text for a child that ended with `code` (negative: a signal) without finishing."""
    if code == -signal.SIGKILL:  # never the supervisor's: its limits end the run with their own lines
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        return (f"train.py was killed (signal SIGKILL) after holding up to {peak:.1f} GB of this machine's "
                f"{total:.1f} GB of memory; when that is near all of it, the kernel's out-of-memory killer "
                "ended it: lower BATCH or IMGSZ in train.py")
    try:
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    except ValueError:
        how = f"signal {-code}"
    return (f"train.py ended ({how}) without finishing: it must call prepare.start(), model.train(...) and "
            "prepare.finish(model); the log above says where it stopped")
