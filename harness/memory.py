"""The memory plan: before the clock, one training step of the model at train.py's batch is measured on the
GPU, and the decoded training images go on the GPU only where they fit beside it. On the CPU, probe steps at
small batches are measured in host memory and extrapolated to train.py's batch. A run trains the batch
train.py names, or ends before its first step with one `error:` line naming a batch that fits (measured the
same way)."""

import ctypes
import gc
from typing import NamedTuple

import numpy as np

from harness.common import HarnessError

GB = 1e9
# Room kept beyond the measured need: the allocator's fragmentation over batches whose box counts differ, and
# validation. A share of the need, and at least MARGIN_MIN.
MARGIN_SHARE, MARGIN_MIN = 0.05, 0.5 * GB

# ---------------------------------------------------------------------------
# The CPU: host memory as the kernel counts it
# ---------------------------------------------------------------------------

MEMINFO, STATUS, CLEAR_REFS = "/proc/meminfo", "/proc/self/status", "/proc/self/clear_refs"
# A step at train.py's batch is what cannot be run (it is the out-of-memory). Two probe steps of about one and
# two 640 px images' pixels take seconds on a CPU and lift the need well above the allocator's noise (tens of
# MB); beyond them it grows linearly in the batch (0.27 GB an image for yolo11n at 640 px).
PROBE_PIXELS = 640 * 640


def is_out_of_memory(exc):
    """The errors Ultralytics' own retry takes for running out of GPU memory."""
    text = str(exc)
    return "out of memory" in text.lower() or any(s in text for s in (
        "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_INTERNAL_ERROR", "unable to find an engine"))


def probe_batch(trainer, batch, labels):
    """A batch as the trainer's loss sees it: noise images, and in each the boxes of a mosaic of the images
    with the most boxes (twice as many with mixup), so the target assigner takes as much memory as any real
    batch can."""
    import torch
    dev, s = trainer.device, trainer.args.imgsz
    counts = np.array([len(lb["cls"]) for lb in labels])
    top = np.argsort(-counts)[:8 if trainer.args.mixup > 0 else 4]
    quarters = [np.hstack([labels[i]["cls"].reshape(-1, 1), labels[i]["bboxes"].reshape(-1, 4) / 2])
                for i in top]
    rows = np.concatenate(quarters) if counts.sum() else np.zeros((1, 5))
    per = torch.as_tensor(rows, dtype=torch.float32, device=dev)
    img = torch.rand(batch, 3, s, s, device=dev).contiguous(memory_format=torch.channels_last)
    return {"img": img, "cls": per[:, :1].repeat(batch, 1), "bboxes": per[:, 1:].repeat(batch, 1),
            "batch_idx": torch.arange(batch, device=dev).repeat_interleave(len(per)).float()}


def probe_step(trainer, model, batch, labels):
    """One forward pass, loss and backward pass of model on a probe batch, as the trainer's step runs them."""
    import torch
    from ultralytics.utils.torch_utils import autocast
    with autocast(torch.bfloat16 if trainer.args.amp == "bf16" else trainer.amp, device=trainer.device.type):
        loss, _ = model(probe_batch(trainer, batch, labels))
    loss.sum().backward()


def beside_step(params, batch, imgsz, itemsize):
    """Bytes training holds beside a measured step: the model's EMA, optimizer state and gradients' share (3 x
    its parameters' bytes) and the next batch in flight (itemsize bytes a pixel value)."""
    return 3 * params + batch * 3 * imgsz * imgsz * itemsize


def model_bytes(trainer):
    """Bytes of the trainer's model parameters."""
    from ultralytics.utils.torch_utils import unwrap_model
    return sum(p.numel() * p.element_size() for p in unwrap_model(trainer.model).parameters())


def step_need(trainer, batch, labels):
    """Bytes of GPU memory that training at this batch needs beyond what the process holds now: one measured
    step (forward, loss, backward) of a copy of the model, plus its EMA and optimizer state and the next batch
    in flight. None if the step ran out of memory."""
    from copy import deepcopy

    import torch
    from ultralytics.utils.torch_utils import unwrap_model
    dev, s = trainer.device, trainer.args.imgsz
    params = model_bytes(trainer)
    model = deepcopy(unwrap_model(trainer.model)).train()  # the trainer's own keeps its BatchNorm statistics
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    try:
        probe_step(trainer, model, batch, labels)
        torch.cuda.synchronize(dev)
        step = torch.cuda.max_memory_reserved(dev) - before
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
        if not is_out_of_memory(e):
            raise
        step = None
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return None if step is None else step + beside_step(params, batch, s, 2)


def card(trainer):
    """(name, total bytes) of the trainer's GPU."""
    import torch
    props = torch.cuda.get_device_properties(trainer.device)
    return f"cuda:{trainer.device.index} {props.name}", props.total_memory


def free_bytes(trainer):
    import torch
    return torch.cuda.mem_get_info(trainer.device)[0]


def margin(need):
    return max(MARGIN_SHARE * need, MARGIN_MIN)


def step_fits(need, free):
    """Whether a step's measured need (None: it ran out of memory) and its margin fit in free bytes."""
    return need is not None and need + margin(need) <= free


def images_on_gpu(need, images_nbytes, free):
    """Where the training images go, given a step's measured need (None: it ran out of memory) and the free
    bytes: True (the GPU) where both fit, False (host memory) where only the step fits, None where not even
    the step fits. The step comes first: images in host memory cost some speed, a smaller batch is another
    experiment."""
    if not step_fits(need, free):
        return None
    return need + margin(need) + images_nbytes <= free


def plan(trainer, batch, labels, images_nbytes):
    """Before the clock: whether the decoded training images (images_nbytes) go on the GPU beside the model at
    this batch (a DDP worker's share of BATCH). Returns True for the GPU, False for host memory; raises
    HarnessError where the model at this batch does not fit the card on its own. On the CPU the images are in
    host memory already: True where the model at this batch fits beside them, else HarnessError."""
    if trainer.device.type == "cpu":
        return host_plan(trainer, batch, labels, images_nbytes)
    if trainer.device.type != "cuda":
        return True
    need, free = step_need(trainer, batch, labels), free_bytes(trainer)
    on_gpu = images_on_gpu(need, images_nbytes, free)
    if on_gpu is None:
        raise HarnessError(does_not_fit(trainer, batch, labels, need, free))
    print(f"memory plan: a training step at batch {batch} needs {need / GB:.1f} GB (measured), the training "
          f"images {images_nbytes / GB:.1f} GB, {free / GB:.1f} GB free: "
          f"images in {'GPU' if on_gpu else 'host'} memory")
    return on_gpu


def does_not_fit(trainer, batch, labels, need=None, free=None, what=None):
    """The `error:` line's text for a batch the card cannot train: the card, its memory, the batch (a DDP
    worker's share), what its step took (need, or `what` happened), and the largest halving of it whose step,
    measured now, fits."""
    name, total = card(trainer)
    free = free_bytes(trainer) if free is None else free
    world = max(trainer.world_size, 1)
    asked = f"BATCH = {batch * world}" + (f" ({batch} a GPU)" if world > 1 else "")
    what = what or (f"needs {need / GB:.1f} GB and {margin(need) / GB:.1f} GB to spare" if need else
                    "ran out of memory") + " (measured before the clock)"
    fits, n = batch // 2, None
    while fits >= 1 and images_on_gpu(n := step_need(trainer, fits, labels), 0, free_bytes(trainer)) is None:
        fits //= 2
    advice = "not even batch 1 fits: lower IMGSZ or pick a smaller MODEL"
    if fits >= 1:
        advice = (f"BATCH = {fits * world} fits (a step at batch {fits} measured {n / GB:.1f} GB, "
                  f"{free_bytes(trainer) / GB:.1f} GB free): set it in train.py, or lower IMGSZ or the "
                  "model's size")
    return (f"{asked} does not fit on {name} ({total / GB:.1f} GB, {free / GB:.1f} GB free): a training step "
            f"at batch {batch} {what}; {advice}")


def ran_out(trainer, batch):
    """The `error:` line's text where Ultralytics' retry would halve the batch after running out of memory in
    the first epoch (batch: BATCH as planned)."""
    what = "ran out of memory in the first epoch (Ultralytics would halve the batch; a run trains train.py's)"
    if trainer.device.type != "cuda":
        return f"BATCH = {batch} does not fit on the {trainer.device.type}: a training step {what}; " \
               "lower BATCH"
    world = max(trainer.world_size, 1)
    return does_not_fit(trainer, batch // world, trainer.train_loader.dataset.labels, what=what)


# ---------------------------------------------------------------------------
# The CPU
# ---------------------------------------------------------------------------

class HostStep(NamedTuple):
    """A training step's need in host memory, a line through probe steps measured at small batches."""
    probes: tuple     # ((batch, bytes), ...): the peak growth of each probe step, plus what lies beside it
    fixed: float      # bytes at batch 0
    per_image: float  # bytes each image adds

    @classmethod
    def through(cls, probes):
        """The line through two measured (batch, bytes) probes; level through the second where the allocator's
        noise (at a few MB a probe) made the first the larger."""
        (b1, n1), (b2, n2) = probes
        per_image = max((n2 - n1) / (b2 - b1), 0.0)
        return cls(tuple(probes), n2 - per_image * b2, per_image)

    def need(self, batch):
        """Bytes of host memory a step at this batch needs, extrapolated."""
        return self.fixed + self.per_image * batch


class HostMemory(NamedTuple):
    """This machine's memory at the plan, in bytes."""
    total: float
    available: float
    held: float       # this process's resident memory
    images: float     # the decoded training images among it


def host_memory(meminfo=MEMINFO):
    """(total, available) bytes of this machine's memory as the kernel counts them: MemTotal, MemAvailable."""
    fields = dict(line.split(":", 1) for line in open(meminfo))
    return tuple(int(fields[k].split()[0]) * 1024 for k in ("MemTotal", "MemAvailable"))


def status_bytes(key):
    """This process's resident memory (VmRSS) or its peak (VmHWM), in bytes."""
    with open(STATUS) as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def peak_growth(fn):
    """Bytes by which this process's resident memory peaked above where it stood before fn(), which runs now:
    the kernel's high-water mark (VmHWM), reset to the resident memory first."""
    gc.collect()
    try:  # freed heap memory goes back to the kernel, so that the step cannot reuse it unseen
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    with open(CLEAR_REFS, "w") as f:
        f.write("5")
    before = status_bytes("VmRSS")
    fn()
    return status_bytes("VmHWM") - before


def host_step_need(trainer, batch, labels):
    """Bytes of host memory that training at this batch needs beyond what the process holds now: the peak
    growth of one probe step of a copy of the model, plus what lies beside it (the next batch in float32)."""
    from copy import deepcopy

    from ultralytics.utils.torch_utils import unwrap_model
    model = deepcopy(unwrap_model(trainer.model)).train()  # the trainer's own keeps its BatchNorm statistics
    step = peak_growth(lambda: probe_step(trainer, model, batch, labels))
    return step + beside_step(model_bytes(trainer), batch, trainer.args.imgsz, 4)


def probe_batches(batch, imgsz):
    """The two batches measured on the CPU: about PROBE_PIXELS and twice that, never above train.py's batch
    (a batch that small is measured itself)."""
    small = max(1, round(PROBE_PIXELS / imgsz**2))
    return max(1, min(small, batch // 2)), max(2, min(2 * small, batch))


def batch_that_fits(need, batch, room):
    """The largest of batch, batch // 2, batch // 4, ... whose need(b) bytes and margin fit in room bytes (the
    rule the GPU's plan applies); 0 where not even batch 1 fits."""
    while batch >= 1 and not step_fits(need(batch), room):
        batch //= 2
    return batch


def host_plan(trainer, batch, labels, images_nbytes):
    """The memory plan on the CPU: True where a step at this batch (a DDP worker's share) fits in the memory
    this machine has available, read after the training images were decoded; else HarnessError."""
    world = max(trainer.world_size, 1)
    probes = probe_batches(batch, trainer.args.imgsz)
    step = HostStep.through([(b, host_step_need(trainer, b, labels)) for b in probes])
    mem = HostMemory(*host_memory(), status_bytes("VmRSS"), images_nbytes)
    fits = batch_that_fits(step.need, batch, mem.available / world)  # DDP workers on a CPU share its memory
    if fits < batch:
        raise HarnessError(host_does_not_fit(batch, fits, step, mem, world))
    print(f"memory plan: a training step at batch {batch} needs about {step.need(batch) / GB:.1f} GB of host "
          f"memory ({step.per_image / GB:.2g} GB an image, measured at batch "
          f"{' and '.join(str(b) for b, _ in step.probes)}), {mem.available / GB:.1f} GB available")
    return True


def host_does_not_fit(batch, fits, step, mem, world=1):
    """The `error:` line's text for a batch (a DDP worker's share) that the CPU's memory cannot train: the
    memory, the batch, its extrapolated need, the probe steps it came from, and the largest halving that fits
    (fits; 0: none does)."""
    need = step.need(batch)
    asked = f"BATCH = {batch * world}" + (f" ({batch} in each of {world} DDP workers)" if world > 1 else "")
    images = f", {mem.images / GB:.1f} GB of it decoded training images" if mem.images else ""
    probes = " and ".join(f"{n / GB:.2f} GB at batch {b}" for b, n in step.probes)
    advice = "not even batch 1 fits: lower IMGSZ or pick a smaller MODEL in train.py"
    if fits:
        advice = (f"BATCH = {fits * world} fits (about {step.need(fits) / GB:.1f} GB): set it in train.py, "
                  "or lower IMGSZ or the model's size")
    return (f"{asked} does not fit on the cpu (this machine's memory: {mem.total / GB:.1f} GB, "
            f"{mem.available / GB:.1f} GB available, this process holding {mem.held / GB:.1f} GB{images}): "
            f"a training step at batch {batch} needs about {need / GB:.1f} GB more and "
            f"{margin(need) / GB:.1f} GB to spare, extrapolated from probe steps measured before the clock "
            f"({probes}: the growth of this process's peak resident memory, VmHWM, plus the next batch and "
            f"optimizer state; {step.per_image / GB:.2g} GB an image); {advice}")
