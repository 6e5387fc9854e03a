"""The GPU pipeline's training set and loader: GpuDataset (the decoded images, the packed boxes, where the
images live, planning and drawing a batch) and GpuLoader, which stands in for Ultralytics' training DataLoader
and keeps one batch drawn and the next one planned while the GPU trains."""

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

from harness.common import HarnessError, warn
from harness.gpu_data.plan import Plan, pack_labels, plan_batch
from harness.gpu_data.store import ImageStore
from harness.gpu_data.torch_render import render_torch
from harness.gpu_data.triton_render import render_triton


class Fetched(NamedTuple):
    """Where render() reads a batch's images from: a store, each image's ids [B, 4] into its table, and a CUDA
    event to wait for (or None)."""
    store: ImageStore
    ids: Any
    ready: Any


class GpuDataset:
    """The training set as the GPU pipeline sees it: decoded images, packed boxes, the augmentation
    hyperparameters (Ultralytics' names and meanings), and Ultralytics' dataset for its labels."""

    def __init__(self, dataset, hyp, device, fits_on_gpu=None):
        """fits_on_gpu(nbytes): whether the decoded images go on the GPU (default: yes on CUDA); the trainer's
        memory plan (harness/memory.py) answers it from the model's measured need."""
        import torch
        t = time.time()
        # labels: what Ultralytics' trainer reads off a training dataset (plots, max_det)
        self.dataset, self.labels, self.device = dataset, dataset.labels, device
        self.imgsz = dataset.imgsz
        self.hyp = hyp
        store, self.sizes = ImageStore.decode(dataset.im_files, self.imgsz)
        self.boxes = pack_labels(dataset.labels)
        # The dataset check lets a few broken files through with a warning; train without them.
        self.index = np.flatnonzero(self.sizes[:, 0])
        for i in np.flatnonzero(self.sizes[:, 0] == 0)[:3]:
            warn(f"{dataset.im_files[i]} cannot be decoded: training goes on without it")
        if not len(self.index):
            raise HarnessError(f"no training image could be decoded ({dataset.im_files[0]}, ...); "
                               "check the dataset")
        cuda = device.type == "cuda"
        # Images that do not fit on the GPU: each batch's images are gathered and copied over (fetch).
        self.gather = fits_on_gpu is not None and not fits_on_gpu(store.nbytes) and cuda  # the plan: CPU too
        self.store = store.to(device, pin=self.gather) if cuda else store
        self.copy_stream = torch.cuda.Stream(device) if self.gather else None
        if cuda:  # compile the Triton kernels now, before the training clock starts
            p = self.plan(self.index[:1], np.random.default_rng(0))
            self.render(torch.as_tensor(p.tiles), torch.as_tensor(p.params))
        where = "host memory" if self.gather else "GPU" if cuda else "memory"
        print(f"GPU data: {len(self)} training images decoded in {time.time() - t:.1f} s, "
              f"{store.nbytes / 2**30:.1f} GB in {where}")

    def __len__(self):  # decodable images
        return len(self.index)

    def close_mosaic(self, hyp):
        """Ultralytics' close_mosaic: the last epochs train on plain images."""
        self.hyp.mosaic = self.hyp.mixup = 0.0

    def plan(self, idx, rng):
        """The CPU half of a batch of the images idx: its Plan (numpy arrays), every random choice drawn from
        rng."""
        return plan_batch(self, idx, rng)

    def fetch(self, tiles):
        """Where render() reads a batch's images from (Fetched), given plan()'s tiles as a CPU tensor. Images
        kept in host memory: the batch's distinct images, packed into pinned memory and copied over on a side
        stream. GpuLoader calls this in its planning thread, so the packing (tens of ms) and the copy overlap
        the training step."""
        import torch
        dev = self.device
        if not self.gather:
            return Fetched(self.store, tiles.to(dev, non_blocking=True), None)
        uniq, ids = torch.unique(tiles, return_inverse=True)
        batch = self.store.subset(uniq)
        if dev.type != "cuda":
            return Fetched(batch, ids, None)
        with torch.cuda.stream(self.copy_stream):
            store, ids = batch.to(dev), ids.to(dev, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        return Fetched(store, ids, ready)

    def render(self, tiles, params):
        """The GPU half of a batch, from plan()'s tiles (a CPU tensor, or what fetch() made of it) and params
        (a CPU tensor): [B, 3, S, S] RGB images in 0..255 (half precision on the GPU), as Ultralytics'
        pipeline would draw them for these choices."""
        import torch
        store, ids, ready = self.fetch(tiles) if torch.is_tensor(tiles) else tiles
        if ready is not None:  # copied on the side stream: wait for it, and keep its memory until drawn
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(ready)
            for t in (store.pixels, store.table, ids):
                t.record_stream(stream)
        draw = render_triton if self.device.type == "cuda" else render_torch
        return draw(store, ids, params.to(self.device, non_blocking=True), self.imgsz)


class EpochShard:
    """What Ultralytics' trainer reads off a DataLoader's sampler: images per epoch, and set_epoch()."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return self.loader.samples

    def set_epoch(self, epoch):
        self.loader.epoch = epoch


class GpuLoader:
    """Stands in for Ultralytics' training DataLoader (the parts its trainer uses): an epoch is a seeded
    shuffle, split across DDP ranks like DistributedSampler, cut into equal batches augmented on the GPU."""
    num_workers = 0
    drop_last = False

    def __init__(self, data, batch_size, seed, rank=-1, world_size=1):
        self.dataset, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size = max(rank, 0), max(world_size, 1)
        self.epoch = 0
        self.sampler = EpochShard(self)
        self.rng = np.random.default_rng(seed + 1 + self.rank)

    def __len__(self):  # batches per epoch
        return math.ceil(self.samples / self.batch_size)

    @property
    def samples(self):  # images per epoch for this rank: whole batches
        return math.ceil(len(self.dataset) / (self.world_size * self.batch_size)) * self.batch_size

    def reset(self):
        pass

    def __iter__(self):
        order = self.dataset.index[
            np.random.default_rng(self.seed + self.epoch).permutation(len(self.dataset))]
        # Padded with the epoch's first images to whole batches on every rank, as DistributedSampler pads
        # ranks: a smaller last batch is a new input shape, for which cuDNN spends seconds of the budget
        # choosing kernels.
        order = np.resize(order, self.samples * self.world_size)[self.rank::self.world_size]
        self.epoch += 1
        batches = [order[a:a + self.batch_size] for a in range(0, len(order), self.batch_size)]
        # When the trainer takes a batch, the next one is drawn and the one after that planned:
        # - planned in a thread, the CPU half, while the trainer waits for each step's end. One thread keeps
        #   the draws in order: a seed gives the same batches.
        # - drawn one batch ahead, on the trainer's own stream (a side stream's cached blocks would grow the
        #   memory reserve every epoch): the GPU draws the next batch while the CPU, just back from the
        #   trainer's per-batch sync, launches this one's forward pass.
        with ThreadPoolExecutor(1) as planner:
            ahead = planner.submit(self.plan, batches[0])
            drawn = None
            for i in range(len(batches)):
                p = ahead.result()
                if i + 1 < len(batches):
                    ahead = planner.submit(self.plan, batches[i + 1])
                drawn, done = self.render(p), drawn
                if done is not None:
                    yield done
            yield drawn

    def plan(self, idx):
        """The CPU half of one batch: (its Plan as tensors ready to copy to the GPU, pinned when there is one,
        its image files)."""
        import torch
        dtypes = Plan(tiles=torch.long, params=torch.float32, batch_idx=torch.float32, cls=torch.float32,
                      bboxes=torch.float32)
        p = Plan(*(torch.as_tensor(x, dtype=t) for x, t in zip(self.dataset.plan(idx, self.rng), dtypes)))
        if self.dataset.device.type == "cuda":
            p = Plan(*(t.pin_memory() for t in p))
        if self.dataset.gather:  # images in host memory: this batch's tiles, on their way to the GPU
            p = p._replace(tiles=self.dataset.fetch(p.tiles))
        return p, [self.dataset.dataset.im_files[i] for i in idx]

    def render(self, planned):
        """One batch in Ultralytics' format, on the GPU: the planned tensors copied over, the pixels drawn."""
        p, files = planned
        dev = self.dataset.device
        batch_idx, cls, bboxes = (t.to(dev, non_blocking=True) for t in (p.batch_idx, p.cls, p.bboxes))
        return {"img": self.dataset.render(p.tiles, p.params), "batch_idx": batch_idx, "cls": cls,
                "bboxes": bboxes, "im_file": files}
