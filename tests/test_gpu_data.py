"""The GPU data pipeline (GPU_DATA = True): batches drawn like Ultralytics' own, every knob honoured or
refused, and a real run with it on and off. On CPU here; the same code runs on the GPU.

    python tests/test_gpu_data.py OUT.jpg   # draws Ultralytics' batches beside the GPU pipeline's (README)
"""

import random
import sys
import threading
from copy import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # also run as a script
from conftest import CACHE, assert_failed, make_repo, run_train, summary_of  # noqa: E402

from harness import gpu_data, runtime, synthetic  # noqa: E402
from harness.dataset import synthetic_dataset  # noqa: E402

IMGSZ = 160
SAMPLES = 512  # augmented images drawn from each pipeline


def build(args, data_yaml):
    """Ultralytics' augmenting training dataset, and the GPU pipeline's over the same files."""
    runtime.configure_ultralytics()
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    data = check_det_dataset(str(data_yaml))
    dataset = build_yolo_dataset(args, data["train"], 16, data, mode="train", stride=32)
    return dataset, gpu_data.GpuDataset(dataset, copy(args), torch.device("cpu"))


def cfg(**overrides):
    from ultralytics.cfg import get_cfg
    return get_cfg(overrides={"imgsz": IMGSZ, **overrides})


@pytest.fixture(scope="module")
def stats_data():
    """60 generated scenes: enough variety for box and pixel statistics."""
    root = CACHE / "stats-ships"
    if not root.exists():
        synthetic.generate_synthetic(root, {"train": 60, "valid": 4, "test": 4}, seed=3, workers=2)
    return root / "data.yaml"


def draw_ultralytics(dataset, n, seed=0):
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    items = [dataset[i % len(dataset)] for i in range(n)]
    boxes = [x["bboxes"].numpy() for x in items]
    return torch.stack([x["img"] for x in items]).float(), boxes


def draw_gpu(gpu, n, batch=64, seed=0):
    loader = gpu_data.GpuLoader(gpu, batch, seed)
    imgs, boxes = [], []
    while len(boxes) < n:  # epochs
        for b in loader:
            imgs.append(b["img"])
            idx = b["batch_idx"].long().numpy()
            boxes += [b["bboxes"].numpy()[idx == i] for i in range(len(b["img"]))]
    return torch.cat(imgs)[:n], boxes[:n]


def describe(imgs, boxes):
    """The numbers two equivalent pipelines must share."""
    allb = np.concatenate(boxes)
    return {
        "boxes per image": np.mean([len(b) for b in boxes]),
        "images without boxes": np.mean([len(b) == 0 for b in boxes]),
        "box x": allb[:, 0].mean(), "box y": allb[:, 1].mean(),
        "box x spread": allb[:, 0].std(), "box y spread": allb[:, 1].std(),
        "box width median": np.median(allb[:, 2]), "box height median": np.median(allb[:, 3]),
        "box width p90": np.quantile(allb[:, 2], 0.9), "box height p90": np.quantile(allb[:, 3], 0.9),
        "pixel mean": imgs.mean().item() / 255, "pixel spread": imgs.std().item() / 255,
        "red - blue": (imgs[:, 0].mean() - imgs[:, 2].mean()).item() / 255,
    }


TOLERANCE = {"boxes per image": 0.15, "images without boxes": 0.06, "box x": 0.03, "box y": 0.03,
             "box x spread": 0.03, "box y spread": 0.03, "box width median": 0.2, "box height median": 0.2,
             "box width p90": 0.2, "box height p90": 0.2, "pixel mean": 0.03, "pixel spread": 0.03,
             "red - blue": 0.03}
RELATIVE = {"boxes per image", "box width median", "box height median", "box width p90", "box height p90"}


@pytest.mark.parametrize("knobs", [
    {},                                                                     # train.py's defaults
    {"mosaic": 0.0, "degrees": 20.0, "shear": 5.0, "perspective": 0.0005,  # plain images, every warp,
     "flipud": 0.5, "mixup": 0.5, "hsv_h": 0.1, "scale": 0.3},              # mixup and strong colour
], ids=["defaults", "no-mosaic-all-warps-mixup"])
def test_gpu_batches_match_ultralytics_augmentation_statistically(stats_data, knobs):
    dataset, gpu = build(cfg(**knobs), stats_data)
    ours = describe(*draw_gpu(gpu, SAMPLES))
    theirs = describe(*draw_ultralytics(dataset, SAMPLES))
    for key, tol in TOLERANCE.items():
        diff = abs(ours[key] - theirs[key]) / (theirs[key] if key in RELATIVE else 1)
        assert diff <= tol, f"{key}: GPU pipeline {ours[key]:.4f}, Ultralytics {theirs[key]:.4f}"


def test_without_augmentation_the_image_is_letterboxed_and_boxes_stay_on_their_ships(stats_data):
    _, gpu = build(cfg(mosaic=0.0, translate=0.0, scale=0.0, fliplr=0.0, hsv_h=0, hsv_s=0, hsv_v=0), stats_data)
    batch = next(iter(gpu_data.GpuLoader(gpu, 8, 0)))
    i = int(batch["batch_idx"][0])
    src = cv2.imread(batch["im_file"][i])
    h, w = gpu.sizes[gpu.dataset.im_files.index(batch["im_file"][i])]
    top, left = (IMGSZ - h) / 2, (IMGSZ - w) / 2  # centred like Ultralytics' LetterBox
    expected = cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)[..., ::-1].astype(np.float32)
    got = batch["img"][i].permute(1, 2, 0).numpy()
    inner = got[int(np.ceil(top)) + 1:int(top + h) - 1, int(np.ceil(left)) + 1:int(left + w) - 1]
    assert np.abs(inner.mean() - expected.mean()) < 3  # same pixels, up to the half-pixel centring
    x, y, bw, bh = batch["bboxes"][0].numpy() * IMGSZ
    assert left <= x - bw / 2 and x + bw / 2 <= left + w + 1 and top <= y - bh / 2 and y + bh / 2 <= top + h + 1


def test_close_mosaic_turns_mosaic_and_mixup_off(stats_data):
    _, gpu = build(cfg(mixup=1.0), stats_data)
    rng = np.random.default_rng(0)
    assert (gpu.plan(np.arange(16), rng)["params"][:, 19] > 0).all()  # every image mixed
    gpu.close_mosaic(cfg())
    plan = gpu.plan(np.arange(16), rng)
    assert (plan["params"][:, 9] == 4 * IMGSZ).all()  # no mosaic centre: plain images only
    assert (plan["params"][:, 19] == 0).all()


@pytest.mark.parametrize("knobs", [{}, {"mosaic": 0.5, "degrees": 20.0, "shear": 5.0, "perspective": 0.0005,
                                          "flipud": 0.5, "mixup": 0.5, "hsv_h": 0.1}], ids=["defaults", "all-knobs"])
def test_the_triton_renderer_draws_what_the_torch_renderer_draws(stats_data, knobs, monkeypatch):
    """The GPU runs the Triton kernels; here Triton's interpreter runs them on the CPU."""
    _, gpu = build(cfg(**knobs), stats_data)
    plan = gpu.plan(gpu.index[:12], np.random.default_rng(0))
    tiles, params = torch.as_tensor(plan["tiles"]), torch.as_tensor(plan["params"])
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    gpu_data._triton_kernels.cache_clear()  # built anew under the interpreter, and after this test
    try:
        triton = gpu_data.render_triton(gpu.images, tiles, params, IMGSZ)
    finally:
        gpu_data._triton_kernels.cache_clear()
    torch_ = gpu_data.render_torch(gpu.images, tiles, params, IMGSZ)
    assert triton.dtype == torch.float16 and triton.shape == torch_.shape == (12, 3, IMGSZ, IMGSZ)
    # channels-last, like the model on CUDA, and still so after the trainer's preprocess
    assert (triton.float() / 255).is_contiguous(memory_format=torch.channels_last)
    diff = (triton.float() - torch_).abs()
    assert diff.mean() < 0.05  # half precision rounds 0..255 to 1/8 at most
    assert (diff > 1).float().mean() < 0.001  # a pixel on a tile seam may fall to the other side


def test_batches_are_planned_off_the_training_thread_in_seed_order(stats_data):
    _, gpu = build(cfg(), stats_data)
    planners, plan = [], gpu.plan
    gpu.plan = lambda idx, rng: planners.append(threading.current_thread()) or plan(idx, rng)
    epochs = [[b["im_file"] + [b["bboxes"]] for b in gpu_data.GpuLoader(gpu, 16, seed=0)] for _ in range(2)]
    assert len(planners) == 2 * 4  # one plan per batch, none wasted past an epoch's end
    assert threading.current_thread() not in planners
    for a, b in zip(*epochs):  # a seed draws the same batches every time
        assert a[:-1] == b[:-1] and torch.equal(a[-1], b[-1])


def test_images_kept_in_host_memory_give_the_same_batches(stats_data):
    """Images that do not fit on the GPU stay in host memory: each batch's distinct tiles travel instead."""
    _, gpu = build(cfg(mosaic=0.5), stats_data)
    on_device = [b["img"] for b in gpu_data.GpuLoader(gpu, 16, seed=0)]
    gpu.gather = True  # what a GPU too small for the images sets (the copy itself needs CUDA)
    gathered = [b["img"] for b in gpu_data.GpuLoader(gpu, 16, seed=0)]
    assert len(gathered) == 4 and all(torch.equal(a, b) for a, b in zip(on_device, gathered))
    gpu.close_mosaic(cfg())
    store, ids, _ = gpu.fetch(torch.as_tensor(gpu.plan(gpu.index[:16], np.random.default_rng(0))["tiles"]))
    assert len(store) == 16 and ids.shape == (16, 4)  # a plain image brings one tile, not four


def test_ddp_ranks_split_each_epoch_into_whole_batches(stats_data):
    _, gpu = build(cfg(), stats_data)
    seen = []
    for rank in (0, 1):  # 60 images, 2 ranks of 5 batches of 7: the first 10 again to fill the last batches
        loader = gpu_data.GpuLoader(gpu, 7, seed=0, rank=rank, world_size=2)
        assert len(loader.sampler) == 35 and len(loader) == 5
        batches = [b["im_file"] for b in loader]
        assert [len(b) for b in batches] == [7] * 5  # one input shape: cuDNN picks kernels once
        seen.append([f for b in batches for f in b])
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(gpu.dataset.im_files)


def test_a_knob_the_gpu_pipeline_lacks_is_refused_at_start(tiny_data, tmp_path):
    repo = make_repo(tmp_path, call_extra="copy_paste=0.5")
    rc, log = run_train(repo, tiny_data / "data.yaml")
    last = assert_failed(rc, log, "error: copy_paste=0.5 is not supported by the GPU data pipeline")
    assert "GPU_DATA = False" in last
    assert "Epoch" not in log


@pytest.mark.parametrize("gpu_data", ["True", "False"])
def test_a_real_run_trains_with_the_gpu_pipeline_on_and_off(tiny_data, tmp_path, gpu_data):
    repo = make_repo(tmp_path, {"GPU_DATA": gpu_data})
    rc, log = run_train(repo, tiny_data / "data.yaml")
    assert rc == 0, log[-2000:]
    assert float(summary_of(log)["train_images_per_s"]) > 0
    assert ("GPU data: 12 training images decoded" in log) == (gpu_data == "True")


def save_comparison(out_path, data_yaml=None, n=8):
    """Ultralytics' augmented images (top row) above the GPU pipeline's (bottom row), boxes drawn."""
    data_yaml = data_yaml or synthetic_dataset()
    dataset, gpu = build(cfg(imgsz=320), data_yaml)
    rows = []
    for imgs, boxes in (draw_ultralytics(dataset, n), draw_gpu(gpu, n, batch=n)):
        tiles = []
        for img, bb in zip(imgs, boxes):
            tile = np.ascontiguousarray(img.permute(1, 2, 0).numpy()[..., ::-1]).astype(np.uint8)
            for x, y, w, h in bb * 320:
                cv2.rectangle(tile, (int(x - w / 2), int(y - h / 2)), (int(x + w / 2), int(y + h / 2)), (0, 0, 255), 1)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, 1))
    cv2.imwrite(str(out_path), np.concatenate(rows, 0), [cv2.IMWRITE_JPEG_QUALITY, 80])


if __name__ == "__main__":
    save_comparison(sys.argv[1])
