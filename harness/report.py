"""The child's side of the report pipe: what train.py's child tells the supervisor (harness/supervisor.py),
and when. The supervisor starts the child with the write end of a pipe of its own; at prepare's import the
child keeps it for its own process (take_pipe), then writes one JSON line per event (send). At
prepare.finish() it hands over `Done`, which the supervisor rebuilds from its line.
"""

import functools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from harness.common import HarnessError

# ---------------------------------------------------------------------------
# The hand-over between the two processes
# ---------------------------------------------------------------------------

CHILD_ENV = "AUTORESEARCH_CHILD"          # set in the child (and so in every process it starts)
REPORT_FD_ENV = "AUTORESEARCH_REPORT_FD"  # the child's end of the report pipe


def is_child():
    return os.environ.get(CHILD_ENV) == "1"


def runs_train_py(train_py):
    """True in a process started as `python train.py` of this checkout: the supervisor, or its child."""
    return bool(sys.argv) and Path(sys.argv[0]).resolve() == Path(train_py).resolve()


@dataclass(frozen=True)
class Done:
    """What the child hands the supervisor at prepare.finish(): its training, as the summary needs it."""
    training_seconds: float  # the trainer's clock at its end (DDP: rank 0's)
    trained_images: int
    epoch: int               # the last epoch trained, from 0
    batch: int
    peak_vram_mb: float
    device: object           # as start() picked it: a GPU index, [0, 1, ...] or "cpu"
    device_name: str
    weights: str             # the starting weights, as the summary names them
    best_digest: str         # device.weights_digest of best.pt
    at: float = 0.0          # the supervisor's clock when the line arrived; never sent

    def send(self):
        """Child side: hand this to the supervisor. Returns whether it was sent (see send())."""
        return send("done", **{k: v for k, v in asdict(self).items() if k != "at"})

    @classmethod
    def from_report(cls, event):
        """Supervisor side: the Done that a `done` line (parsed, with its arrival time "at") carries."""
        return cls(**{f.name: event[f.name] for f in fields(cls)})

# ---------------------------------------------------------------------------
# The child's end of the pipe
# ---------------------------------------------------------------------------


_PIPE = {}  # the child's end of the report pipe, and the one process that may write to it


def take_pipe(train_py):
    """Child side, at import: keep the report pipe for this process alone (no process it starts inherits it).
    A train.py process that says it is the child but was given no pipe raises HarnessError."""
    fd = os.environ.pop(REPORT_FD_ENV, None)
    if fd is not None:
        os.set_inheritable(int(fd), False)
        _PIPE.update(fd=int(fd), pid=os.getpid())
    elif is_child() and runs_train_py(train_py):
        raise HarnessError(f"train.py runs as the supervisor's child ({CHILD_ENV}=1) without its report "
                           "pipe: nothing would check this run. "
                           f"Unset {CHILD_ENV} and run `uv run train.py`")


def send(event, **facts):
    """One event to the supervisor. Returns whether it was sent: not where there is no supervisor, nor in a
    forked process."""
    if _PIPE.get("pid") != os.getpid():
        return False
    try:
        os.write(_PIPE["fd"], (json.dumps({"event": event, **facts}, default=str) + "\n").encode())
    except OSError:
        return False  # the supervisor is gone: nothing is listening
    return True


@functools.cache
def watch_trainings():
    """Every Ultralytics trainer reports the start of its set-up (train.py's own code outside the clock ends
    there), its start of training (a second training is then seen), each new longest step (the limit allows
    one more: a slow machine's last step) and each epoch's end (how far a run got, should it overrun)."""
    from ultralytics.engine.trainer import BaseTrainer
    run_callbacks = BaseTrainer.run_callbacks

    def reporting(self, event):
        if event == "on_pretrain_routine_start":  # any trainer's set-up: no longer train.py's own code
            send("trainer", trainer=type(self).__name__)
        elif event == "on_train_start":
            send("train_start", trainer=type(self).__name__, val=bool(self.args.val))
        elif event == "on_train_batch_start":
            self.step_started = time.time()
        elif event == "on_train_batch_end" and hasattr(self, "step_started"):
            step = time.time() - self.step_started
            if step > getattr(self, "slowest_step", 0.0):
                self.slowest_step = step
                send("step", seconds=step)
        elif event == "on_fit_epoch_end":
            images = getattr(self, "trained_images", 0)
            send("epoch", epoch=self.epoch + 1, images=images,
                 rate=images / max(time.time() - self.train_time_start, 1e-9))
        return run_callbacks(self, event)

    BaseTrainer.run_callbacks = reporting
