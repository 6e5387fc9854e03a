"""The memory plan (harness/memory.py): where the training images go beside the model, decided from a
training step measured before the clock. The GPU's measurement needs CUDA (tests/test_gpu.py runs it beside a
process that holds most of the card); the decision it feeds is checked here, with measured figures. On the
CPU the measurement (probe steps in host memory) runs here too, on a tiny model, and one supervised run ends
at the plan."""

import numpy as np
import pytest

from conftest import assert_failed, make_repo, run_train
from harness.memory import (
    GB,
    HostMemory,
    HostStep,
    batch_that_fits,
    host_does_not_fit,
    host_memory,
    host_step_need,
    images_on_gpu,
    margin,
    peak_growth,
    probe_batches,
)

# The default train.py on the `full` stand-in, as measured on an H200 (bench/BENCHMARKS.md, 2026-12-01): a
# step of yolo11n at 640 px and batch 128 or 64, and the training images at their own size, the long side
# capped at 640.
STEP_128, STEP_64, IMAGES = 18.6 * GB, 9.4 * GB, 3.3 * GB
# The default train.py on the CPU (a 2-core, 25.3 GB machine, the `small` stand-in): the probe steps of
# yolo11n at 640 px, and what the kernel said was available after the images were decoded.
CPU_PROBES, CPU_AVAILABLE = ((1, 0.29 * GB), (2, 0.56 * GB)), 20.4 * GB
MB = 1e6


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


# ---------------------------------------------------------------------------
# The CPU: the decision, with numbers
# ---------------------------------------------------------------------------

def test_the_cpus_need_is_the_line_through_two_probe_steps():
    step = HostStep.through(CPU_PROBES)
    assert step.per_image == pytest.approx(0.27 * GB) and step.fixed == pytest.approx(0.02 * GB)
    assert step.need(128) == pytest.approx(34.58 * GB)


def test_a_larger_probe_that_measured_less_never_lowers_the_need():
    step = HostStep.through(((2, 60 * MB), (4, 58 * MB)))  # 64 px: the allocator's noise outweighs 2 images
    assert step.per_image == 0 and step.need(4) == step.need(128) == 58 * MB


@pytest.mark.parametrize("available, fits", [
    (CPU_AVAILABLE, 64),     # this machine: 128 needs 34.6 GB, 64 needs 17.3 GB and 0.9 GB to spare
    (17.0 * GB, 32),         # 64 does not leave its margin
    (40.0 * GB, 128),        # 128 fits with 1.7 GB to spare
    (0.7 * GB, 0),           # not even batch 1 (0.29 GB and 0.5 GB to spare)
])
def test_a_cpu_batch_is_halved_until_its_need_and_margin_fit_what_is_available(available, fits):
    assert batch_that_fits(HostStep.through(CPU_PROBES).need, 128, available) == fits


def test_the_cpu_keeps_the_gpus_margin_to_the_byte():
    need = lambda batch: batch * GB  # noqa: E731
    assert batch_that_fits(need, 4, 4 * GB + margin(4 * GB)) == 4
    assert batch_that_fits(need, 4, 4 * GB + margin(4 * GB) - 1) == 2


@pytest.mark.parametrize("batch, imgsz, probes", [
    (128, 640, (1, 2)),      # one and two images' pixels
    (128, 1280, (1, 2)),     # never below one image
    (128, 64, (64, 128)),    # 100 images' pixels, capped at the batch
    (4, 64, (2, 4)),         # a batch this small is measured itself
    (1, 640, (1, 2)),
])
def test_the_probe_batches_hold_about_one_and_two_640_px_images_and_stop_at_the_batch(batch, imgsz, probes):
    assert probe_batches(batch, imgsz) == probes


def test_the_cpu_error_line_names_the_memory_the_batch_a_batch_that_fits_and_what_was_measured():
    step, mem = HostStep.through(CPU_PROBES), HostMemory(25.3 * GB, CPU_AVAILABLE, 1.6 * GB, 0.1 * GB)
    text = host_does_not_fit(128, 64, step, mem)
    assert text.startswith(
        "BATCH = 128 does not fit on the cpu (this machine's memory: 25.3 GB, 20.4 GB available, this "
        "process holding 1.6 GB, 0.1 GB of it decoded training images): a training step at batch 128 needs "
        "about 34.6 GB more and 1.7 GB to spare, extrapolated from probe steps measured before the "
        "clock (0.29 GB at batch 1 and 0.56 GB at batch 2: the growth of this process's peak resident "
        "memory, VmHWM")
    assert text.endswith("0.27 GB an image); BATCH = 64 fits (about 17.3 GB): set it in train.py, or lower "
                         "IMGSZ or the model's size")
    assert host_does_not_fit(128, 0, step, mem).endswith(
        "0.27 GB an image); not even batch 1 fits: lower IMGSZ or pick a smaller MODEL in train.py")
    ddp = host_does_not_fit(64, 16, step, mem, world=2)
    assert ddp.startswith("BATCH = 128 (64 in each of 2 DDP workers) does not fit")
    assert "BATCH = 32 fits" in ddp


# ---------------------------------------------------------------------------
# The CPU: the measurement, for real
# ---------------------------------------------------------------------------

def test_host_memory_is_the_kernels_total_and_available(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24718368 kB\nMemFree:        18000000 kB\n"
                       "MemAvailable:   19906000 kB\nBuffers:           12345 kB\n")
    assert host_memory(meminfo) == (24718368 * 1024, 19906000 * 1024)
    total, available = host_memory()
    assert total >= available > 0


def test_the_peak_growth_counts_what_the_call_held_and_starts_again_at_each_call():
    held = peak_growth(lambda: np.ones(300 * 2**20, np.uint8))  # 314.6 MB, freed on return
    assert 0.95 * 300 * 2**20 < held < 300 * 2**20 + 50 * MB
    assert peak_growth(lambda: None) < 50 * MB  # the high-water mark of the call before is gone


@pytest.fixture(scope="module")
def tiny_trainer():
    """What the plan reads of a trainer, on the CPU: yolo11n from its YAML at 64 px, float32."""
    from types import SimpleNamespace

    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    args = get_cfg(overrides={"imgsz": 64})
    model = DetectionModel("yolo11n.yaml", nc=1, verbose=False)
    model.args = args  # the loss reads its gains there
    return SimpleNamespace(device=torch.device("cpu"), args=args, model=model, amp=False, world_size=1)


def test_a_probe_steps_host_memory_grows_with_the_batch(tiny_trainer):
    labels = [{"cls": np.zeros((3, 1)), "bboxes": np.full((3, 4), 0.2)} for _ in range(4)]
    small, large = (host_step_need(tiny_trainer, b, labels) for b in (8, 32))
    # yolo11n at 64 px: 1.2-2.3 MB an image measured on a 2-core machine (0.27 GB at 640 px)
    assert 24 * 1 * MB < large - small < 24 * 10 * MB


# ---------------------------------------------------------------------------
# The CPU: a supervised run
# ---------------------------------------------------------------------------

# In the child, after `import prepare`: the kernel's figures replaced by a machine with 1.05 GB available.
# The probe steps and the decision run as they do on any CPU.
SMALL_MACHINE = "import harness.memory\nharness.memory.host_memory = lambda: (int(25.3e9), int(1.05e9))"


def test_a_cpu_run_whose_batch_does_not_fit_ends_before_training_naming_one_that_does(tiny_data, tmp_path):
    # yolo11n at 128 px: about 11 MB an image, so 64 images need 0.7 GB and 0.5 GB to spare, 32 images 0.4 GB
    repo = make_repo(tmp_path, knobs={"IMGSZ": "128", "BATCH": "64"}, before_train=SMALL_MACHINE)
    rc, log = run_train(repo, tiny_data / "data.yaml")
    last = assert_failed(rc, log, "error: BATCH = 64 does not fit on the cpu (this machine's memory: "
                                  "25.3 GB, 1.1 GB available, this process holding ")
    assert "VmHWM" in last and "at batch 25 and " in last and "BATCH = 32 fits" in last
    assert "Starting training" not in log
