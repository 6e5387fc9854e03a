"""One ship of the stand-in: its size, hull outline, placement check, wake and paint. A ship is placed
only where its hull is free and big enough to label; its visible hull pixels are its label."""

import math
from typing import NamedTuple

import cv2
import numpy as np

from harness.synthetic.draw import Crop, Pose, fill, fixed, free_crop, jitter, occupy, pick, rect, to_pixels

# ---------- sizes
SHIP_LEN_MIN, SHIP_LEN_MAX = 3.0, 300.0
MIN_HULL_AREA, MIN_HULL_SIDE = 6, 2  # smaller visible hulls are not drawn (nobody could label them)

# ---------- colours (BGR)
HULL_BGR = [(235, 235, 235), (180, 180, 175), (110, 110, 105), (60, 60, 60), (35, 35, 40), (45, 45, 150),
            (45, 55, 110), (140, 75, 30), (80, 45, 20), (60, 105, 55)]
DECK_BGR = [(220, 225, 225), (90, 110, 140), (50, 60, 130), (70, 110, 70), (120, 120, 120), (130, 160, 190)]
BOX_BGR = [(40, 40, 170), (150, 90, 40), (40, 120, 200), (60, 120, 60), (170, 170, 170), (30, 60, 120),
           (200, 200, 200)]


class Ship(NamedTuple):
    """A placed ship: its hull outline in image pixels, its visible hull pixels, its size and pose."""
    pts: np.ndarray
    crop: Crop
    length: float
    beam: float
    pose: Pose
    moving: bool       # it draws a wake


# ---------- placing a ship

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


def make_ship(rng, occupied, length, beam, pose, moving):
    """Place one ship if its visible hull is big enough and free; returns the Ship or None."""
    pts = to_pixels(hull_outline(rng, length, beam), pose)
    crop = free_crop(pts, occupied)
    if crop is None:
        return None
    ys, xs = np.nonzero(crop.mask)
    if len(xs) < MIN_HULL_AREA or np.ptp(xs) + 1 < MIN_HULL_SIDE or np.ptp(ys) + 1 < MIN_HULL_SIDE:
        return None
    occupy(occupied, pts)
    return Ship(pts, crop, length, beam, pose, moving)


def ship_dims(rng, scale, max_len=SHIP_LEN_MAX):
    """(length, beam) around the scene's typical ship length; length/beam between 3 and 8."""
    length = float(np.clip(scale * math.exp(rng.normal(0, 0.45)), SHIP_LEN_MIN, min(max_len, SHIP_LEN_MAX)))
    return length, max(1.5, length / rng.uniform(3, 8))


# ---------- drawing a ship

def fading_line(rng, foam, p0, p1, strength, width0, width1, wobble, steps=8):
    """Foam stroke that fades (and widens) from p0 to p1, wobbling sideways like churned water."""
    for i in range(steps):
        a, b = p0 + (p1 - p0) * i / steps, p0 + (p1 - p0) * (i + 1) / steps + rng.normal(0, wobble + 1e-9, 2)
        width = max(1, int(width0 + (width1 - width0) * i / steps))
        cv2.line(foam, fixed(a), fixed(b), strength * (1 - i / steps), width, cv2.LINE_AA, 3)


def draw_wake(rng, foam, ship):
    """Turbulent trail plus the two Kelvin arms (about 19.5 degrees) behind a moving ship."""
    d = np.array([math.cos(ship.pose.angle), math.sin(ship.pose.angle)])
    stern = np.array([ship.pose.x, ship.pose.y]) - d * ship.length / 2
    wake_len, beam = ship.length * rng.uniform(0.8, 5), ship.beam
    fading_line(rng, foam, stern, stern - d * wake_len, 0.9, beam * 0.6, beam * 1.5, beam * 0.15)
    for sign in (-1, 1):
        a = ship.pose.angle + np.pi + sign * math.radians(19.5)
        tip = stern + np.array([math.cos(a), math.sin(a)]) * wake_len * 0.7
        fading_line(rng, foam, stern, tip, rng.uniform(0.1, 0.35), beam / 4, beam / 4, 0)


def draw_ship(rng, img, ship):
    """Hull, deck and superstructure, painted only inside the hull mask."""
    m, x0, y0 = ship.crop
    view = img[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
    layer = view.copy()
    L, B = ship.length, ship.beam
    in_crop = Pose(ship.pose.x - x0, ship.pose.y - y0, ship.pose.angle)
    def put(local, bgr):
        return fill(layer, to_pixels(local, in_crop), bgr)
    fill(layer, ship.pts - [x0, y0], jitter(rng, pick(rng, HULL_BGR), 10))
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
