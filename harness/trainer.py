"""prepare.Trainer's data policy: which loader trains (the GPU pipeline or Ultralytics' own), where the
decoded images go (the memory plan), what the guard learns of the training files, no retry at a smaller
batch."""

import os
from copy import copy

from harness import memory, validation
from harness.common import GPU_DATA_ENV, HarnessError
from harness.gpu_data import GpuDataset, GpuLoader


class TrainingData:
    """prepare.Trainer's loaders and its one batch: the GPU pipeline for training (GPU_DATA = True) with its
    images where the memory plan puts them, Ultralytics' own loader otherwise, kept batches for VAL = True's
    validation; and a run that ends where Ultralytics would halve the batch after running out of memory."""

    def get_dataloader(self, dataset_path, batch_size=16, rank=0, mode="train"):
        if mode == "val" and not self.args.val:  # nothing validates in training: the val split is not read
            return validation.NO_BATCHES
        if mode == "val" and self.world_size <= 1 and validation.prebuilt():  # VAL = True: decoded once
            # workers start on first use
            loader = super().get_dataloader(dataset_path, batch_size, rank, mode)
            return validation.PrebuiltBatches(loader.dataset, loader.batch_size, self.device, keep=True)
        if mode != "train" or os.environ.get(GPU_DATA_ENV) != "1":
            loader = super().get_dataloader(dataset_path, batch_size, rank, mode)
            if mode == "train":  # the model at this batch must fit: an error: line before the clock if not
                self.train_files = list(loader.dataset.im_files)  # what the guard checks training read
                memory.plan(self, batch_size, loader.dataset.labels, 0)
            return loader
        if getattr(self, "gpu_data", None) is None:  # decoded once
            from ultralytics.utils.torch_utils import torch_distributed_zero_first
            with torch_distributed_zero_first(rank):  # one process writes the label cache
                dataset = self.build_dataset(dataset_path, "train", batch_size)
            self.train_files = list(dataset.im_files)
            self.gpu_data = GpuDataset(dataset, copy(self.args), self.device, lambda nbytes: memory.plan(
                self, batch_size, dataset.labels, nbytes))  # on the GPU where they fit beside the model
        return GpuLoader(self.gpu_data, batch_size, self.args.seed, rank, self.world_size)

    def _build_train_pipeline(self):
        # Ultralytics' out-of-memory retry halves the batch and builds again: a run trains train.py's batch
        if getattr(self, "planned_batch", self.batch_size) != self.batch_size:
            raise HarnessError(memory.ran_out(self, self.planned_batch))
        self.planned_batch = self.batch_size
        super()._build_train_pipeline()
