"""The synthetic stand-in: procedural aerial ship imagery in Kaggle's layout (train/valid/test, one class
'ship'), deterministic from a seed. Each label is the axis-aligned bounds of a ship's visible hull pixels;
rocks, buoys, whitecaps, piers and debris are drawn but never labelled: look-alikes to reject.

    python -m harness.synthetic small|full   # what the harness runs when it needs the stand-in
"""

import hashlib
import math
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from harness import common

SYNTH_SEED = 0  # the stand-in dataset is a pure function of this seed
SYNTH_SCALES = {"small": {"train": 300, "valid": 80, "test": 80},
                "full": {"train": 9697, "valid": 2165, "test": 1573}}
SYNTH_SPLITS = ("train", "valid", "test")
IMG_SIDE_MIN, IMG_SIDE_MAX = 80, 800
EMPTY_FRACTION = 0.10               # share of images with no ship at all
SCENE_KINDS = ("sea", "coast", "harbour")
SCENE_PROBS = (0.55, 0.27, 0.18)
SHIP_LEN_MIN, SHIP_LEN_MAX = 3.0, 300.0
SCALE_MIN, SCALE_MAX = 8, 220       # a scene's typical ship length in px, drawn log-uniform
MAX_SHIPS = 25                      # crowded harbours are capped here
MIN_HULL_AREA, MIN_HULL_SIDE = 6, 2  # smaller visible hulls are not drawn (nobody could label them)
CLOUD_MAX_ALPHA = 0.6               # clouds never fully hide a hull, so every label stays visible
JPEG_QUALITY_MIN, JPEG_QUALITY_MAX = 60, 95
CHUNK_SIZE = 16                     # images per pool task
# relative paths and no 'path:' key, exactly like the Roboflow export, so the folder can be moved
SYNTH_DATA_YAML = "train: train/images\nval: valid/images\ntest: test/images\nnc: 1\nnames: ['ship']\n"
SEA_BGR = [(95, 55, 20), (125, 85, 35), (110, 100, 40), (90, 100, 85), (70, 95, 110), (60, 38, 18),
           (140, 130, 60), (75, 75, 60)]
SHALLOW_BGR = [(165, 160, 90), (130, 165, 165), (120, 140, 110)]
LAND_BGR = [(55, 100, 70), (60, 110, 110), (75, 105, 135), (130, 130, 130), (115, 150, 175), (40, 70, 50)]
PAVING_BGR = [(105, 105, 105), (165, 165, 160), (90, 100, 100), (60, 95, 75)]
ROOF_BGR = [(150, 150, 150), (200, 200, 200), (60, 70, 150), (120, 110, 100), (80, 80, 80), (150, 120, 90)]
HULL_BGR = [(235, 235, 235), (180, 180, 175), (110, 110, 105), (60, 60, 60), (35, 35, 40), (45, 45, 150),
            (45, 55, 110), (140, 75, 30), (80, 45, 20), (60, 105, 55)]
DECK_BGR = [(220, 225, 225), (90, 110, 140), (50, 60, 130), (70, 110, 70), (120, 120, 120), (130, 160, 190)]
BOX_BGR = [(40, 40, 170), (150, 90, 40), (40, 120, 200), (60, 120, 60), (170, 170, 170), (30, 60, 120),
           (200, 200, 200)]
ROCK_BGR = [(60, 65, 70), (70, 90, 105), (100, 105, 110), (45, 50, 55)]
FOAM_BGR = (235, 238, 238)


@dataclass
class Scene:
    image: np.ndarray          # HxWx3 uint8 BGR
    boxes: list                # (x0, y0, x1, y1) per ship, x1/y1 exclusive
    ship_masks: list           # bool HxW visible hull pixels, one per box
    distractor_masks: list     # bool HxW, one per unlabelled object


# ---------- small helpers

def jitter(rng, bgr, amount=12.0):
    # mostly a brightness shift: independent channel noise would turn whites pink or green
    v = np.asarray(bgr, np.float32) + rng.normal(0, amount) + rng.normal(0, amount / 4, 3)
    return tuple(float(x) for x in np.clip(v, 0, 255))


def pick(rng, options):
    return options[rng.integers(len(options))]


def smooth_noise(rng, h, w, cells):
    """Low-frequency field of roughly unit variance: a tiny random grid upscaled (cheap at any size)."""
    gh, gw = max(2, round(cells * h / max(h, w))) + 1, max(2, round(cells * w / max(h, w))) + 1
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def fractal_noise(rng, h, w, cells, octaves=3):
    return sum(smooth_noise(rng, h, w, cells * 2 ** o) * 0.5 ** o for o in range(octaves))


def to_pixels(local, cx, cy, angle):
    """Object coordinates (x along the object, y across) -> image pixels."""
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * local[:, 0] - s * local[:, 1], cy + s * local[:, 0] + c * local[:, 1]], 1)


def rect(x0, x1, y0, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def fixed(pts):
    # cv2 drawing with 3 fractional bits (shift=3), so sub-pixel geometry still matters for small ships
    return np.round(np.asarray(pts) * 8).astype(np.int32)


def fill(img, pts, value):
    cv2.fillPoly(img, [fixed(pts)], value, cv2.LINE_8, 3)


def free_crop(h, w, pts, occupied):
    """A polygon's pixels as (bool crop, x0, y0) within the image; None if none, or if any is occupied."""
    x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + 1, [w, h])
    if x1 <= x0 or y1 <= y0:
        return None
    crop = np.zeros((y1 - y0, x1 - x0), np.uint8)
    fill(crop, pts - [x0, y0], 1)
    crop = crop.astype(bool)
    return (crop, x0, y0) if crop.any() and not occupied[y0:y1, x0:x1][crop].any() else None


def full_mask(h, w, crop):
    m, x0, y0 = crop
    out = np.zeros((h, w), bool)
    out[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
    return out


def mask_bounds(mask):
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def occupy(occupied, pts):
    # the 3 px outline keeps a 1 px gap between objects, so masks never touch or overlap
    fill(occupied, pts, 1)
    cv2.polylines(occupied, [fixed(pts)], True, 1, 3, cv2.LINE_8, 3)


def blob(rng, radius, aspect, rough=0.3, n=24):
    """Smooth irregular outline (rocks, islets, foam, debris): a few random harmonics, stretched along x."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(1, 5):
        r += rough * rng.normal(0, 1) / k * np.cos(k * a + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.3, 2.0)
    return np.stack([r * np.cos(a) * aspect, r * np.sin(a)], 1)


def paint(img, crop, bgr, alpha=1.0):
    """Colour exactly the pixels of a mask crop, so what is drawn is what the mask says."""
    m, x0, y0 = crop
    view = img[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
    view[m] += alpha * (np.float32(bgr) - view[m])


# ---------- background: sea, land, harbour

def pick_image_size(rng):
    long_side = math.exp(rng.uniform(math.log(120), math.log(IMG_SIDE_MAX)))
    aspect = 1.0 if rng.random() < 0.25 else rng.uniform(1.05, 2.2)
    short_side = max(IMG_SIDE_MIN, long_side / aspect)
    h, w = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
    return int(round(h)), int(round(w))


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


def add_land(rng, img, harbour):
    """Land on one side of a (noisy for coasts, straight for quays) shoreline. Returns mask and quay frame."""
    h, w = img.shape[:2]
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
        pts = to_pixels(rect(0, sz, 0, sz * rng.uniform(0.3, 1)), rng.uniform(0, w), rng.uniform(0, h),
                        ang + rng.normal(0, 0.05))
        fill(tex, pts, jitter(rng, pick(rng, ROOF_BGR), 15))
    tex += cv2.resize(rng.standard_normal((h // 2 + 1, w // 2 + 1)).astype(np.float32), (w, h))[..., None] * 6
    dist = cv2.distanceTransform(land.astype(np.uint8), cv2.DIST_L2, 3)
    edge = (dist > 0) & (dist < rng.uniform(2, 10))  # quay edge or beach
    tex[edge] = jitter(rng, (170, 170, 165) if harbour else (150, 190, 210), 10)
    water_dist = cv2.distanceTransform((~land).astype(np.uint8), cv2.DIST_L2, 3)
    shallow = np.exp(-water_dist / rng.uniform(3, 25)) * rng.uniform(0.1, 0.3 if harbour else 0.7)
    img += shallow[..., None] * (np.float32(jitter(rng, pick(rng, SHALLOW_BGR), 10)) - img)
    img[land] = tex[land]
    quay = np.array([w / 2, h / 2]) + n * offset  # a point on the shoreline; -n points to the water
    return land, quay, n


# ---------- ships

def hull_outline(rng, length, beam):
    """Hull in ship coordinates (bow at +x): straight sides, pointed ogive bow, square or rounded stern."""
    half, bow = beam / 2, length * rng.uniform(0.12, 0.35)
    t = np.linspace(0, 1, 7)
    bow_side = np.stack([length / 2 - bow + t * bow, half * (1 - t ** rng.uniform(1.5, 3))], 1)
    if rng.random() < 0.5:
        a = np.linspace(0, np.pi / 2, 5)
        r = min(half * rng.uniform(0.6, 1.5), length * 0.2)
        stern = np.stack([-length / 2 + r * (1 - np.cos(a)), half * np.sin(a)], 1)
    else:
        stern = np.array([[-length / 2, 0], [-length / 2, half]])
    side = np.vstack([stern, bow_side])
    return np.vstack([side, side[::-1][1:-1] * [1, -1]])


def make_ship(rng, h, w, occupied, length, beam, cx, cy, angle, moving):
    """Place one ship if its visible hull is big enough and free; returns a ship dict or None."""
    pts = to_pixels(hull_outline(rng, length, beam), cx, cy, angle)
    crop = free_crop(h, w, pts, occupied)
    if crop is None:
        return None
    ys, xs = np.nonzero(crop[0])
    if len(xs) < MIN_HULL_AREA or np.ptp(xs) + 1 < MIN_HULL_SIDE or np.ptp(ys) + 1 < MIN_HULL_SIDE:
        return None
    occupy(occupied, pts)
    return dict(pts=pts, crop=crop, length=length, beam=beam, cx=cx, cy=cy, angle=angle, moving=moving)


def ship_dims(rng, scale, max_len=SHIP_LEN_MAX):
    """(length, beam) around the scene's typical ship length; length/beam between 3 and 8."""
    length = float(np.clip(scale * math.exp(rng.normal(0, 0.45)), SHIP_LEN_MIN, min(max_len, SHIP_LEN_MAX)))
    return length, max(1.5, length / rng.uniform(3, 8))


def plan_open_ships(rng, h, w, occupied, count, scale):
    ships = []
    for _ in range(count * 15):
        if len(ships) >= count:
            break
        length, beam = ship_dims(rng, scale)
        cx, cy = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h  # some get cut by the border
        ship = make_ship(rng, h, w, occupied, length, beam, cx, cy, rng.uniform(0, 2 * np.pi),
                         rng.random() < 0.6)
        ships += [ship] if ship else []
    return ships


def plan_harbour(rng, h, w, occupied, quay, n, scale, distractors, img, shade, sun, max_abreast):
    """Piers sticking out from the quay, with ships moored alongside, several abreast."""
    along, out = np.array([-n[1], n[0]]), -n
    out_ang, span = math.atan2(out[1], out[0]), max(h, w)
    pier_bgr, piers, ships = jitter(rng, pick(rng, [(175, 175, 170), (90, 110, 130),
                                                    (140, 140, 135)]), 8), [], []
    # all piers first: ships must not end up under one
    for s in np.sort(rng.uniform(-0.7, 0.7, rng.integers(1, 5))) * span:
        plen, pw = rng.uniform(0.15, 0.6) * span, max(3.0, rng.uniform(0.05, 0.3) * scale)
        base = quay + along * s
        pts = to_pixels(rect(-4, plen, -pw / 2, pw / 2), base[0], base[1], out_ang)
        crop = free_crop(h, w, pts, np.zeros_like(occupied))  # piers may cross the quay and each other
        if crop is None:
            continue
        fill(shade, pts + sun * pw * 0.3, 0.65)
        paint(img, crop, pier_bgr)
        occupy(occupied, pts)
        distractors.append(crop)
        piers.append((base, plen, pw))
    for base, plen, pw in piers:
        for side in (-1, 1):  # berths along each side of the pier, each 0..max_abreast ships deep
            x = rng.uniform(0, 0.3) * plen
            while x < plen:
                length, beam = ship_dims(rng, scale, plen)
                offset = pw / 2
                for _ in range(rng.integers(0, max_abreast + 1)):
                    offset += rng.uniform(2, 4) + beam / 2
                    c = base + out * (x + length / 2) + along * side * offset
                    ship = make_ship(rng, h, w, occupied, length, beam, c[0], c[1],
                                     out_ang + np.pi * rng.integers(2), False)
                    if ship is None:
                        break
                    ships.append(ship)
                    offset += beam / 2
                    length, beam = length * rng.uniform(0.8, 1.2), beam * rng.uniform(0.8, 1.2)
                x += length + 2 + rng.uniform(0, 0.5 * length)
    for _ in range(rng.integers(0, 2 * max_abreast + 1)):  # moored along the quay between piers
        length, beam = ship_dims(rng, scale)
        c = quay + along * rng.uniform(-0.7, 0.7) * span + out * (rng.uniform(2, 4) + beam / 2)
        ship = make_ship(rng, h, w, occupied, length, beam, c[0], c[1], math.atan2(along[1], along[0]), False)
        ships += [ship] if ship else []
    return ships[:MAX_SHIPS]  # the dropped ones leave only an empty berth behind


def fading_line(rng, foam, p0, p1, strength, width0, width1, wobble, steps=8):
    """Foam stroke that fades (and widens) from p0 to p1, wobbling sideways like churned water."""
    for i in range(steps):
        a, b = p0 + (p1 - p0) * i / steps, p0 + (p1 - p0) * (i + 1) / steps + rng.normal(0, wobble + 1e-9, 2)
        width = max(1, int(width0 + (width1 - width0) * i / steps))
        cv2.line(foam, fixed(a), fixed(b), strength * (1 - i / steps), width, cv2.LINE_AA, 3)


def draw_wake(rng, foam, ship):
    """Turbulent trail plus the two Kelvin arms (about 19.5 degrees) behind a moving ship."""
    d = np.array([math.cos(ship["angle"]), math.sin(ship["angle"])])
    stern = np.array([ship["cx"], ship["cy"]]) - d * ship["length"] / 2
    wake_len, beam = ship["length"] * rng.uniform(0.8, 5), ship["beam"]
    fading_line(rng, foam, stern, stern - d * wake_len, 0.9, beam * 0.6, beam * 1.5, beam * 0.15)
    for sign in (-1, 1):
        a = ship["angle"] + np.pi + sign * math.radians(19.5)
        tip = stern + np.array([math.cos(a), math.sin(a)]) * wake_len * 0.7
        fading_line(rng, foam, stern, tip, rng.uniform(0.1, 0.35), beam / 4, beam / 4, 0)


def draw_ship(rng, img, ship):
    """Hull, deck and superstructure, painted only inside the hull mask."""
    m, x0, y0 = ship["crop"]
    view = img[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
    layer = view.copy()
    L, B = ship["length"], ship["beam"]
    def put(local, bgr):
        return fill(layer, to_pixels(local, ship["cx"] - x0, ship["cy"] - y0, ship["angle"]), bgr)
    fill(layer, ship["pts"] - [x0, y0], jitter(rng, pick(rng, HULL_BGR), 10))
    if L >= 12:
        kind = pick(rng, ["cargo", "tanker", "boat", "boat"] if L > 60 else ["boat", "boat", "barge"])
        deck = jitter(rng, pick(rng, DECK_BGR), 12)
        put(rect(-0.42 * L, 0.3 * L, -0.36 * B, 0.36 * B), deck)
        cabin = (rect(-0.45 * L, -0.32 * L, -0.3 * B, 0.3 * B) if kind != "boat"
                 else rect(-0.25 * L, 0.08 * L, -0.28 * B, 0.28 * B))
        put(cabin, jitter(rng, pick(rng, [(225, 225, 225), (200, 200, 200), (160, 160, 160)]), 12))
        if kind == "cargo":
            n_bays = int(rng.integers(3, 10))
            for i in range(n_bays):
                bx = -0.27 * L + i * 0.55 * L / n_bays
                if rng.random() < 0.85:
                    put(rect(bx, bx + 0.5 * L / n_bays, -0.34 * B, 0.34 * B),
                        jitter(rng, pick(rng, BOX_BGR), 15))
        elif kind == "tanker" and B >= 6:
            put(rect(-0.28 * L, 0.3 * L, -0.04 * B - 0.5, 0.04 * B + 0.5), (190, 190, 190))
        elif kind == "boat" and B >= 4:
            put(rect(0.02 * L, 0.08 * L, -0.25 * B, 0.25 * B), jitter(rng, (60, 50, 40), 10))  # windscreen
    view[m] = layer[m]


# ---------- distractors (never labelled)

def add_rocks(rng, h, w, img, occupied, foam, shade, sun, distractors, scale):
    for _ in range(rng.integers(1, 4) if rng.random() < 0.35 else 0):
        radius = scale * rng.uniform(0.1, 1.0)
        aspect = rng.uniform(1.5, 4) if rng.random() < 0.4 else 1.0  # hull-shaped look-alikes
        local, pose = blob(rng, radius, aspect), (rng.uniform(0, w), rng.uniform(0, h),
                                                  rng.uniform(0, 2 * np.pi))
        pts = to_pixels(local, *pose)
        crop = free_crop(h, w, pts, occupied)
        if crop is None:
            continue
        fill(shade, pts + sun * radius * 0.2, 0.7)
        paint(img, crop, jitter(rng, pick(rng, ROCK_BGR), 12))
        # vegetated islet top; the outline is star-shaped, so it stays inside
        if radius > 12 and rng.random() < 0.5:
            fill(img, to_pixels(local * 0.6, *pose), jitter(rng, LAND_BGR[0], 12))
        cv2.polylines(foam, [fixed(pts)], True, rng.uniform(0.3, 0.8), 2, cv2.LINE_AA, 3)  # surf
        occupy(occupied, pts)
        distractors.append(crop)


def add_small_distractors(rng, h, w, img, occupied, ships, distractors, rough):
    """Whitecaps (often right next to ships), buoys and floating debris."""
    n_caps, n_buoys, n_debris = rng.poisson(rough * 8), rng.poisson(0.8), rng.poisson(0.8)
    for i in range(n_caps + n_buoys + n_debris):
        if i < n_caps:
            near = ships[rng.integers(len(ships))] if ships and rng.random() < 0.4 else None
            local = blob(rng, rng.uniform(0.5, 2.5), rng.uniform(1, 2.5), 0.6)
            bgr, alpha = FOAM_BGR, rng.uniform(0.3, 0.8)
        elif i < n_caps + n_buoys:
            near, local, alpha = None, blob(rng, rng.uniform(1, 2.5), 1.0, 0.05, 8), 1.0
            bgr = pick(rng, [(30, 30, 200), (30, 200, 230), (60, 150, 40), (240, 240, 240)])
        else:
            near, local, alpha = (None, blob(rng, rng.uniform(1.5, 5), rng.uniform(1, 2.5), 0.5, 8),
                                  rng.uniform(0.6, 1))
            bgr = pick(rng, [(60, 90, 120), (150, 150, 150), (210, 210, 210), (40, 60, 70)])
        c = (rng.uniform(0, 1, 2) * [w, h] if near is None
             else rng.normal([near["cx"], near["cy"]], near["length"] * 0.8))
        pts = to_pixels(local, c[0], c[1], rng.uniform(0, 2 * np.pi))
        crop = free_crop(h, w, pts, occupied)
        if crop is None:
            continue
        paint(img, crop, jitter(rng, bgr, 10), alpha)
        occupy(occupied, pts)
        distractors.append(crop)


# ---------- atmosphere and sensor

def add_clouds_and_haze(rng, img, sun):
    h, w = img.shape[:2]
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


# ---------- one scene

def render_scene(rng: np.random.Generator) -> Scene:
    """One aerial scene: sea (maybe coast or harbour), ships, distractors, weather, sensor effects."""
    h, w = pick_image_size(rng)
    kind = SCENE_KINDS[rng.choice(3, p=SCENE_PROBS)]
    img = render_sea(rng, h, w)
    occupied = np.zeros((h, w), np.uint8)
    foam, shade, distractors, ships = np.zeros((h, w), np.float32), np.ones((h, w), np.float32), [], []
    sun = rng.normal(0, 1, 2)
    sun /= np.linalg.norm(sun)
    # one ground resolution per scene: ships in a scene have comparable sizes, like a real photo
    scale = math.exp(rng.uniform(math.log(SCALE_MIN),
                                 math.log(max(SCALE_MIN + 4, min(SCALE_MAX, 0.5 * max(h, w))))))
    has_ships = rng.random() >= EMPTY_FRACTION
    if kind != "sea":
        land, quay, n = add_land(rng, img, kind == "harbour")
        occupied[land] = 1
        if kind == "harbour":  # an empty harbour still gets its piers
            ships += plan_harbour(rng, h, w, occupied, quay, n, scale, distractors, img, shade, sun,
                                  3 * has_ships)
    add_rocks(rng, h, w, img, occupied, foam, shade, sun, distractors, scale)
    static = occupied.copy()
    if has_ships:
        count = int(rng.integers(6, 15)) if rng.random() < 0.08 else int(rng.choice([1, 1, 2, 2, 3, 4, 5]))
        ships += plan_open_ships(rng, h, w, occupied,
                                 count if kind != "harbour" else int(rng.integers(0, 3)), scale)
    for ship in ships:
        fill(shade, ship["pts"] + sun * (0.5 + ship["beam"] * rng.uniform(0.1, 0.4)), rng.uniform(0.5, 0.75))
        if ship["moving"]:
            draw_wake(rng, foam, ship)
    img *= cv2.GaussianBlur(shade, (0, 0), 0.7)[..., None]
    foam = (cv2.GaussianBlur(foam, (0, 0), rng.uniform(0.8, 2.0))
            * np.clip(1 + 0.5 * smooth_noise(rng, h, w, 12), 0, 2))
    foam = np.clip(foam, 0, 1) * (static == 0)
    img += foam[..., None] * (np.float32(FOAM_BGR) - img)
    # on top of wakes
    add_small_distractors(rng, h, w, img, occupied, ships, distractors, rng.uniform(0, 1) ** 2)
    for ship in ships:
        draw_ship(rng, img, ship)
    add_clouds_and_haze(rng, img, sun)
    image = apply_sensor(rng, img)
    masks = [full_mask(h, w, ship["crop"]) for ship in ships]
    return Scene(image, [mask_bounds(m) for m in masks], masks, [full_mask(h, w, c) for c in distractors])


# ---------- dataset on disk

def synth_image_name(seed, split, index):
    digest = hashlib.md5(f"{seed}/{split}/{index}".encode()).hexdigest()
    return f"synth_{index:05d}_jpg.rf.{digest}.jpg"


def label_rows(boxes, h, w):
    return "".join(f"0 {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                   f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n"
                   for x0, y0, x1, y1 in boxes)


def write_chunk(root, seed, split, indices):
    split_no = SYNTH_SPLITS.index(split)
    for index in indices:
        rng = np.random.default_rng([seed, split_no, index])
        scene = render_scene(rng)
        quality = int(rng.integers(JPEG_QUALITY_MIN, JPEG_QUALITY_MAX + 1))
        ok, jpg = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok, "JPEG encoding failed"
        name = synth_image_name(seed, split, index)
        with open(Path(root, split, "images", name), "wb") as f:
            f.write(jpg.tobytes())
        h, w = scene.image.shape[:2]
        with open(Path(root, split, "labels", name[:-4] + ".txt"), "w") as f:
            f.write(label_rows(scene.boxes, h, w))
    return len(indices)


def generate_synthetic(out_dir, counts: dict[str, int], seed: int = 0, workers: int | None = None) -> Path:
    """Write the dataset into out_dir (which must not exist) atomically; returns the data.yaml path."""
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists; not touching it")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # leftover of an earlier crash of a process with our pid
    try:
        for split in SYNTH_SPLITS:
            for sub in ("images", "labels"):
                (tmp / split / sub).mkdir(parents=True)
        (tmp / "data.yaml").write_text(SYNTH_DATA_YAML)
        jobs = [(split, list(range(i, min(i + CHUNK_SIZE, counts.get(split, 0)))))
                for split in SYNTH_SPLITS for i in range(0, counts.get(split, 0), CHUNK_SIZE)]
        # spawn, not fork: a child forked after cv2 has started its thread pool hangs in its first cv2 call.
        # One cv2 thread per worker: more would only fight the pool's processes for cores.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers or os.cpu_count(), spawn, cv2.setNumThreads, (1,)) as pool:
            for fut in [pool.submit(write_chunk, str(tmp), seed, split, idx) for split, idx in jobs]:
                fut.result()
        try:
            os.rename(tmp, out)
        except OSError:
            if not out.exists():
                raise
            shutil.rmtree(tmp)  # another process finished the same dataset first: use theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "data.yaml"


def save_sample_mosaic(data_yaml, out_path, n: int = 12, seed: int = 0, tile: int = 256) -> Path:
    """Grid of n train images with their labels drawn in green, for a quick look or the README."""
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


# ---------- the stand-in in the cache

def synthetic_dir(scale):
    return common.CACHE_DIR / f"synthetic-{scale}-seed{SYNTH_SEED}"


def make_synthetic(scale):
    """Generate the stand-in at this scale unless it exists (the main script must guard __main__)."""
    out = synthetic_dir(scale)
    if not (out / "data.yaml").is_file():
        counts = SYNTH_SCALES[scale]
        print(f"generating the synthetic stand-in ({scale}: {sum(counts.values())} images) in {out} ...")
        t0 = time.time()
        generate_synthetic(out, counts, seed=SYNTH_SEED)
        print(f"generated in {time.time() - t0:.1f} s")
    return out / "data.yaml"


if __name__ == "__main__":
    make_synthetic(sys.argv[1])
