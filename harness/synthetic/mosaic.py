"""A sample mosaic of the stand-in: a grid of training images with their labels drawn, for a quick look or a
README picture (ships-aerial-images/README.md says how it was made)."""

import math
from pathlib import Path

import cv2
import numpy as np
import yaml


def save_sample_mosaic(data_yaml, out_path, n: int = 12, seed: int = 0, tile: int = 256) -> Path:
    """Grid of n train images with their labels drawn in green; returns out_path."""
    data_yaml = Path(data_yaml)
    images = sorted((data_yaml.parent / yaml.safe_load(data_yaml.read_text())["train"]).glob("*.jpg"))
    chosen = np.random.default_rng(seed).choice(len(images), min(n, len(images)), replace=False)
    cols = math.ceil(math.sqrt(len(chosen)))
    rows = math.ceil(len(chosen) / cols)
    mosaic = np.full((rows * tile, cols * tile, 3), 40, np.uint8)
    for k, i in enumerate(chosen):
        img = cv2.imread(str(images[i]))
        h, w = img.shape[:2]
        s = tile / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        label = images[i].parent.parent / "labels" / (images[i].stem + ".txt")
        for row in label.read_text().splitlines():
            _, cx, cy, bw, bh = map(float, row.split())
            x0, y0, x1, y1 = ((cx - bw / 2) * w * s, (cy - bh / 2) * h * s,
                              (cx + bw / 2) * w * s, (cy + bh / 2) * h * s)
            cv2.rectangle(img, (round(x0), round(y0)), (round(x1), round(y1)), (0, 255, 0), 1)
        r, c = divmod(k, cols)
        mosaic[r * tile:r * tile + img.shape[0], c * tile:c * tile + img.shape[1]] = img
    cv2.imwrite(str(out_path), mosaic, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return Path(out_path)
