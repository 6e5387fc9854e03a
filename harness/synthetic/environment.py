"""What surrounds the objects of a stand-in scene: the sea, the land (a coast or a harbour's quay), clouds
and haze, and the camera's own effects. Each draws on the canvas in place, except the two that make a new
image (the sea and the sensor)."""

import math
from typing import NamedTuple

import cv2
import numpy as np

from harness.synthetic.draw import Pose, fill, fractal_noise, jitter, pick, rect, smooth_noise, to_pixels

# ---------- colours (BGR)
SEA_BGR = [(95, 55, 20), (125, 85, 35), (110, 100, 40), (90, 100, 85), (70, 95, 110), (60, 38, 18),
           (140, 130, 60), (75, 75, 60)]
SHALLOW_BGR = [(165, 160, 90), (130, 165, 165), (120, 140, 110)]
LAND_BGR = [(55, 100, 70), (60, 110, 110), (75, 105, 135), (130, 130, 130), (115, 150, 175), (40, 70, 50)]
PAVING_BGR = [(105, 105, 105), (165, 165, 160), (90, 100, 100), (60, 95, 75)]
ROOF_BGR = [(150, 150, 150), (200, 200, 200), (60, 70, 150), (120, 110, 100), (80, 80, 80), (150, 120, 90)]
FOAM_BGR = (235, 238, 238)          # wakes, surf and whitecaps

# ---------- weather
CLOUD_MAX_ALPHA = 0.6               # clouds never fully hide a hull, so every label stays visible


class Shore(NamedTuple):
    """A straight stretch of shoreline: a point on it and the unit normal that points inland."""
    point: np.ndarray
    normal: np.ndarray

    @property
    def out(self):
        """The unit vector from the shore to the water."""
        return -self.normal

    @property
    def along(self):
        """The unit vector along the shore (the normal turned a quarter)."""
        return np.array([-self.normal[1], self.normal[0]])


def ripples(rng, h, w, wind):
    """Unit-variance wind ripples: noise smeared along the crests, then rotated to face the wind."""
    side = int(math.hypot(h, w)) + 2  # a square that covers the image at any rotation
    cell = rng.uniform(1.5, 4)
    grid = rng.standard_normal((int(side / cell) + 2,) * 2).astype(np.float32)
    tex = cv2.resize(grid, (side, side), interpolation=cv2.INTER_CUBIC)
    tex = cv2.blur(tex, (int(cell * rng.uniform(3, 8)) + 1, 1))
    rot = cv2.getRotationMatrix2D((side / 2, side / 2), math.degrees(wind), 1.0)
    rot[:, 2] -= [(side - w) / 2, (side - h) / 2]
    tex = cv2.warpAffine(tex, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return tex / (tex.std() + 1e-6)


def render_sea(rng, h, w):
    """Float BGR sea: coloured base, broad tone patches, two crossing swells, fine chop, optional sun
    glint."""
    img = np.empty((h, w, 3), np.float32)
    img[:] = jitter(rng, pick(rng, SEA_BGR), 10)
    other = np.float32(jitter(rng, pick(rng, SEA_BGR), 10))
    mix = np.clip(smooth_noise(rng, h, w, rng.uniform(1, 3)) * 0.5 + 0.3, 0, 1) * rng.uniform(0, 0.6)
    img += mix[..., None] * (other - img)  # sediment plumes / depth changes
    img *= (1 + fractal_noise(rng, h, w, rng.uniform(2, 5), 2) * rng.uniform(0.02, 0.08))[..., None]
    xs, ys = np.arange(w, dtype=np.float32)[None], np.arange(h, dtype=np.float32)[:, None]
    wind = rng.uniform(0, 2 * np.pi)
    waves = ripples(rng, h, w, wind) * np.clip(0.7 + 0.5 * smooth_noise(rng, h, w, 3), 0.1, 1.5)
    th, lam = wind + rng.normal(0, 0.3), rng.uniform(10, 40)  # long swell, bent by a noise warp
    warp = smooth_noise(rng, h, w, 3) * rng.uniform(2, 8)
    swell = np.sin((xs * math.cos(th) + ys * math.sin(th)) * (2 * np.pi / lam) + warp)
    img += (waves * rng.uniform(1.5, 7) + swell * rng.uniform(0, 4))[..., None]
    if rng.random() < 0.3:  # sun glint: sparkles on ripple crests under a broad bright halo
        gx, gy, r = rng.uniform(-0.3, 1.3) * w, rng.uniform(-0.3, 1.3) * h, rng.uniform(0.3, 1.0) * max(h, w)
        halo = np.exp(-((xs - gx) ** 2 + (ys - gy) ** 2) / r ** 2)
        img += (halo * (rng.uniform(10, 40)
                        + np.clip(waves - 1.5, 0, None) ** 2 * rng.uniform(10, 50)))[..., None]
    return img


def add_land(rng, canvas, harbour):
    """Land on one side of a (noisy for coasts, straight for quays) shoreline, drawn and occupied.
    Returns the Shore a harbour's piers start from."""
    img = canvas.image
    h, w = canvas.shape
    ang = rng.uniform(0, 2 * np.pi)
    n = np.array([math.cos(ang), math.sin(ang)])
    extent = abs(w / 2 * n[0]) + abs(h / 2 * n[1])
    offset = rng.uniform(-0.1, 0.6) * extent
    xs, ys = np.arange(w, dtype=np.float32)[None], np.arange(h, dtype=np.float32)[:, None]
    f = (xs - w / 2) * n[0] + (ys - h / 2) * n[1] - offset
    if not harbour:
        f = f + fractal_noise(rng, h, w, 2, 3) * rng.uniform(0.08, 0.3) * extent
    land = f > 0
    tex = np.empty((h, w, 3), np.float32)
    tex[:] = jitter(rng, (130, 130, 130) if harbour else pick(rng, LAND_BGR), 12)
    other = np.float32(jitter(rng, pick(rng, PAVING_BGR if harbour else LAND_BGR), 12))
    mix = np.clip(fractal_noise(rng, h, w, rng.uniform(3, 8), 3) * 0.6 + 0.2, 0, 1)
    tex += mix[..., None] * (other - tex)  # vegetation / bare ground / paving patches
    tex *= (1 + fractal_noise(rng, h, w, 12, 2) * 0.08)[..., None]
    for _ in range(rng.integers(20, 80) if harbour else rng.integers(0, 15)):  # buildings, sheds, yards
        sz = rng.uniform(0.01, 0.06) * max(h, w)
        pts = to_pixels(rect(0, sz, 0, sz * rng.uniform(0.3, 1)),
                        Pose(rng.uniform(0, w), rng.uniform(0, h), ang + rng.normal(0, 0.05)))
        fill(tex, pts, jitter(rng, pick(rng, ROOF_BGR), 15))
    tex += cv2.resize(rng.standard_normal((h // 2 + 1, w // 2 + 1)).astype(np.float32), (w, h))[..., None] * 6
    dist = cv2.distanceTransform(land.astype(np.uint8), cv2.DIST_L2, 3)
    edge = (dist > 0) & (dist < rng.uniform(2, 10))  # quay edge or beach
    tex[edge] = jitter(rng, (170, 170, 165) if harbour else (150, 190, 210), 10)
    water_dist = cv2.distanceTransform((~land).astype(np.uint8), cv2.DIST_L2, 3)
    shallow = np.exp(-water_dist / rng.uniform(3, 25)) * rng.uniform(0.1, 0.3 if harbour else 0.7)
    img += shallow[..., None] * (np.float32(jitter(rng, pick(rng, SHALLOW_BGR), 10)) - img)
    img[land] = tex[land]
    canvas.occupied[land] = 1
    return Shore(np.array([w / 2, h / 2]) + n * offset, n)


def add_clouds_and_haze(rng, canvas):
    """Sometimes clouds with their shadows, sometimes haze, over the whole image in place."""
    img, sun = canvas.image, canvas.sun
    h, w = canvas.shape
    if rng.random() < 0.25:
        field = fractal_noise(rng, h, w, rng.uniform(1.5, 4), 4)
        alpha = np.clip((field - rng.uniform(-0.5, 1.0)) * rng.uniform(0.15, 0.5), 0, 1) * CLOUD_MAX_ALPHA
        shift = np.float32([[1, 0, sun[0] * rng.uniform(5, 40)], [0, 1, sun[1] * rng.uniform(5, 40)]])
        shadow = cv2.warpAffine(alpha, shift, (w, h), borderMode=cv2.BORDER_REFLECT)
        img *= (1 - shadow * rng.uniform(0.2, 0.5))[..., None]  # clouds cast shadows a little way off
        img += alpha[..., None] * (np.float32(jitter(rng, (235, 232, 228), 8)) - img)
    if rng.random() < 0.35:
        alpha = rng.uniform(0.05, 0.35) * np.clip(1 + 0.3 * smooth_noise(rng, h, w, 2), 0.5, 1.5)
        img += alpha[..., None] * (np.float32(jitter(rng, (200, 190, 180), 12)) - img)


def apply_sensor(rng, img):
    """The camera: white balance, exposure, sometimes a low-resolution source, blur, noise. Returns the
    uint8 image."""
    h, w = img.shape[:2]
    img *= np.float32(rng.uniform(0.95, 1.05, 3)) * rng.uniform(0.85, 1.15)  # white balance, exposure
    if rng.random() < 0.2:  # upscaled low-resolution source
        f = rng.uniform(1.5, 3)
        small = cv2.resize(img, (max(8, int(w / f)), max(8, int(h / f))), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.7:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    img += rng.normal(0, rng.uniform(1, 5), (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
