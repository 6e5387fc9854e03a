"""The stand-in's look-alikes, drawn but never labelled: rocks and islets, whitecaps (often right next to
ships), buoys and floating debris. Each is placed only where it is free, so no label ever covers one."""

import cv2
import numpy as np

from harness.synthetic.draw import Pose, blob, fill, fixed, free_crop, jitter, occupy, paint, pick, to_pixels
from harness.synthetic.environment import FOAM_BGR, LAND_BGR

ROCK_BGR = [(60, 65, 70), (70, 90, 105), (100, 105, 110), (45, 50, 55)]
BUOY_BGR = [(30, 30, 200), (30, 200, 230), (60, 150, 40), (240, 240, 240)]
DEBRIS_BGR = [(60, 90, 120), (150, 150, 150), (210, 210, 210), (40, 60, 70)]


def add_rocks(rng, canvas):
    """Sometimes a few rocks or islets, with their shadows and surf."""
    h, w = canvas.shape
    for _ in range(rng.integers(1, 4) if rng.random() < 0.35 else 0):
        radius = canvas.scale * rng.uniform(0.1, 1.0)
        aspect = rng.uniform(1.5, 4) if rng.random() < 0.4 else 1.0  # hull-shaped look-alikes
        local, pose = blob(rng, radius, aspect), Pose(rng.uniform(0, w), rng.uniform(0, h),
                                                      rng.uniform(0, 2 * np.pi))
        pts = to_pixels(local, pose)
        crop = free_crop(pts, canvas.occupied)
        if crop is None:
            continue
        fill(canvas.shade, pts + canvas.sun * radius * 0.2, 0.7)
        paint(canvas.image, crop, jitter(rng, pick(rng, ROCK_BGR), 12))
        # vegetated islet top; the outline is star-shaped, so it stays inside
        if radius > 12 and rng.random() < 0.5:
            fill(canvas.image, to_pixels(local * 0.6, pose), jitter(rng, LAND_BGR[0], 12))
        cv2.polylines(canvas.foam, [fixed(pts)], True, rng.uniform(0.3, 0.8), 2, cv2.LINE_AA, 3)  # surf
        occupy(canvas.occupied, pts)
        canvas.distractors.append(crop)


def add_small_distractors(rng, canvas, ships, rough):
    """Whitecaps (more of them on rougher water, some near ships), buoys and floating debris."""
    h, w = canvas.shape
    n_caps, n_buoys, n_debris = rng.poisson(rough * 8), rng.poisson(0.8), rng.poisson(0.8)
    for i in range(n_caps + n_buoys + n_debris):
        if i < n_caps:
            near = ships[rng.integers(len(ships))] if ships and rng.random() < 0.4 else None
            local = blob(rng, rng.uniform(0.5, 2.5), rng.uniform(1, 2.5), 0.6)
            bgr, alpha = FOAM_BGR, rng.uniform(0.3, 0.8)
        elif i < n_caps + n_buoys:
            near, local, alpha = None, blob(rng, rng.uniform(1, 2.5), 1.0, 0.05, 8), 1.0
            bgr = pick(rng, BUOY_BGR)
        else:
            near, local, alpha = (None, blob(rng, rng.uniform(1.5, 5), rng.uniform(1, 2.5), 0.5, 8),
                                  rng.uniform(0.6, 1))
            bgr = pick(rng, DEBRIS_BGR)
        c = (rng.uniform(0, 1, 2) * [w, h] if near is None
             else rng.normal([near.pose.x, near.pose.y], near.length * 0.8))
        pts = to_pixels(local, Pose(c[0], c[1], rng.uniform(0, 2 * np.pi)))
        crop = free_crop(pts, canvas.occupied)
        if crop is None:
            continue
        paint(canvas.image, crop, jitter(rng, bgr, 10), alpha)
        occupy(canvas.occupied, pts)
        canvas.distractors.append(crop)
