"""The memory plan (harness/memory.py): where the training images go beside the model, decided from a
training step measured before the clock. The measurement needs CUDA (tests/test_gpu.py runs it beside a
process that holds most of the card); the decision it feeds is checked here, with measured figures."""

import pytest

from harness.memory import GB, images_on_gpu, margin

# The default train.py on the `full` stand-in, as measured on an H200 (bench/BENCHMARKS.md, 2026-12-01): a
# step of yolo11n at 640 px and batch 128 or 64, and the training images at their own size, the long side
# capped at 640.
STEP_128, STEP_64, IMAGES = 18.6 * GB, 9.4 * GB, 3.3 * GB


@pytest.mark.parametrize("free, need, where", [
    (24.9 * GB, STEP_128, True),     # 24 GiB free: the step and the images both fit
    (21 * GB, STEP_128, False),      # the step fits, the images do not: host memory, the batch unchanged
    (16.3 * GB, STEP_128, None),     # 16 GiB free: BATCH = 128 does not fit at all
    (16.2 * GB, STEP_64, True),      # ... but 64 does, with the images
    (11.9 * GB, STEP_64, False),     # 12 GiB free at 64: host memory
    (23 * GB, None, None),           # the measured step itself ran out of memory
])
def test_the_step_is_placed_before_the_images_and_the_batch_is_never_the_price(free, need, where):
    assert images_on_gpu(need, IMAGES, free) is where


def test_the_margin_kept_beyond_the_measured_step_grows_with_it():
    assert margin(1 * GB) == 0.5 * GB and margin(STEP_128) == pytest.approx(0.93 * GB)
    assert images_on_gpu(STEP_128, 0, STEP_128 + margin(STEP_128)) is True
    assert images_on_gpu(STEP_128, 0, STEP_128 + margin(STEP_128) - 1) is None
