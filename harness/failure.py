"""How any process of a run ends: set up at prepare's import (install), an uncaught exception ends it with one
`error:` line (describe_failure gives its text) and SIGTERM the way Ctrl-C does. In the supervisor the run's
record line is written first, whatever the end (record_run); in a DDP worker the line goes to its handoff
file; in the child it goes to the supervisor, which prints it last.
"""

import errno
import signal
import sys
import time
from pathlib import Path

from harness import common, ddp, record, report, supervisor
from harness.common import CACHE_DIR, RUN_DIR, HarnessError

_INSTALLED = {}  # train.py's path, and when prepare was imported
_FACTS = {}      # what the supervisor learnt of this run for its record line (note())


def install(train_py, workers=False):
    """At prepare's import: any uncaught exception ends the process with one `error:` line, SIGTERM ends it
    the way Ctrl-C does, nothing of train.py ran before it, and the child's report pipe is this process's
    alone. workers: a multiprocessing worker, which keeps its signal handlers."""
    sys.excepthook = _excepthook
    _INSTALLED.update(train_py=Path(train_py), at=time.time())
    if report.runs_train_py(train_py):
        supervisor.check_first_statement(train_py)
    report.take_pipe(train_py)
    if not workers:
        signal.signal(signal.SIGTERM, _sigterm)


def describe_failure(exc, tb=None):
    """The `error:` line's text: what failed and what to do about it."""
    if isinstance(exc, HarnessError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT or SIGTERM) before the run finished; the next run starts clean"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (f"disk full ({exc.filename or 'while writing'}): free space on the disk that holds "
                f"{RUN_DIR} and {CACHE_DIR}, then run again")
    if "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        trainer = common.find_trainer(tb)
        where = f" at batch={trainer.args.batch} imgsz={trainer.args.imgsz}" if trainer else ""
        return f"CUDA out of memory{where}; lower BATCH or IMGSZ (or pick a smaller MODEL) in train.py"
    return f"{type(exc).__name__}: {text}"[:300]


def _excepthook(exc_type, exc, tb):
    sys.stdout.flush()
    if not isinstance(exc, (HarnessError, KeyboardInterrupt)):
        sys.__excepthook__(exc_type, exc, tb)
        sys.stderr.flush()
    error, worker = describe_failure(exc, tb), ddp.ddp_rank() >= 0
    if worker:  # a DDP worker: its parent ends with this line, not torch.distributed's
        ddp.write_handoff(ddp.ddp_rank(), {"error": error})
    if supervisor.is_supervisor(_INSTALLED["train_py"]):
        try:
            record_run(error=error)
        except Exception as e:  # the error line still comes last
            common.warn(f"the run record ({record.RECORD}) was not written: {type(e).__name__}: {e}")
    if not report.send("error", error=error) and not (worker and report.is_child()):
        supervisor.say(f"error: {error}")  # else the supervisor prints it, last


def _sigterm(signum, frame):
    # kill and timeout send SIGTERM, and `uv run` passes its own on: the first ends the run through the same
    # clean path as Ctrl-C, a second must not interrupt that path.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def note(**facts):
    """Keep facts of this run (its dataset's digest) for its record line, whatever its end."""
    _FACTS.update(facts)


def record_run(summary=None, error=None, best_pt=None):
    """The supervisor's line in the run record (harness/record.py) for this run: its summary or its error.
    Returns the line as written."""
    line = record.describe_run(_INSTALLED["train_py"], time.time() - _INSTALLED["at"], summary, error,
                               **_FACTS)
    return record.append(line, best_pt)
