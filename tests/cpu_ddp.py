"""prepare.Trainer as a DDP run over CPU processes, for tests/test_ddp.py. Ultralytics' DDP wants CUDA
devices (device ids, the nccl backend); only that changes here: CPU_DDP_WORKERS worker processes joined by
gloo. The rest runs as on GPUs: the harness's launch, the workers' hand-off, the parent's final validation."""

import os

import prepare  # first, as in train.py
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

    def _setup_ddp(self):
        torch.nn.parallel.DistributedDataParallel = CpuDDP
        dist.init_process_group("gloo", rank=RANK, world_size=self.world_size)
