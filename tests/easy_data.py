"""An "easy" dataset for tests that compare metrics: a few seconds of CPU training learn it.

The tiny synthetic stand-in (harness/synthetic/) looks like aerial photos, and a short CPU run scores mAP 0
on it, so a test comparing two metrics would compare 0 with 0. Here every image is a dark, slightly noisy
background with one or two big bright rectangles (each box a quarter to half of the image side), so a short
run learns where they are: tests/test_train.py and tests/test_ddp.py assert mAP50-95 is above EASY_MAP_FLOOR
first. Same layout as Kaggle's ships-aerial-images (train/valid/test, images/ + labels/, data.yaml, one class
'ship'); deterministic: the same seed writes the same files.
"""

import os
from pathlib import Path

import cv2
import numpy as np

from harness.synthetic.write import SYNTH_DATA_YAML as EASY_YAML  # the Kaggle layout, as the stand-in's

EASY_COUNTS = {"train": 32, "valid": 12, "test": 4}
EASY_SIZE = 96  # px, square; train at IMGSZ = 96 so nothing is resized


def easy_image(rng, size=EASY_SIZE):
    """(BGR image, label rows): one or two bright rectangles that do not overlap, on a dark background."""
    image = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)  # dark noise
    rows, placed = [], []
    for _ in range(rng.integers(1, 3)):
        for _ in range(50):  # a free spot, else fewer boxes
            w, h = (int(v) for v in rng.integers(size // 4, size // 2 + 1, 2))
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            if all(x0 >= bx1 or x0 + w <= bx0 or y0 >= by1 or y0 + h <= by0 for bx0, by0, bx1, by1 in placed):
                break
        else:
            continue
        placed.append((x0, y0, x0 + w, y0 + h))
        image[y0:y0 + h, x0:x0 + w] = rng.integers(200, 256, 3, dtype=np.uint8)  # one bright colour
        rows.append(f"0 {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
    return image, rows


def generate_easy(out_dir, counts=EASY_COUNTS, seed=0):
    """Write the dataset into out_dir (which must not exist yet) and return its data.yaml. PNG, not JPEG: the
    boxes' edges stay sharp and the files do not depend on the JPEG encoder."""
    out = Path(out_dir)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for sub in ("images", "labels"):
            (tmp / split / sub).mkdir(parents=True)
        for i in range(n):
            image, rows = easy_image(rng)
            assert cv2.imwrite(str(tmp / split / "images" / f"easy_{i:03d}.png"), image)
            (tmp / split / "labels" / f"easy_{i:03d}.txt").write_text("".join(r + "\n" for r in rows))
    (tmp / "data.yaml").write_text(EASY_YAML)
    os.rename(tmp, out)
    return out / "data.yaml"
