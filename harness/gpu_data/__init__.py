"""The GPU data pipeline (train.py's GPU_DATA = True): decode once, keep the images on the GPU, augment whole
batches there with Ultralytics' formulas and knob names. harness/README.md says how it fits.

store.py          the image store (ImageStore): every training image decoded once, packed end to end
plan.py           the CPU half of a batch (plan_batch, Plan) and the layout of its params rows (LAYOUT)
torch_render.py   the GPU half in plain torch (render_torch): the CPU's renderer, the kernels' reference
triton_render.py  the GPU half as two Triton kernels (render_triton)
loader.py         GpuDataset (the training set; plans and draws a batch) and GpuLoader (the trainer's loader)
"""

# Ultralytics' CPU workers (decode, mosaic, affine, HSV and flips, one image at a time) feed about a third of
# what yolo11n's step takes on an H100. Here the training images are decoded once per run, before the clock,
# and kept as uint8 on the GPU (in pinned host memory when they and the model do not both fit), each at its
# own size, packed end to end. Each batch is drawn in two halves: the CPU draws every random choice with
# Ultralytics' formulas and moves the boxes in numpy (plan); the GPU draws the pixels with two Triton kernels
# (render), which fold Ultralytics' resize of a small image into the warp. While the GPU trains on one batch,
# a thread plans the batch after next and the next one is drawn. Validation stays Ultralytics' own.

from harness.gpu_data.loader import GpuDataset, GpuLoader
from harness.gpu_data.plan import Plan, unpack_params
from harness.gpu_data.store import M_H, M_STORED_H, M_STORED_W, M_W, ImageStore
from harness.gpu_data.torch_render import render_torch, warp_torch
from harness.gpu_data.triton_render import render_triton

__all__ = ["GpuDataset", "GpuLoader", "Plan", "unpack_params", "ImageStore", "M_H", "M_STORED_H",
           "M_STORED_W", "M_W", "render_torch", "warp_torch", "render_triton"]
