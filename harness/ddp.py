"""Several GPUs (DEVICE = [0, 1] in train.py): Ultralytics' DDP workers and what they hand back.

train.py's child (the DDP parent) starts one worker process per GPU through torch.distributed.run. Ultralytics
pickles prepare.Trainer by reference, so each worker imports prepare (offline settings, Ultralytics patches,
the GPU data pipeline, NaN stop, excepthook) and trains on its share of every batch. The parent gets nothing
back from Ultralytics but the checkpoints, so where a one-GPU run would end, each worker writes a small report
(write_handoff) and exits; the parent hands the supervisor the run's clock, images and memory, and the
supervisor validates best.pt as it does for one GPU.
"""

import json
import os
import subprocess
import sys

from harness import common, report, supervisor
from harness.common import HarnessError, warn, write_atomic
from harness.device import peak_vram_mb, process_gpu_mb

DDP_HANDOFF = "ddp-rank{rank}.json"  # one small report per worker in the run folder


def ddp_rank():
    """This process's rank among the DDP workers (set by torch.distributed.run, read the same way by
    Ultralytics), -1 outside DDP."""
    return int(os.environ.get("RANK", -1))


def write_handoff(rank, handoff):
    """A DDP worker's report to its parent: one JSON file per rank in the run folder."""
    text = json.dumps({"rank": rank, **handoff}, default=str)
    write_atomic(common.RUN_DIR / DDP_HANDOFF.format(rank=rank), text.encode())


def read_handoffs(world_size):
    """The reports of ranks 0 .. world_size - 1, in rank order; a worker killed outright leaves none."""
    paths = [common.RUN_DIR / DDP_HANDOFF.format(rank=rank) for rank in range(world_size)]
    return [json.loads(path.read_text()) for path in paths if path.is_file()]


def worker_report(trainer, rank):
    """What a DDP worker hands back when its clock stops: clock, images, epoch and peak memory for the
    summary; rank 0 also the settings it trained and validated with and its last validation's metrics,
    for the guard and the log."""
    gpu = trainer.device.index if trainer.device.type == "cuda" else "cpu"
    handoff = {"training_seconds": trainer.training_seconds, "trained_images": trainer.trained_images,
               "epoch": trainer.epoch, "gpu": gpu, "peak_vram_mb": peak_vram_mb(gpu)}
    if rank == 0:
        handoff["args"] = vars(trainer.args)
        handoff["splits"] = {split: trainer.data.get(split) for split in ("train", "val")}
        handoff["train_files"] = trainer.train_files
        handoff["metrics"] = {k: float(v) for k, v in (trainer.metrics or {}).items()}
    return handoff


def worker_view(handoff):
    """Rank 0's trainer as guard() sees it: the settings it trained and validated with, and its metrics."""
    from types import SimpleNamespace
    return SimpleNamespace(args=SimpleNamespace(**handoff["args"]), data=handoff["splits"],
                           metrics=handoff["metrics"], train_files=handoff["train_files"])


class DDPTraining:
    """prepare.Trainer's mixin for several GPUs: each batch counts its images, the DDP launch is the harness's
    (train_ddp), the ranks agree on the epochs, and each worker hands the child its clock, count and memory.
    Under DDP each worker process rebuilds prepare.Trainer by importing prepare."""
    trained_images = 0  # images trained on (the DDP parent: every rank's)

    def train(self):
        if not self.ddp:
            return super().train()
        # the workers' start: on top of the budget
        report.send("train_start", ddp=True, val=self.args.val)
        train_ddp(self)

    def preprocess_batch(self, batch):
        self.trained_images += len(batch["img"])
        return super().preprocess_batch(batch)

    def _get_warmup_iterations(self, num_batches):
        # Right after Ultralytics re-estimates, from this rank's own clock, how many epochs fit the budget.
        # Ranks that disagree validate after different epochs and deadlock: every rank takes rank 0's, as its
        # stop.
        if self.world_size > 1 and ddp_rank() >= 0:
            import torch.distributed as dist
            epochs = [self.epochs]
            dist.broadcast_object_list(epochs, 0)
            self.epochs = self.args.epochs = epochs[0]
        return super()._get_warmup_iterations(num_batches)

    def final_eval(self):
        if ddp_rank() >= 0:  # a DDP worker: hand the child its clock, images and memory
            write_handoff(ddp_rank(), worker_report(self, ddp_rank()))


def ddp_failure(reports, code, world_size):
    """The one line that ends the log when the DDP workers failed: a worker's own error, preferring the one
    that started it over the `interrupted` of the workers torch.distributed.run stopped after it."""
    errors = [r for r in reports if r.get("error")]
    first = [r for r in errors if not r["error"].startswith("interrupted")] or errors
    if first:
        return f"{first[0]['error']} (DDP rank {first[0]['rank']} of {world_size})"
    return (f"the DDP workers failed (exit code {code}) without an error line of their own; "
            "the log above (torch.distributed.run's report) says why")


def train_ddp(trainer):
    """Ultralytics' DDP launch (BaseTrainer.train and utils/dist.py), kept in hand: the run folder stays (it
    holds run/data.yaml; Ultralytics would delete it), the workers run as one process group that an interrupt
    or the supervisor stops whole, and a worker's failure ends the log with its own `error:` line."""
    from ultralytics.utils.dist import ddp_cleanup, find_free_network_port, generate_ddp_file
    from ultralytics.utils.torch_utils import unset_deterministic
    try:
        import cloudpickle  # noqa: F401  (Ultralytics sends the trainer to the workers with it)
    except ImportError:
        raise HarnessError("DEVICE with several GPUs needs the cloudpickle package: run `uv sync` "
                           "(or pip install 'cloudpickle>=3.1.1')") from None
    n, batch = trainer.world_size, trainer.args.batch
    if batch < 1 or batch % n:
        raise HarnessError(f"BATCH = {batch} with {n} GPUs: under DDP the batch is split over the GPUs; "
                           f"set BATCH in train.py to a multiple of {n}")
    if trainer.args.rect:  # as Ultralytics does
        warn("rect=True does not work over several GPUs: training with rect=False")
        trainer.args.rect = False
    gpus = [int(i) for i in trainer.args.device.split(",")] if trainer.device.type == "cuda" else []
    # what this process holds on each GPU while the workers run
    held = {i: process_gpu_mb(i) or 0.0 for i in gpus}
    file = generate_ddp_file(trainer)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
           "--master_port", str(find_free_network_port()), file]
    print(f"DDP: {n} worker processes on device {trainer.args.device}: {' '.join(cmd)}")
    try:
        code = run_group(cmd)
    finally:
        ddp_cleanup(trainer, file)
        unset_deterministic()
    reports = read_handoffs(n)
    if code != 0 or len(reports) != n or any(r.get("error") for r in reports):
        raise HarnessError(ddp_failure(reports, code, n))
    first = reports[0]
    trainer.ddp_reports, trainer.ddp_held_mb = reports, held
    trainer.training_seconds = first["training_seconds"]  # rank 0's clock decides when every rank stops
    trainer.trained_images = sum(r["trained_images"] for r in reports)
    trainer.epoch = first["epoch"]


def run_group(cmd):
    """Run a command in a process group of its own and wait for it. Whatever ends the wait early (SIGTERM,
    Ctrl-C, an error) stops the whole group, so no DDP worker keeps a GPU after the run. Returns the exit
    code."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    report.send("process_group", pgid=proc.pid)  # a supervisor that kills this process stops them too
    try:
        return proc.wait()
    finally:
        supervisor.stop(proc, supervisor.DDP_STOP_GRACE, [proc.pid])  # workers end as interrupted


def ddp_peak_vram_mb(reports, held_mb, parent_gpu, parent_peak_mb):
    """Peak memory per GPU of a DDP run, as nvidia-smi would show it for the run's processes on that card:
    each worker's peak plus what the parent held there while the workers ran, or the parent's own peak there
    when that is more."""
    per_gpu = {r["gpu"]: r["peak_vram_mb"] + held_mb.get(r["gpu"], 0.0) for r in reports}
    per_gpu[parent_gpu] = max(per_gpu.get(parent_gpu, 0.0), parent_peak_mb)
    return per_gpu


def run_peak_vram_mb(run, trainer):
    """The summary's peak_vram_mb: the process's peak on its GPU; under DDP the largest per GPU (what decides
    whether a setting fits the cards), with every GPU's figure in the log."""
    if not trainer.ddp or run.device == "cpu":
        return peak_vram_mb(run.device)
    gpu = trainer.device.index
    per_gpu = ddp_peak_vram_mb(trainer.ddp_reports, trainer.ddp_held_mb, gpu, peak_vram_mb(gpu))
    print("DDP: peak GPU memory (MB) per GPU: "
          + ", ".join(f"{g}: {mb:.1f}" for g, mb in sorted(per_gpu.items()))
          + "; peak_vram_mb is the largest")
    return max(per_gpu.values())
