"""Drawing primitives of the stand-in and the canvas a scene is drawn on: noise fields, object outlines,
sub-pixel polygon fills, and the occupancy that keeps objects apart so that every mask stays exact."""

import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np


class Pose(NamedTuple):
    """Where an object lies: its centre in image pixels and the direction of its long axis (radians)."""
    x: float
    y: float
    angle: float


class Crop(NamedTuple):
    """An object's pixels: a bool mask and where its top-left corner lies in the image."""
    mask: np.ndarray
    x0: int
    y0: int


@dataclass
class Canvas:
    """One scene while it is drawn: the float image and the layers every object draws into."""
    image: np.ndarray       # HxWx3 float32 BGR
    occupied: np.ndarray    # HxW uint8: 1 where land or an object already is (and its 1 px margin)
    foam: np.ndarray        # HxW float32: wakes and surf, blended in white once the ships are placed
    shade: np.ndarray       # HxW float32: the shadows, a factor on the image
    sun: np.ndarray         # unit 2-vector: the direction shadows fall in
    scale: float            # a typical ship's length in px: one ground resolution per scene
    distractors: list       # Crop per unlabelled object

    @property
    def shape(self):
        """(h, w) of the image."""
        return self.image.shape[:2]


def new_canvas(image, sun, scale):
    """A canvas on this background with nothing placed yet: no occupancy, foam, shade or distractor."""
    shape = image.shape[:2]
    return Canvas(image, np.zeros(shape, np.uint8), np.zeros(shape, np.float32), np.ones(shape, np.float32),
                  sun, scale, [])


# ---------- colours and noise

def jitter(rng, bgr, amount=12.0):
    """A colour near bgr, as a tuple of floats."""
    # mostly a brightness shift: independent channel noise would turn whites pink or green
    v = np.asarray(bgr, np.float32) + rng.normal(0, amount) + rng.normal(0, amount / 4, 3)
    return tuple(float(x) for x in np.clip(v, 0, 255))


def pick(rng, options):
    """One of options, uniformly."""
    return options[rng.integers(len(options))]


def smooth_noise(rng, h, w, cells):
    """Low-frequency field of roughly unit variance: a tiny random grid upscaled (cheap at any size)."""
    gh, gw = max(2, round(cells * h / max(h, w))) + 1, max(2, round(cells * w / max(h, w))) + 1
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def fractal_noise(rng, h, w, cells, octaves=3):
    """smooth_noise summed over octaves, each twice as fine and half as strong."""
    return sum(smooth_noise(rng, h, w, cells * 2 ** o) * 0.5 ** o for o in range(octaves))


# ---------- outlines

def to_pixels(local, pose):
    """Object coordinates (x along the object, y across) -> image pixels."""
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    x, y = local[:, 0], local[:, 1]
    return np.stack([pose.x + c * x - s * y, pose.y + s * x + c * y], 1)


def rect(x0, x1, y0, y1):
    """The four corners of an axis-aligned rectangle."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def blob(rng, radius, aspect, rough=0.3, n=24):
    """Smooth irregular outline (rocks, islets, foam, debris): a few random harmonics, stretched along x."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(1, 5):
        r += rough * rng.normal(0, 1) / k * np.cos(k * a + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.3, 2.0)
    return np.stack([r * np.cos(a) * aspect, r * np.sin(a)], 1)


# ---------- pixels

def fixed(pts):
    """Points in cv2's fixed point with 3 fractional bits (shift=3)."""
    # so sub-pixel geometry still matters for small ships
    return np.round(np.asarray(pts) * 8).astype(np.int32)


def fill(img, pts, value):
    """Fill a polygon at sub-pixel precision, in place."""
    cv2.fillPoly(img, [fixed(pts)], value, cv2.LINE_8, 3)


def free_crop(pts, occupied):
    """A polygon's pixels as a Crop within the image; None if none, or if any is occupied."""
    h, w = occupied.shape
    x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + 1, [w, h])
    if x1 <= x0 or y1 <= y0:
        return None
    crop = np.zeros((y1 - y0, x1 - x0), np.uint8)
    fill(crop, pts - [x0, y0], 1)
    crop = crop.astype(bool)
    return Crop(crop, x0, y0) if crop.any() and not occupied[y0:y1, x0:x1][crop].any() else None


def full_mask(crop, shape):
    """The crop as a bool mask of the whole image."""
    out = np.zeros(shape, bool)
    out[crop.y0:crop.y0 + crop.mask.shape[0], crop.x0:crop.x0 + crop.mask.shape[1]] = crop.mask
    return out


def mask_bounds(mask):
    """(x0, y0, x1, y1) of a mask's pixels, x1/y1 exclusive."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def occupy(occupied, pts):
    """Mark a polygon and its margin as taken, in place."""
    # the 3 px outline keeps a 1 px gap between objects, so masks never touch or overlap
    fill(occupied, pts, 1)
    cv2.polylines(occupied, [fixed(pts)], True, 1, 3, cv2.LINE_8, 3)


def paint(img, crop, bgr, alpha=1.0):
    """Colour exactly the pixels of a mask crop, so what is drawn is what the mask says."""
    m, x0, y0 = crop
    view = img[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
    view[m] += alpha * (np.float32(bgr) - view[m])
