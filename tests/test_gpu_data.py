"""The GPU data pipeline (GPU_DATA = True): batches drawn like Ultralytics' own, every knob honoured or
refused, and a real run with it on and off. On CPU here; the same code runs on the GPU.

    python tests/test_gpu_data.py OUT.jpg   # draws Ultralytics' batches beside the GPU pipeline's (README)
"""

import functools
import random
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

# also run as a script
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from conftest import CACHE, assert_failed, gpu_pipeline, make_repo, run_train, summary_of  # noqa: E402
from harness import gpu_data, synthetic  # noqa: E402
from harness.dataset import synthetic_dataset  # noqa: E402

IMGSZ = 160
SAMPLES = 512  # augmented images drawn from each pipeline


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
    dataset, gpu = gpu_pipeline(cfg(**knobs), stats_data)
    ours = describe(*draw_gpu(gpu, SAMPLES))
    theirs = describe(*draw_ultralytics(dataset, SAMPLES))
    for key, tol in TOLERANCE.items():
        diff = abs(ours[key] - theirs[key]) / (theirs[key] if key in RELATIVE else 1)
        assert diff <= tol, f"{key}: GPU pipeline {ours[key]:.4f}, Ultralytics {theirs[key]:.4f}"


def test_without_augmentation_the_image_is_letterboxed_and_boxes_stay_on_their_ships(stats_data):
    _, gpu = gpu_pipeline(cfg(mosaic=0.0, translate=0.0, scale=0.0, fliplr=0.0, hsv_h=0, hsv_s=0, hsv_v=0),
                   stats_data)
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
    assert (left <= x - bw / 2 and x + bw / 2 <= left + w + 1
            and top <= y - bh / 2 and y + bh / 2 <= top + h + 1)


def test_close_mosaic_turns_mosaic_and_mixup_off(stats_data):
    _, gpu = gpu_pipeline(cfg(mixup=1.0), stats_data)
    rng = np.random.default_rng(0)
    assert (gpu_data.unpack_params(gpu.plan(np.arange(16), rng).params).mix > 0).all()  # every image mixed
    gpu.close_mosaic(cfg())
    params = gpu_data.unpack_params(gpu.plan(np.arange(16), rng).params)
    assert (params.xc == 4 * IMGSZ).all()  # no mosaic centre: plain images only
    assert (params.mix == 0).all()


# ---------------------------------------------------------------------------
# Every knob alone, against Ultralytics' own augmentation of the same images
# ---------------------------------------------------------------------------
# The statistics above mix every knob: one knob ignored or mis-scaled moves them less than their tolerance.
# Here one knob at a time is on, the rest off, on images whose boxes are white squares of one class each: each
# image's warp is then read exactly off its boxes, and the squares' pixels show where the image itself went.
# Both pipelines draw images 0, 1, 2, ... as the dataset's j % len, so each one pairs with its plain (every
# knob off) self.

KNOB_IMGSZ = 96
MARKERS = 6           # white squares per image, square k labelled class k
MARKER_IMAGES = 24
OFF = dict(mosaic=0.0, mixup=0.0, degrees=0.0, translate=0.0, scale=0.0, shear=0.0, perspective=0.0,
           fliplr=0.0, flipud=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
# the trainer's device: GpuDataset compares it
DEVICES = ["cpu", pytest.param("cuda:0", marks=pytest.mark.gpu)]


def make_marker_data(root, side=10, seed=0):
    """MARKER_IMAGES images (144 x 108, every other one upright) of a smooth colour gradient, MARKERS white
    squares in their middle half, apart from each other."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for i in range(MARKER_IMAGES):
        w, h = (144, 108) if i % 2 == 0 else (108, 144)
        ends = np.stack([rng.uniform(0, 180, 2), rng.uniform(70, 140, 2),
                         rng.uniform(90, 170, 2)], 1)  # cv2's HSV
        ends = cv2.cvtColor(ends.astype(np.uint8)[None], cv2.COLOR_HSV2BGR)[0].astype(np.float32)
        a = rng.uniform(0, 2 * np.pi)
        y, x = np.mgrid[:h, :w]
        t = (((x - w / 2) * np.cos(a) + (y - h / 2) * np.sin(a)) / max(w, h) + 0.5)[..., None]
        img = (ends[0] * (1 - t) + ends[1] * t).round().astype(np.uint8)
        corners = []
        while len(corners) < MARKERS:
            c = np.round(rng.uniform([0.25 * w, 0.25 * h], [0.75 * w, 0.75 * h]) - side / 2).astype(int)
            if all(np.abs(c - d).max() > side + 6 for d in corners):
                corners.append(c)
        for x0, y0 in corners:
            img[y0:y0 + side, x0:x0 + side] = 255
        cv2.imwrite(str(root / "images" / f"{i:02d}.png"), img)
        rows = [f"{k} {(x0 + side / 2) / w} {(y0 + side / 2) / h} {side / w} {side / h}\n"
                for k, (x0, y0) in enumerate(corners)]
        (root / "labels" / f"{i:02d}.txt").write_text("".join(rows))
    names = [f"square{k}" for k in range(MARKERS)]
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images\nval: images\nnames: {names}\n")
    return root / "data.yaml"


@pytest.fixture(scope="module")
def marker_data():
    root = CACHE / "marker-ships"
    return root / "data.yaml" if root.exists() else make_marker_data(root)


def knob_cfg(**knobs):
    """Every augmentation knob off but these."""
    return cfg(imgsz=KNOB_IMGSZ, **{**OFF, **knobs})


def draw_indexed(pipeline, n, pixels=True, batch=16):
    """Images j = 0 .. n-1 (the dataset's j % len), seeded, from Ultralytics' dataset or a GpuDataset (which
    plans each batch on the CPU and, with pixels, draws it on its device: with the Triton kernels on CUDA):
    (images [n, 3, S, S] RGB on the CPU, or None; [(boxes [m, 4] xywh in pixels, classes [m])] per image)."""
    if not isinstance(pipeline, gpu_data.GpuDataset):
        random.seed(0), np.random.seed(0), torch.manual_seed(0)
        items = [pipeline[j % len(pipeline)] for j in range(n)]
        imgs = torch.stack([x["img"] for x in items]).float() if pixels else None
        return imgs, [(x["bboxes"].numpy() * KNOB_IMGSZ, x["cls"].numpy().ravel().astype(int)) for x in items]
    rng, imgs, draws = np.random.default_rng(0), [], []
    for a in range(0, n, batch):
        p = pipeline.plan(pipeline.index[np.arange(a, min(a + batch, n)) % len(pipeline)], rng)
        if pixels:
            imgs.append(pipeline.render(torch.as_tensor(p.tiles), torch.as_tensor(p.params)).float().cpu())
        draws += [(p.bboxes[p.batch_idx == i] * KNOB_IMGSZ, p.cls[p.batch_idx == i].ravel().astype(int))
                  for i in range(min(batch, n - a))]
    return (torch.cat(imgs) if pixels else None), draws


@functools.cache  # the plain draws serve many tests, and a GPU machine's cuda variants compare with the same
def ultralytics_draws(data_yaml, n, pixels=True, **knobs):
    """Ultralytics' images j = 0 .. n-1 with only these knobs on (draw_indexed); cached: do not modify
    them."""
    return draw_indexed(gpu_pipeline(knob_cfg(**knobs), data_yaml)[0], n, pixels)


@functools.cache
def gpu_draws(data_yaml, device, n, pixels=True, **knobs):
    """The GPU pipeline's images j = 0 .. n-1 with only these knobs on, on device (draw_indexed); cached."""
    return draw_indexed(gpu_pipeline(knob_cfg(**knobs), data_yaml, device)[1], n, pixels)


def both(device):
    """(name, draws) of Ultralytics' pipeline and the GPU pipeline's on device."""
    return ("Ultralytics", ultralytics_draws), ("GPU", functools.partial(gpu_draws, device=device))


def by_class(draws):
    """The plain images' boxes (every knob off): [image, class] -> xywh in pixels."""
    plain = np.full((MARKER_IMAGES, MARKERS, 4), np.nan)
    for j, (boxes, cls) in enumerate(draws[:MARKER_IMAGES]):
        plain[j, cls] = boxes
    assert not np.isnan(plain).any()
    return plain


def has_boxes(draws, plain, flip=None, tol=0.5):
    """Per image: its boxes are exactly its plain self's (to tol pixels), mirrored in x (flip=0) or y
    (flip=1)."""
    plain = plain.copy()
    if flip is not None:
        plain[..., flip] = KNOB_IMGSZ - plain[..., flip]
    return np.array([len(c) == MARKERS and np.abs(b - plain[j % len(plain), c]).max() < tol
                     for j, (b, c) in enumerate(draws)])


def fitted_warps(draws, plain):
    """Per image, the homography that takes its plain self's box centres to its own (both centred on the
    middle)."""
    out = []
    for j, (boxes, cls) in enumerate(draws):
        assert len(cls) == len(set(cls)) >= 4, "a square went missing: keep the warps small enough"
        src, dst = plain[j % len(plain), cls, :2] - KNOB_IMGSZ / 2, boxes[:, :2] - KNOB_IMGSZ / 2
        h = cv2.findHomography(src.astype(np.float64), dst.astype(np.float64), 0)[0]
        out.append(h / h[2, 2])
    return np.array(out)


def squares_off_their_boxes(imgs, draws):
    """Per box, how far (pixels) the white square's centre of mass in it lies from its centre."""
    white = ((imgs.min(1).values - 180) / 75).clamp(0, 1).numpy()  # squares 1, the gradient 0, edges between
    out = []
    for w, (boxes, _) in zip(white, draws):
        for x, y, bw, bh in boxes:  # pixel i covers [i, i + 1) in box coordinates
            x0, y0 = int(max(x - bw / 2 - 1, 0)), int(max(y - bh / 2 - 1, 0))
            patch = w[y0:int(np.ceil(y + bh / 2 + 1)), x0:int(np.ceil(x + bw / 2 + 1))]
            ys, xs = np.mgrid[:patch.shape[0], :patch.shape[1]] + 0.5
            m = patch.sum() + 1e-9
            out.append(np.hypot((patch * xs).sum() / m + x0 - x, (patch * ys).sum() / m + y0 - y))
    return np.array(out)


def assert_uniform_like_ultralytics(draws, value, what):
    """draws {pipeline: [image, n]}, drawn uniformly in -value..value by Ultralytics: the GPU pipeline's
    spread (value / sqrt(3)) and extent (the largest |x|: value, less value / images on average) match, column
    by column."""
    stats = {k: np.array([x.std(0), np.abs(x).max(0)]) for k, x in draws.items()}
    # the statistic measures the knob
    assert np.allclose(stats["Ultralytics"], [[value / 3 ** 0.5], [value]], rtol=0.2)
    assert np.allclose(stats["GPU"][0], stats["Ultralytics"][0], rtol=0.2), f"{what}: spread {stats}"
    assert np.allclose(stats["GPU"][1], stats["Ultralytics"][1], rtol=0.1), f"{what}: extent {stats}"


# knob: (value, what an image's fitted homography (from its plain self, centred) says of it, one column per
# axis)
WARPS = {
    "degrees": (20.0, lambda h: np.degrees(np.arctan2(h[:, 0, 1], h[:, 0, 0]))[:, None]),
    "shear": (10.0, lambda h: np.degrees(np.arctan(h[:, [0, 1], [1, 0]]))),  # x and y
    "perspective": (0.002, lambda h: h[:, 2, :2]),
    "translate": (0.15, lambda h: h[:, :2, 2] / KNOB_IMGSZ),
    "scale": (0.5, lambda h: np.sqrt(np.linalg.det(h[:, :2, :2]))[:, None] - 1),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("knob", list(WARPS))
def test_a_warp_knob_alone_moves_boxes_and_pixels_as_far_as_in_ultralytics(marker_data, knob, device):
    """Each image's warp, fitted to its boxes, is drawn as widely as Ultralytics draws it; its pixels went
    along."""
    value, measure = WARPS[knob]
    warps = {}
    for name, draw in both(device):
        plain = by_class(draw(marker_data, n=MARKER_IMAGES, pixels=False)[1])
        warps[name] = measure(fitted_warps(draw(marker_data, n=256, pixels=False, **{knob: value})[1], plain))
        off = squares_off_their_boxes(*draw(marker_data, n=32, **{knob: value}))
        assert (off < 1).all(), f"{name}: the squares' pixels lie up to {off.max():.1f} px off their boxes"
    assert_uniform_like_ultralytics(warps, value, f"{knob}={value}")


def test_with_every_knob_off_both_pipelines_letterbox_the_same_boxes_and_pixels(marker_data):
    """The plain images every test below measures against: the same in both pipelines."""
    theirs, ours = ultralytics_draws(marker_data, MARKER_IMAGES), gpu_draws(marker_data, "cpu", MARKER_IMAGES)
    assert np.abs(by_class(theirs[1]) - by_class(ours[1])).max() < 0.01  # boxes, in pixels
    assert (theirs[0] - ours[0]).abs().max() < 0.1  # the same pixels: a whole-pixel shift, no resampling


def colour_changes(imgs, plain, knob):
    """Per image, on the gradient's coloured pixels: how far its hue turned (in turns), or by what factor its
    saturation or value changed, minus 1, against its plain self."""
    out = []
    for j, img in enumerate(imgs):
        a, b = (cv2.cvtColor(x.permute(1, 2, 0).numpy() / 255, cv2.COLOR_RGB2HSV)
                for x in (plain[j % len(plain)], img))
        keep = (a[..., 1] > 0.15) & (a[..., 2] > 0.2)  # not the grey border, not the white squares
        if knob == "hsv_h":
            out.append(np.median((b[..., 0] - a[..., 0] + 180)[keep] % 360 - 180) / 360)  # degrees -> turns
        else:
            c = 1 if knob == "hsv_s" else 2
            out.append(np.median(b[..., c][keep] / a[..., c][keep]) - 1)
    return np.array(out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("knob, value", [("hsv_h", 0.1), ("hsv_s", 0.5), ("hsv_v", 0.4)])
def test_an_hsv_knob_alone_changes_colours_as_far_as_in_ultralytics(marker_data, knob, value, device):
    """Each image's hue turn, or saturation or value gain, read off its pixels, is drawn as widely as
    Ultralytics'."""
    changes = {}
    for name, draw in both(device):
        plain = draw(marker_data, n=MARKER_IMAGES)[0]
        changes[name] = colour_changes(draw(marker_data, n=64, **{knob: value})[0], plain, knob)[:, None]
    assert_uniform_like_ultralytics(changes, value, f"{knob}={value}")


@pytest.mark.parametrize("device", DEVICES)
def test_mosaic_tiles_as_many_images_as_ultralytics_with_as_many_boxes(marker_data, device):
    """A plain image keeps its own boxes; a mosaic shows as many squares of its four tiles as Ultralytics'
    do."""
    seen = {}
    for name, draw in both(device):
        plain = by_class(draw(marker_data, n=MARKER_IMAGES, pixels=False)[1])
        _, draws = draw(marker_data, n=512, pixels=False, mosaic=0.5)
        tiled = ~has_boxes(draws, plain)
        seen[name] = tiled.mean(), np.mean([len(c) for (_, c), t in zip(draws, tiled) if t])
    assert abs(seen["Ultralytics"][0] - 0.5) < 0.1
    assert abs(seen["GPU"][0] - seen["Ultralytics"][0]) < 0.1, f"share of mosaics {seen}"
    assert np.isclose(seen["GPU"][1], seen["Ultralytics"][1], rtol=0.15), f"boxes per mosaic {seen}"


def blend_ratios(imgs, draws, plain, plain_imgs):
    """Per image blended with another (its partner's boxes follow its own): its own share of the pixels."""
    out = []
    for j, (img, (boxes, cls)) in enumerate(zip(imgs, draws)):
        if len(cls) == 2 * MARKERS:
            mate = np.abs(plain[:, cls[MARKERS:]] - boxes[MARKERS:]).max((1, 2)).argmin()
            own, other = plain_imgs[j % len(plain)], plain_imgs[mate]
            if (own - other).abs().mean() > 10:  # not blended with itself
                out.append(((img - other) * (own - other)).sum().item() / ((own - other) ** 2).sum().item())
    return np.array(out)


@pytest.mark.parametrize("device", DEVICES)
def test_mixup_blends_as_many_images_as_ultralytics_half_and_half(marker_data, device):
    """A blended image carries its partner's boxes after its own, and about half of its partner's pixels."""
    share, ratio = {}, {}
    for name, draw in both(device):
        plain_imgs, plain = draw(marker_data, n=MARKER_IMAGES)
        plain = by_class(plain)
        _, draws = draw(marker_data, n=512, pixels=False, mixup=0.5)
        mixed = np.array([len(c) == 2 * MARKERS for _, c in draws])
        # own boxes first
        assert (has_boxes([(b[:MARKERS], c[:MARKERS]) for b, c in draws], plain) | ~mixed).all()
        assert ((np.array([len(c) for _, c in draws]) == MARKERS) | mixed).all()
        share[name] = mixed.mean()
        ratio[name] = blend_ratios(*draw(marker_data, n=64, mixup=0.5), plain, plain_imgs)
        # Beta(32, 32): 0.5, give or take 0.06
        assert ((0.25 < ratio[name]) & (ratio[name] < 0.75)).all(), name
    assert abs(share["Ultralytics"] - 0.5) < 0.1
    assert abs(share["GPU"] - share["Ultralytics"]) < 0.1, f"share of blended images {share}"
    assert abs(ratio["GPU"].mean() - ratio["Ultralytics"].mean()) < 0.05, f"blend ratios {ratio}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("knob, axis", [("fliplr", 0), ("flipud", 1)])
def test_a_flip_knob_mirrors_as_many_images_as_ultralytics(marker_data, knob, axis, device):
    """Each image's boxes are its plain self's, or mirrored on that axis; as many mirrored as in
    Ultralytics."""
    share = {}
    for name, draw in both(device):
        plain = by_class(draw(marker_data, n=MARKER_IMAGES, pixels=False)[1])
        _, draws = draw(marker_data, n=512, pixels=False, **{knob: 0.5})
        mirrored = has_boxes(draws, plain, flip=axis)
        assert (mirrored | has_boxes(draws, plain)).all()  # mirrored the right way, or not at all
        share[name] = mirrored.mean()
    assert abs(share["Ultralytics"] - 0.5) < 0.1
    assert abs(share["GPU"] - share["Ultralytics"]) < 0.1, f"share of images mirrored by {knob}=0.5: {share}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("knob, axis", [("fliplr", 0), ("flipud", 1)])
def test_a_flip_knob_at_one_mirrors_every_box_and_pixel(marker_data, knob, axis, device):
    """Same seed, the knob at 1 against 0, every other knob on: the same images, mirrored, like
    Ultralytics'."""
    knobs = dict(mosaic=1.0, mixup=0.5, degrees=10.0, shear=3.0, translate=0.1, scale=0.3, hsv_h=0.05,
                 hsv_s=0.5, hsv_v=0.4)
    for name, draw in both(device):
        imgs, draws = draw(marker_data, n=16, **knobs)
        flipped, flipped_draws = draw(marker_data, n=16, **knobs, **{knob: 1.0})
        for (b, c), (fb, fc) in zip(draws, flipped_draws):
            assert len(b) and (c == fc).all(), name
            mirror = b.copy()
            mirror[:, axis] = KNOB_IMGSZ - b[:, axis]
            assert np.abs(fb - mirror).max() < 1e-3, name
        diff = (flipped - imgs.flip(3 - axis)).abs()
        # a sample on a tile's seam may flip
        assert diff.mean() < 0.05 and (diff > 1).float().mean() < 0.001, name


def test_the_trainers_close_mosaic_leaves_plain_images_in_both_pipelines(marker_data):
    """Ultralytics' trainer calls its train loader's dataset.close_mosaic(hyp) for the last CLOSE_MOSAIC
    epochs."""
    from ultralytics.engine.trainer import BaseTrainer
    args = knob_cfg(mosaic=1.0, mixup=1.0)
    dataset, gpu = gpu_pipeline(args, marker_data)
    loaders = SimpleNamespace(dataset=dataset), gpu_data.GpuLoader(gpu, 16, 0)
    for (name, draw), loader in zip(both("cpu"), loaders):
        plain = by_class(draw(marker_data, n=MARKER_IMAGES, pixels=False)[1])
        # all mosaics
        assert not has_boxes(draw_indexed(loader.dataset, 32, pixels=False)[1], plain).any(), name
        BaseTrainer._close_dataloader_mosaic(SimpleNamespace(train_loader=loader, args=args))
        assert has_boxes(draw_indexed(loader.dataset, 32, pixels=False)[1], plain).all(), name


@pytest.mark.parametrize("knobs", [{}, {"mosaic": 0.5, "degrees": 20.0, "shear": 5.0, "perspective": 0.0005,
                                          "flipud": 0.5, "mixup": 0.5, "hsv_h": 0.1}],
                         ids=["defaults", "all-knobs"])
def test_the_triton_renderer_draws_what_the_torch_renderer_draws(stats_data, knobs, monkeypatch):
    """The GPU runs the Triton kernels; here Triton's interpreter runs them on the CPU."""
    _, gpu = gpu_pipeline(cfg(**knobs), stats_data)
    plan = gpu.plan(gpu.index[:12], np.random.default_rng(0))
    tiles, params = torch.as_tensor(plan.tiles), torch.as_tensor(plan.params)
    triton = interpreted_triton(gpu.store, tiles, params, IMGSZ, monkeypatch)
    torch_ = gpu_data.render_torch(gpu.store, tiles, params, IMGSZ)
    assert triton.dtype == torch.float16 and triton.shape == torch_.shape == (12, 3, IMGSZ, IMGSZ)
    # channels-last, like the model on CUDA, and still so after the trainer's preprocess
    assert (triton.float() / 255).is_contiguous(memory_format=torch.channels_last)
    diff = (triton.float() - torch_).abs()
    assert diff.mean() < 0.05  # half precision rounds 0..255 to 1/8 at most
    assert (diff > 1).float().mean() < 0.001  # a pixel on a tile seam may fall to the other side


def interpreted_triton(store, tiles, params, s, monkeypatch):
    """render_triton's batch, its kernels run by Triton's interpreter on the CPU."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    gpu_data.triton_render.kernels.cache_clear()  # built anew under the interpreter, and after this test
    try:
        return gpu_data.render_triton(store, tiles, params, s)
    finally:
        gpu_data.triton_render.kernels.cache_clear()


def test_both_renderers_read_the_params_columns_from_the_one_layout(stats_data, monkeypatch):
    """plan_batch writes the params rows through plan.LAYOUT and both renderers read them through it: with its
    fields in the reverse order, every choice lands in other columns and the same batch is drawn."""
    _, gpu = gpu_pipeline(cfg(mosaic=0.5, degrees=20.0, perspective=0.0005, mixup=0.5, hsv_h=0.1), stats_data)

    def draw():
        p = gpu.plan(gpu.index[:6], np.random.default_rng(0))
        tiles, params = torch.as_tensor(p.tiles), torch.as_tensor(p.params)
        return (p, gpu_data.render_torch(gpu.store, tiles, params, IMGSZ),
                interpreted_triton(gpu.store, tiles, params, IMGSZ, monkeypatch))

    plan, torch_, triton = draw()
    choices = gpu_data.unpack_params(plan.params)
    assert 0 < choices.mix.sum() < 6 and 0 < (choices.xc < 4 * IMGSZ).sum() < 6  # some mixed, some mosaics
    layout = gpu_data.plan.LAYOUT
    monkeypatch.setattr(gpu_data.plan, "LAYOUT", layout.of(layout.width, gpu_data.plan.Params._fields[::-1]))
    moved, moved_torch, moved_triton = draw()
    assert all(not np.array_equal(a, b) for a, b in zip(plan.params.T, moved.params.T))  # every column moved
    assert np.array_equal(plan.bboxes, moved.bboxes) and np.array_equal(plan.tiles, moved.tiles)
    assert torch.equal(torch_, moved_torch) and torch.equal(triton, moved_triton)


def resized_store(dataset):
    """The store as it was before images were kept at their own size: every image resized by Ultralytics' own
    load_image (the long side to imgsz, smaller images scaled up), each as big as Ultralytics trains it."""
    ims = [dataset.load_image(i)[0] for i in range(len(dataset))]
    return gpu_data.ImageStore.pack(ims, np.array([im.shape[:2] for im in ims], np.int64))


def test_images_are_stored_at_their_own_size_with_the_long_side_capped_at_imgsz(stats_data):
    dataset, gpu = gpu_pipeline(cfg(imgsz=320), stats_data)
    own = np.array([cv2.imread(f).shape[:2] for f in dataset.im_files])
    table = gpu.store.table.numpy()
    stored, resized = (table[:, [gpu_data.M_STORED_H, gpu_data.M_STORED_W]],
                       table[:, [gpu_data.M_H, gpu_data.M_W]])
    small = own.max(1) <= 320
    assert 0 < small.sum() < len(own)  # the test sees both kinds
    assert (stored[small] == own[small]).all() and (stored[~small] == resized[~small]).all()
    assert (resized.max(1) == 320).all() and (resized == gpu.sizes).all()
    assert (gpu.store.nbytes == (stored.prod(1) * 3).sum() < resized_store(dataset).nbytes
            < len(own) * 320 * 320 * 3)


@pytest.mark.parametrize("knobs", [{}, {"mosaic": 0.5, "degrees": 20.0, "shear": 5.0, "perspective": 0.0005,
                                          "flipud": 0.5, "mixup": 0.5, "hsv_h": 0.1}],
                         ids=["defaults", "all-knobs"])
def test_images_at_their_own_size_draw_the_batches_that_resized_ones_drew(stats_data, knobs):
    """The warp resizes a small image as it samples it: the same choices give the same batches as a store of
    images resized beforehand, as Ultralytics resizes them (its statistics within the tolerances above, pixel
    by pixel within half a grey level on average)."""
    dataset, gpu = gpu_pipeline(cfg(imgsz=320, **knobs), stats_data)
    rng = np.random.default_rng(0)
    plans = [gpu.plan(gpu.index[a:a + 16], rng) for a in range(0, len(gpu), 16)]
    draws = {}
    for name, store in (("own size", gpu.store), ("resized", resized_store(dataset))):
        imgs = [gpu_data.render_torch(store, torch.as_tensor(p.tiles), torch.as_tensor(p.params), 320)
                for p in plans]
        boxes = [p.bboxes[p.batch_idx == i] for p in plans for i in range(len(p.tiles))]
        draws[name] = torch.cat(imgs), boxes
    ours, theirs = describe(*draws["own size"]), describe(*draws["resized"])
    for key, tol in TOLERANCE.items():
        diff = abs(ours[key] - theirs[key]) / (theirs[key] if key in RELATIVE else 1)
        assert diff <= tol, f"{key}: own size {ours[key]:.4f}, resized {theirs[key]:.4f}"
    assert (draws["own size"][0] - draws["resized"][0]).abs().mean() < 0.5


def test_images_stored_at_their_resized_size_sample_the_same_as_padded_tiles(stats_data):
    """The CPU's faster path (grid_sample over padded tiles) draws what the general one draws."""
    dataset, gpu = gpu_pipeline(cfg(mosaic=0.5, degrees=20.0), stats_data)
    store = resized_store(dataset)
    p = gpu.plan(gpu.index[:12], np.random.default_rng(0))
    tiles, params = torch.as_tensor(p.tiles), torch.as_tensor(p.params)
    fast, general = (gpu_data.warp_torch(store, tiles, params, IMGSZ, padded) for padded in (None, False))
    assert (fast - general).abs().max() < 0.01


def test_with_every_knob_off_a_small_image_is_scaled_up_as_ultralytics_scales_it(marker_data):
    """The marker images (144 x 108) at imgsz 192: Ultralytics resizes them up before it letterboxes them, the
    GPU pipeline draws the resize in its warp. The same boxes, and the same pixels to within two grey levels
    (one bilinear sample where Ultralytics takes two in a row)."""
    dataset, gpu = gpu_pipeline(cfg(imgsz=192, **OFF), marker_data)
    theirs = torch.stack([dataset[j]["img"] for j in range(8)]).float()
    their_boxes = [dataset[j]["bboxes"].numpy() for j in range(8)]
    p = gpu.plan(gpu.index[:8], np.random.default_rng(0))
    ours = gpu.render(torch.as_tensor(p.tiles), torch.as_tensor(p.params)).float()
    for j in range(8):
        assert np.abs(p.bboxes[p.batch_idx == j] - their_boxes[j]).max() * 192 < 0.01
    diff = (ours - theirs).abs()
    assert diff.mean() < 0.2 and diff.max() < 2, (diff.mean(), diff.max())


def test_batches_are_planned_off_the_training_thread_in_seed_order(stats_data):
    _, gpu = gpu_pipeline(cfg(), stats_data)
    planners, plan = [], gpu.plan
    gpu.plan = lambda idx, rng: planners.append(threading.current_thread()) or plan(idx, rng)
    epochs = [[b["im_file"] + [b["bboxes"]] for b in gpu_data.GpuLoader(gpu, 16, seed=0)] for _ in range(2)]
    assert len(planners) == 2 * 4  # one plan per batch, none wasted past an epoch's end
    assert threading.current_thread() not in planners
    for a, b in zip(*epochs):  # a seed draws the same batches every time
        assert a[:-1] == b[:-1] and torch.equal(a[-1], b[-1])


def test_images_kept_in_host_memory_give_the_same_batches(stats_data):
    """Images that do not fit on the GPU stay in host memory: each batch's distinct tiles travel instead."""
    _, gpu = gpu_pipeline(cfg(mosaic=0.5), stats_data)
    on_device = [b["img"] for b in gpu_data.GpuLoader(gpu, 16, seed=0)]
    gpu.gather = True  # what a GPU too small for the images and the model sets (the copy itself needs CUDA)
    gathered = [b["img"] for b in gpu_data.GpuLoader(gpu, 16, seed=0)]
    assert len(gathered) == 4 and all(torch.equal(a, b) for a, b in zip(on_device, gathered))
    gpu.close_mosaic(cfg())
    store, ids, _ = gpu.fetch(torch.as_tensor(gpu.plan(gpu.index[:16], np.random.default_rng(0)).tiles))
    assert len(store.table) == 16 and ids.shape == (16, 4)  # a plain image brings one image, not four


def test_ddp_ranks_split_each_epoch_into_whole_batches(stats_data):
    _, gpu = gpu_pipeline(cfg(), stats_data)
    seen = []
    for rank in (0, 1):  # 60 images, 2 ranks of 5 batches of 7: the first 10 again to fill the last batches
        loader = gpu_data.GpuLoader(gpu, 7, seed=0, rank=rank, world_size=2)
        assert len(loader.sampler) == 35 and len(loader) == 5
        batches = [b["im_file"] for b in loader]
        assert [len(b) for b in batches] == [7] * 5  # one input shape: cuDNN picks kernels once
        seen.append([f for b in batches for f in b])
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(gpu.dataset.im_files)


# prepare.GPU_UNSUPPORTED
@pytest.mark.parametrize("knob", ["copy_paste=0.5", "cutmix=0.5", "bgr=0.5", "rect=True"])
def test_a_knob_the_gpu_pipeline_lacks_is_refused_at_start(tiny_data, tmp_path, knob):
    repo = make_repo(tmp_path, call_extra=knob)
    rc, log = run_train(repo, tiny_data / "data.yaml")
    last = assert_failed(rc, log, f"error: {knob} is not supported by the GPU data pipeline")
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
    dataset, gpu = gpu_pipeline(cfg(imgsz=320), data_yaml)
    rows = []
    for imgs, boxes in (draw_ultralytics(dataset, n), draw_gpu(gpu, n, batch=n)):
        tiles = []
        for img, bb in zip(imgs, boxes):
            tile = np.ascontiguousarray(img.permute(1, 2, 0).numpy()[..., ::-1]).astype(np.uint8)
            for x, y, w, h in bb * 320:
                cv2.rectangle(tile, (int(x - w / 2), int(y - h / 2)), (int(x + w / 2), int(y + h / 2)),
                              (0, 0, 255), 1)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, 1))
    cv2.imwrite(str(out_path), np.concatenate(rows, 0), [cv2.IMWRITE_JPEG_QUALITY, 80])


if __name__ == "__main__":
    save_comparison(sys.argv[1])
