"""Validation through prebuilt batches (harness/validation.py) gives exactly the numbers of Ultralytics' own
validator with its own DataLoader: the same checkpoint, the same settings, every metric."""

import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import EASY_MAP_FLOOR, REPO
from easy_data import EASY_YAML, easy_image
from harness import runtime, validation

VAL_SIZES = 23  # images; with batch 16 and 5 the last batch is a short one


@pytest.fixture(scope="module")
def best_pt(easy_run):
    """best.pt of a short run of train.py on the easy dataset."""
    return easy_run[0] / "run" / "weights" / "best.pt"


@pytest.fixture(scope="module")
def varied_data(tmp_path_factory, easy_data):
    """The easy dataset, with a val split of images in many sizes and aspect ratios, JPEG and PNG: the rect
    batches differ in shape, and the letterbox scales some images down and others up."""
    root = tmp_path_factory.mktemp("varied")
    rng = np.random.default_rng(7)
    for sub in ("images", "labels"):
        (root / "valid" / sub).mkdir(parents=True)
    for i in range(VAL_SIZES):
        image, rows = easy_image(rng)
        # boxes are relative: resizing keeps the labels true
        w, h = (int(v) for v in rng.integers(40, 220, 2))
        suffix = ".jpg" if i % 2 else ".png"
        cv2.imwrite(str(root / "valid" / "images" / f"v{i:02d}{suffix}"), cv2.resize(image, (w, h)))
        (root / "valid" / "labels" / f"v{i:02d}.txt").write_text("".join(r + "\n" for r in rows))
    os.symlink(easy_data / "train", root / "train")
    (root / "data.yaml").write_text(EASY_YAML.replace("test: test/images\n", ""))
    return root / "data.yaml"


def validate(best_pt, data, tmp_path, loader, device="cpu", **settings):
    """Ultralytics' metrics of best_pt on data's val split, through `loader` ("prebuilt" or "ultralytics")."""
    runtime.configure_ultralytics()
    os.environ[validation.LOADER_ENV] = loader
    try:
        metrics = validation.validate(str(best_pt), data=str(data), device=device, plots=False,
                                      project=str(tmp_path), name=loader, **settings)
    finally:
        del os.environ[validation.LOADER_ENV]
    return metrics.results_dict


@pytest.mark.parametrize("settings", [{}, {"batch": 5}, {"batch": 5, "imgsz": 128},
                                      pytest.param({"device": "0"}, marks=pytest.mark.gpu),
                                      pytest.param({"device": "0", "quantize": 16}, marks=pytest.mark.gpu)])
def test_prebuilt_batches_give_ultralytics_own_metrics(best_pt, varied_data, tmp_path, settings):
    ours = validate(best_pt, varied_data, tmp_path, "prebuilt", **settings)
    theirs = validate(best_pt, varied_data, tmp_path, "ultralytics", **settings)
    # a comparison of real numbers, not of zeros
    assert theirs["metrics/mAP50-95(B)"] > EASY_MAP_FLOOR, theirs
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def test_prebuilt_batches_are_the_dataloaders_batches(best_pt, varied_data):
    runtime.configure_ultralytics()
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    args = get_cfg(overrides={"imgsz": 96, "rect": True, "mode": "val"})
    data = check_det_dataset(str(varied_data))
    dataset = build_yolo_dataset(args, data["val"], 5, data, mode="val", stride=32)
    theirs = list(build_dataloader(dataset, 5, workers=2, shuffle=False))
    ours = list(validation.PrebuiltBatches(dataset, 5, "cpu"))
    assert len(ours) == len(theirs) == 5
    assert len({tuple(b["img"].shape) for b in theirs}) > 2  # rect batches of several shapes
    for mine, their in zip(ours, theirs):
        assert mine.keys() == their.keys()
        for key, value in their.items():
            if hasattr(value, "shape"):
                assert mine[key].equal(value), key
            else:  # file names, original shapes, letterbox ratios and pads
                assert repr(mine[key]) == repr(value), key


def test_a_failing_prebuilt_path_falls_back_to_ultralytics_loader_and_says_so(best_pt, varied_data, tmp_path,
                                                                              monkeypatch, capsys):
    def broken(self):
        raise RuntimeError("no batches today")
        yield
    monkeypatch.setattr(validation.PrebuiltBatches, "__iter__", broken)
    ours = validate(best_pt, varied_data, tmp_path, "prebuilt")
    assert "prebuilt batches failed (RuntimeError: no batches today); again with Ultralytics' own loader" in \
        capsys.readouterr().out
    assert ours == validate(best_pt, varied_data, tmp_path, "ultralytics")


def test_kept_batches_validate_the_same_on_every_pass(best_pt, varied_data, tmp_path):
    # VAL = True: the trainer's validator goes over the same kept batches once an epoch
    runtime.configure_ultralytics()
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.models.yolo.detect import DetectionValidator
    data = check_det_dataset(str(varied_data))
    dataset = build_yolo_dataset(get_cfg(overrides={"imgsz": 96, "rect": True, "mode": "val"}), data["val"],
                                 16, data, mode="val", stride=32)
    kept = validation.PrebuiltBatches(dataset, 16, "cpu", keep=True)
    args = {"data": str(varied_data), "imgsz": 96, "batch": 16, "device": "cpu", "plots": False, "rect": True}
    passes = []
    for _ in range(2):
        validator = DetectionValidator(kept, save_dir=tmp_path / "kept", args=args)
        validator(model=str(best_pt))
        passes.append(validator.metrics.results_dict)
    theirs = validate(best_pt, varied_data, tmp_path, "ultralytics")
    assert theirs["metrics/mAP50-95(B)"] > EASY_MAP_FLOOR, theirs
    assert len(kept.kept) == 2  # both batches decoded once
    for ours in passes:
        assert ours == pytest.approx(theirs, abs=1e-6)


def test_bench_val_times_both_loaders_and_finds_no_difference(best_pt, varied_data):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "val.py"), "--weights", str(best_pt),
                           "--data", str(varied_data), "--imgsz", "96", "--repeat", "1", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    for loader in ("ultralytics", "prebuilt"):
        assert re.search(rf"^val 96 px, {loader}, pass 1 \(s; mAP50-95\) +[\d.]+; 0\.\d{{6}}$", out,
                         re.M), out
    maps = re.findall(r"; (0\.\d{6})$", out, re.M)
    assert len(maps) == 2 and maps[0] == maps[1] and float(maps[0]) > EASY_MAP_FLOOR, out
    assert re.search(r"^val 96 px: largest metric difference +0\.00e\+00$", out, re.M), out
