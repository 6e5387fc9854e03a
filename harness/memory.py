"""The memory plan: before the clock, one training step of the model at train.py's batch is measured on the
GPU, and the decoded training images go on the GPU only where they fit beside it. A run trains the batch
train.py names, or ends before its first step with one `error:` line naming a batch that fits (measured the
same way)."""

import gc

import numpy as np

from harness.common import HarnessError

GB = 1e9
# Room kept beyond the measured need: the allocator's fragmentation over batches whose box counts differ, and
# validation. A share of the need, and at least MARGIN_MIN.
MARGIN_SHARE, MARGIN_MIN = 0.05, 0.5 * GB


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


def step_need(trainer, batch, labels):
    """Bytes of GPU memory that training at this batch needs beyond what the process holds now: one measured
    step (forward, loss, backward) of a copy of the model, plus its EMA and optimizer state and the next batch
    in flight. None if the step ran out of memory."""
    from copy import deepcopy

    import torch
    from ultralytics.utils.torch_utils import autocast, unwrap_model
    dev, s = trainer.device, trainer.args.imgsz
    params = sum(p.numel() * p.element_size() for p in unwrap_model(trainer.model).parameters())
    model = deepcopy(unwrap_model(trainer.model)).train()  # the trainer's own keeps its BatchNorm statistics
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    try:
        with autocast(torch.bfloat16 if trainer.args.amp == "bf16" else trainer.amp, device=dev.type):
            loss, _ = model(probe_batch(trainer, batch, labels))
        loss.sum().backward()
        torch.cuda.synchronize(dev)
        step = torch.cuda.max_memory_reserved(dev) - before
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
        if not is_out_of_memory(e):
            raise
        step = None
    del model
    loss = None
    gc.collect()
    torch.cuda.empty_cache()
    return None if step is None else step + 3 * params + batch * 3 * s * s * 2


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


def images_on_gpu(need, images_nbytes, free):
    """Where the training images go, given a step's measured need (None: it ran out of memory) and the free
    bytes: True (the GPU) where both fit, False (host memory) where only the step fits, None where not even
    the step fits. The step comes first: images in host memory cost some speed, a smaller batch is another
    experiment."""
    if need is None or need + margin(need) > free:
        return None
    return need + margin(need) + images_nbytes <= free


def plan(trainer, batch, labels, images_nbytes):
    """Before the clock: whether the decoded training images (images_nbytes) go on the GPU beside the model at
    this batch (a DDP worker's share of BATCH). Returns True for the GPU, False for host memory; raises
    HarnessError where the model at this batch does not fit the card on its own."""
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
