"""prepare.Trainer as a DDP run over CPU processes, for tests/test_ddp.py. Ultralytics' DDP wants CUDA
devices (device ids, the nccl backend); only that changes here: CPU_DDP_WORKERS worker processes joined by
gloo. The rest runs as on GPUs: the harness's launch, the workers' hand-off, the supervisor's validation.

CPU_DDP_RANK1_CLOCK_AHEAD_S (seconds, optional): rank 1's training clock reads that much more than rank 0's,
as if it had started long before, so its own estimate of the epochs that fit the budget is smaller than rank
0's. Each rank prints its own estimate and the one it trains with after every epoch."""

import os
import sys

import prepare  # first, as in train.py  # isort: skip
import torch
import torch.distributed as dist
from ultralytics.utils import LOCAL_RANK, RANK


class CpuDDP(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module, device_ids=None, **kwargs):  # a CPU module takes no device ids
        super().__init__(module, **kwargs)


class Trainer(prepare.Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.world_size = int(os.environ["CPU_DDP_WORKERS"])  # Ultralytics counts no devices on the CPU
        self.ddp = LOCAL_RANK == -1  # the parent launches the workers, a worker trains
        ahead = float(os.environ.get("CPU_DDP_RANK1_CLOCK_AHEAD_S", 0))
        if RANK == 1 and ahead:  # the clock starts right before on_train_start
            self.add_callback("on_train_start", lambda trainer: setattr(trainer, "train_time_start",
                                                                        trainer.train_time_start - ahead))

    def _setup_ddp(self):
        torch.nn.parallel.DistributedDataParallel = CpuDDP
        dist.init_process_group("gloo", rank=RANK, world_size=self.world_size)

    def _get_warmup_iterations(self, num_batches):
        own = self.epochs  # after an epoch: this rank's estimate from its own clock, just made by Ultralytics
        warmup = super()._get_warmup_iterations(num_batches)
        if hasattr(self, "train_time_start"):  # not the call before the first epoch
            # one write, so that the two workers' lines never interleave (they run with python -u)
            sys.stdout.write(f"cpu_ddp: rank {RANK} after epoch {self.epoch + 1}: own estimate {own} epochs, "
                             f"trains {self.epochs}\n")
            sys.stdout.flush()
        return warmup
