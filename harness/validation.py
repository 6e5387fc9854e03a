"""
Validation through Ultralytics' own validator, with its batches built ahead. Its DataLoader decodes and
letterboxes the val split in worker processes and copies each batch from pageable memory as the validator asks
for it; here the same dataset object (Ultralytics' YOLODataset: decode, rect letterbox, collate) builds the
same batches in a thread pool, ahead of the validator, and puts them on the GPU. DetectionValidator then runs
unchanged: its model call, NMS and metrics. The bytes are the DataLoader's, so every metric is the same
(tests/test_validation.py).
"""

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

AHEAD = 24            # batches built ahead of the validator: hides decoding, bounds the memory they hold
MAX_THREADS = 16      # decoding threads (OpenCV releases the GIL while it decodes and resizes)
LOADER_ENV = "AUTORESEARCH_VAL_LOADER"  # "ultralytics": validate through Ultralytics' own DataLoader instead


class PrebuiltBatches:
    """The batches Ultralytics' val DataLoader yields (no shuffle: consecutive images, the dataset's
    collate_fn), built by a thread pool ahead of use; on a CUDA device each batch's tensors are already there.
    With keep=True (the trainer's per-epoch validation) the images are decoded on the first pass only."""

    def __init__(self, dataset, batch_size, device, keep=False):
        import torch
        self.dataset, self.batch_size, self.device = dataset, batch_size, torch.device(device)
        self.threads = max(1, min(MAX_THREADS, os.cpu_count() or 1))
        self.kept = {} if keep else None  # keep: decoded once, in host memory, for every later pass (epochs)

    def __len__(self):
        return math.ceil(len(self.dataset) / self.batch_size)

    def _build(self, i):
        """Batch i, as the DataLoader collates it; its tensors on the device when that is a GPU."""
        import torch
        if self.kept is not None and i in self.kept:
            # the validator replaces its entries (on the CPU too): not the kept ones
            batch = dict(self.kept[i])
        else:
            start = i * self.batch_size
            batch = self.dataset.collate_fn(
                [self.dataset[j] for j in range(start, min(start + self.batch_size, len(self.dataset)))])
            if self.kept is not None:
                self.kept[i] = dict(batch)
        if self.device.type == "cuda":
            # a copy on the thread's own stream overlaps the validator
            stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(stream):
                batch = {k: v.pin_memory().to(self.device, non_blocking=True)
                            if isinstance(v, torch.Tensor) else v
                         for k, v in batch.items()}
            stream.synchronize()
            for v in batch.values():  # freed after the validator's kernels on its stream, not before
                if isinstance(v, torch.Tensor):
                    v.record_stream(torch.cuda.default_stream(self.device))
        return batch

    def __iter__(self):
        with ThreadPoolExecutor(self.threads, thread_name_prefix="val-batches") as pool:
            ahead = deque(pool.submit(self._build, i) for i in range(min(AHEAD, len(self))))
            for i in range(len(ahead), len(self) + len(ahead)):
                batch = ahead.popleft().result()
                if i < len(self):
                    ahead.append(pool.submit(self._build, i))
                yield batch


class NoBatches:
    """The trainer's val loader with VAL = False: nothing validates during training, so nothing of the val
    split is read (harness/watch.py holds the run to that)."""
    dataset = ()

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 0


NO_BATCHES = NoBatches()


def validator_class():
    """Ultralytics' DetectionValidator with its DataLoader swapped for PrebuiltBatches of the same dataset."""
    from ultralytics.models.yolo.detect import DetectionValidator

    class PrebuiltValidator(DetectionValidator):
        def get_dataloader(self, dataset_path, batch_size):
            # the dataset; its workers start on first use
            loader = super().get_dataloader(dataset_path, batch_size)
            return PrebuiltBatches(loader.dataset, loader.batch_size, self.device)

    return PrebuiltValidator


def validate(weights, **kwargs):
    """Ultralytics' `YOLO(weights).val(**kwargs)`, through PrebuiltBatches unless LOADER_ENV says otherwise,
    or where they fail (the log says so). Returns Ultralytics' DetMetrics."""
    from ultralytics import YOLO
    if not prebuilt():
        print(f"validation: Ultralytics' own loader ({LOADER_ENV})")
        return YOLO(weights).val(**kwargs)
    try:
        return YOLO(weights).val(validator=validator_class(), **kwargs)
    except Exception as e:
        # the metric never depends on this path: Ultralytics' loader gives the same numbers
        print(f"validation: prebuilt batches failed ({type(e).__name__}: {e}); "
              "again with Ultralytics' own loader")
        return YOLO(weights).val(**kwargs)


def prebuilt():
    """False where the environment asks for Ultralytics' own loader (benchmarks and tests compare the two)."""
    return os.environ.get(LOADER_ENV, "") != "ultralytics"


def metric_of(weights, data_yaml, split, device, folder):
    """The metric: Ultralytics' validator with its default settings (every class, no plots) on one split of
    data_yaml, its val folder at folder/val; the same for the night's val split (prepare.validate_best) and
    the held-out test split (`progress --test`). Returns Ultralytics' DetMetrics."""
    return validate(str(weights), data=str(data_yaml), split=split, device=device, single_cls=False,
                    plots=False, project=str(folder), name="val", exist_ok=True)
