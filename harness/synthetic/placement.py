"""Where a scene's ships go: anywhere on open water, or in a harbour, moored at its piers, several abreast,
and along its quay."""

import math
from typing import NamedTuple

import numpy as np

from harness.synthetic.draw import Pose, fill, free_crop, jitter, occupy, paint, pick, rect, to_pixels
from harness.synthetic.ships import make_ship, ship_dims

MAX_SHIPS = 25                      # crowded harbours are capped here
PIER_BGR = [(175, 175, 170), (90, 110, 130), (140, 140, 135)]


class Pier(NamedTuple):
    """A pier from the quay out into the water: where it starts, how long and wide it is."""
    base: np.ndarray
    length: float
    width: float


def plan_open_ships(rng, canvas, count):
    """Up to count ships anywhere on free water, some cut by the border; returns the Ships placed."""
    h, w = canvas.shape
    ships = []
    for _ in range(count * 15):
        if len(ships) >= count:
            break
        length, beam = ship_dims(rng, canvas.scale)
        x, y = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h  # some get cut by the border
        pose = Pose(x, y, rng.uniform(0, 2 * np.pi))
        ship = make_ship(rng, canvas.occupied, length, beam, pose, rng.random() < 0.6)
        ships += [ship] if ship else []
    return ships


def build_piers(rng, canvas, shore):
    """Piers sticking out from the quay, drawn with their shadows; returns them."""
    span, out_ang = max(canvas.shape), math.atan2(shore.out[1], shore.out[0])
    pier_bgr, piers = jitter(rng, pick(rng, PIER_BGR), 8), []
    for s in np.sort(rng.uniform(-0.7, 0.7, rng.integers(1, 5))) * span:
        plen, pw = rng.uniform(0.15, 0.6) * span, max(3.0, rng.uniform(0.05, 0.3) * canvas.scale)
        base = shore.point + shore.along * s
        pts = to_pixels(rect(-4, plen, -pw / 2, pw / 2), Pose(base[0], base[1], out_ang))
        crop = free_crop(pts, np.zeros_like(canvas.occupied))  # piers may cross the quay and each other
        if crop is None:
            continue
        fill(canvas.shade, pts + canvas.sun * pw * 0.3, 0.65)
        paint(canvas.image, crop, pier_bgr)
        occupy(canvas.occupied, pts)
        canvas.distractors.append(crop)
        piers.append(Pier(base, plen, pw))
    return piers


def moor_at_pier(rng, canvas, shore, pier, max_abreast):
    """Berths along each side of a pier, each 0..max_abreast ships deep; returns the Ships placed."""
    out, along, out_ang, ships = shore.out, shore.along, math.atan2(shore.out[1], shore.out[0]), []
    for side in (-1, 1):
        x = rng.uniform(0, 0.3) * pier.length
        while x < pier.length:
            length, beam = ship_dims(rng, canvas.scale, pier.length)
            offset = pier.width / 2
            for _ in range(rng.integers(0, max_abreast + 1)):
                offset += rng.uniform(2, 4) + beam / 2
                c = pier.base + out * (x + length / 2) + along * side * offset
                pose = Pose(c[0], c[1], out_ang + np.pi * rng.integers(2))
                ship = make_ship(rng, canvas.occupied, length, beam, pose, False)
                if ship is None:
                    break
                ships.append(ship)
                offset += beam / 2
                length, beam = length * rng.uniform(0.8, 1.2), beam * rng.uniform(0.8, 1.2)
            x += length + 2 + rng.uniform(0, 0.5 * length)
    return ships


def plan_harbour(rng, canvas, shore, max_abreast):
    """Piers with ships moored alongside, several abreast, and ships along the quay between them."""
    piers = build_piers(rng, canvas, shore)  # all piers first: ships must not end up under one
    ships = [ship for pier in piers for ship in moor_at_pier(rng, canvas, shore, pier, max_abreast)]
    span, quay_ang = max(canvas.shape), math.atan2(shore.along[1], shore.along[0])
    for _ in range(rng.integers(0, 2 * max_abreast + 1)):  # moored along the quay between piers
        length, beam = ship_dims(rng, canvas.scale)
        c = (shore.point + shore.along * rng.uniform(-0.7, 0.7) * span
             + shore.out * (rng.uniform(2, 4) + beam / 2))
        ship = make_ship(rng, canvas.occupied, length, beam, Pose(c[0], c[1], quay_ang), False)
        ships += [ship] if ship else []
    return ships[:MAX_SHIPS]  # the dropped ones leave only an empty berth behind

