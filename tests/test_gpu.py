"""What only a CUDA GPU runs: the compiled Triton kernels, decoding onto the GPU, images kept in host memory
and copied on a side stream, peak memory against NVML, real runs on one GPU and over two. Marked gpu: skipped,
with the reason shown, where PyTorch sees no CUDA device; run them with `uv run pytest -m gpu` on a GPU
machine."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, assert_failed, gpu_pipeline, make_repo, run_train, summary_of
from harness import gpu_data, runtime

pytestmark = pytest.mark.gpu
IMGSZ = 160
ALL_KNOBS = {"mosaic": 0.5, "degrees": 20.0, "shear": 5.0, "perspective": 0.0005, "flipud": 0.5, "mixup": 0.5,
             "hsv_h": 0.1}


def gpu_dataset(data_yaml, device="cuda:0", fits_on_gpu=None, **knobs):
    """The GPU pipeline's training set over a dataset, built as prepare.Trainer builds it (on cuda:0, as the
    trainer names its device)."""
    runtime.configure_ultralytics()
    from ultralytics.cfg import get_cfg
    return gpu_pipeline(get_cfg(overrides={"imgsz": IMGSZ, **knobs}), data_yaml, device, fits_on_gpu)[1]


@pytest.mark.parametrize("knobs", [{}, ALL_KNOBS], ids=["defaults", "all-knobs"])
def test_the_compiled_kernels_draw_what_the_torch_renderer_draws(tiny_data, knobs):
    gpu = gpu_dataset(tiny_data / "data.yaml", **knobs)
    plan = gpu.plan(gpu.index, np.random.default_rng(0))
    tiles, params = torch.as_tensor(plan.tiles).cuda(), torch.as_tensor(plan.params).cuda()
    triton = gpu_data.render_triton(gpu.store, tiles, params, IMGSZ)
    torch_ = gpu_data.render_torch(gpu.store, tiles, params, IMGSZ)
    assert triton.dtype == torch.float16 and triton.shape == torch_.shape == (len(gpu), 3, IMGSZ, IMGSZ)
    assert (triton.float() / 255).is_contiguous(memory_format=torch.channels_last)
    diff = (triton.float() - torch_).abs()
    assert diff.mean() < 0.05  # half precision rounds 0..255 to 1/8 at most
    assert (diff > 1).float().mean() < 0.001  # a pixel on a tile seam may fall to the other side


def test_images_kept_in_host_memory_travel_on_a_side_stream_and_draw_the_same_batches(tiny_data):
    on_device = gpu_dataset(tiny_data / "data.yaml", mosaic=0.5)
    # the plan's no
    in_host = gpu_dataset(tiny_data / "data.yaml", fits_on_gpu=lambda nbytes: False, mosaic=0.5)
    assert on_device.store.pixels.is_cuda and not on_device.gather
    assert in_host.store.pixels.is_pinned() and in_host.gather and in_host.copy_stream is not None
    for epoch in range(2):
        a = [b["img"] for b in gpu_data.GpuLoader(on_device, 4, seed=epoch)]
        b = [b["img"] for b in gpu_data.GpuLoader(in_host, 4, seed=epoch)]
        assert len(a) == len(b) == 3 and all(x.is_cuda and torch.equal(x, y) for x, y in zip(a, b))


PEAK = """
import json, torch
from harness.device import peak_vram_mb, process_gpu_mb
x = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB, held until the end
torch.cuda.synchronize()
print(json.dumps({"peak": peak_vram_mb(0), "nvml": process_gpu_mb(0),
                  "torch": torch.cuda.max_memory_reserved(0) / 2**20}))
"""


def test_peak_vram_mb_is_what_nvml_shows_for_the_process():
    out = subprocess.run([sys.executable, "-c", PEAK], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    mb = json.loads(out.stdout.strip().splitlines()[-1])
    assert mb["nvml"], "NVML does not see this process: peak_vram_mb would miss the CUDA context"
    assert mb["torch"] >= 1024 and mb["nvml"] > mb["torch"]  # the CUDA context and libraries come on top
    assert mb["peak"] == pytest.approx(mb["nvml"], abs=1.0)  # nothing was freed: the peak is what NVML shows


def test_a_real_run_on_one_gpu_trains_from_images_decoded_onto_it(tiny_data, tmp_path):
    repo = make_repo(tmp_path, knobs={"IMGSZ": str(IMGSZ), "BATCH": "8", "NBS": "8"})
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=10)
    assert rc == 0, log[-3000:]
    summary = summary_of(log)
    assert summary["device"].startswith("cuda:0 ") and float(summary["peak_vram_mb"]) > 0
    assert "GPU data: 12 training images decoded" in log and "GB in GPU" in log


def test_a_ddp_run_over_two_gpus_reports_each_card(tiny_data, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two CUDA GPUs, this machine has {torch.cuda.device_count()}")
    repo = make_repo(tmp_path, knobs={"DEVICE": "[0, 1]", "IMGSZ": str(IMGSZ), "BATCH": "8", "NBS": "8"})
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=20)
    assert rc == 0, log[-3000:]
    summary = summary_of(log)
    assert summary["device"].startswith("cuda:0,1 2 x ")
    assert log.count("GPU data: 12 training images decoded") == 2  # one copy of the training set per GPU
    per_gpu = log.split("DDP: peak GPU memory (MB) per GPU: ")[1].split(";")[0]
    mb = dict(item.split(": ") for item in per_gpu.split(", "))
    assert sorted(mb) == ["0", "1"] and float(summary["peak_vram_mb"]) == max(map(float, mb.values())) > 0
    reports = [json.loads((repo / "run" / f"ddp-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["gpu"] for r in reports] == [0, 1] and reports[0]["epoch"] == reports[1]["epoch"]


def test_a_batch_that_does_not_fit_beside_a_blocker_ends_before_the_clock_naming_one_that_does(tiny_data,
                                                                                               tmp_path):
    """The memory plan on CUDA, with 4 GiB of the card left free by another process: BATCH = 256 at 640 px
    ends before the first step, and the batch its line names then trains, as itself."""
    from cards import card_with
    knobs = {"IMGSZ": "640", "BATCH": "256", "NBS": "256"}
    with card_with(4):
        rc, log = run_train(make_repo(tmp_path, knobs), tiny_data / "data.yaml", budget=10)
        last = assert_failed(rc, log, "error: BATCH = 256 does not fit on cuda:0 ")
        assert "Epoch" not in log.split("error: BATCH")[0]  # no training step was taken
        assert "supervisor: another process holds memory on this run's GPU, GPU 0: pid " in log  # the blocker
        fits = int(last.split(" fits (")[0].rsplit("BATCH = ", 1)[1])
        repo = make_repo(tmp_path, {**knobs, "BATCH": str(fits), "NBS": str(fits)}, name="fits")
        rc, log = run_train(repo, tiny_data / "data.yaml", budget=10)
    assert rc == 0, log[-3000:]
    assert summary_of(log)["batch"] == str(fits) and "memory plan: a training step at batch" in log
