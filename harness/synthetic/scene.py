"""One scene of the stand-in: its size and kind (sea, coast or harbour), the order its layers are drawn in,
and what it returns: the image, each ship's box and visible hull mask, and the look-alikes' masks."""

import math
from dataclasses import dataclass

import cv2
import numpy as np

from harness.synthetic.distractors import add_rocks, add_small_distractors
from harness.synthetic.draw import fill, full_mask, mask_bounds, new_canvas, smooth_noise
from harness.synthetic.environment import FOAM_BGR, add_clouds_and_haze, add_land, apply_sensor, render_sea
from harness.synthetic.placement import plan_harbour, plan_open_ships
from harness.synthetic.ships import draw_ship, draw_wake

# ---------- the image
IMG_SIDE_MIN, IMG_SIDE_MAX = 80, 800

# ---------- what is in it
SCENE_KINDS = ("sea", "coast", "harbour")
SCENE_PROBS = (0.55, 0.27, 0.18)
EMPTY_FRACTION = 0.10               # share of images with no ship at all
SCALE_MIN, SCALE_MAX = 8, 220       # a scene's typical ship length in px, drawn log-uniform
MAX_ABREAST = 3                     # ships moored side by side at a pier


@dataclass
class Scene:
    """A rendered scene and the truth about it."""
    image: np.ndarray          # HxWx3 uint8 BGR
    boxes: list                # (x0, y0, x1, y1) per ship, x1/y1 exclusive
    ship_masks: list           # bool HxW visible hull pixels, one per box
    distractor_masks: list     # bool HxW, one per unlabelled object


def pick_image_size(rng):
    """(h, w): the long side log-uniform, mostly landscape."""
    long_side = math.exp(rng.uniform(math.log(120), math.log(IMG_SIDE_MAX)))
    aspect = 1.0 if rng.random() < 0.25 else rng.uniform(1.05, 2.2)
    short_side = max(IMG_SIDE_MIN, long_side / aspect)
    h, w = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
    return int(round(h)), int(round(w))


def sea_canvas(rng, h, w):
    """A Canvas on a fresh sea, with the scene's sun and ground resolution."""
    image = render_sea(rng, h, w)
    sun = rng.normal(0, 1, 2)
    sun /= np.linalg.norm(sun)
    # one ground resolution per scene: ships in a scene have comparable sizes, like a real photo
    scale = math.exp(rng.uniform(math.log(SCALE_MIN),
                                 math.log(max(SCALE_MIN + 4, min(SCALE_MAX, 0.5 * max(h, w))))))
    return new_canvas(image, sun, scale)


def open_ship_count(rng, kind):
    """How many ships to try on open water: a few, sometimes a crowd, fewer beside a harbour's berths."""
    count = int(rng.integers(6, 15)) if rng.random() < 0.08 else int(rng.choice([1, 1, 2, 2, 3, 4, 5]))
    return count if kind != "harbour" else int(rng.integers(0, 3))


def draw_shadows_and_wakes(rng, canvas, ships):
    """Each ship's shadow into the shade, each moving ship's wake into the foam."""
    for ship in ships:
        fill(canvas.shade, ship.pts + canvas.sun * (0.5 + ship.beam * rng.uniform(0.1, 0.4)),
             rng.uniform(0.5, 0.75))
        if ship.moving:
            draw_wake(rng, canvas.foam, ship)


def apply_shade_and_foam(rng, canvas, static):
    """Darken the image by the (softened) shade and blend in the foam, never over static objects."""
    img = canvas.image
    img *= cv2.GaussianBlur(canvas.shade, (0, 0), 0.7)[..., None]
    foam = (cv2.GaussianBlur(canvas.foam, (0, 0), rng.uniform(0.8, 2.0))
            * np.clip(1 + 0.5 * smooth_noise(rng, *canvas.shape, 12), 0, 2))
    foam = np.clip(foam, 0, 1) * (static == 0)
    img += foam[..., None] * (np.float32(FOAM_BGR) - img)


def render_scene(rng: np.random.Generator) -> Scene:
    """One aerial scene: sea (maybe coast or harbour), ships, distractors, weather, sensor effects."""
    h, w = pick_image_size(rng)
    kind = SCENE_KINDS[rng.choice(3, p=SCENE_PROBS)]
    canvas = sea_canvas(rng, h, w)
    has_ships, ships = rng.random() >= EMPTY_FRACTION, []
    if kind != "sea":
        shore = add_land(rng, canvas, kind == "harbour")
        if kind == "harbour":  # an empty harbour still gets its piers
            ships += plan_harbour(rng, canvas, shore, MAX_ABREAST * has_ships)
    add_rocks(rng, canvas)
    static = canvas.occupied.copy()  # land, piers, moored ships, rocks: no foam over them
    if has_ships:
        ships += plan_open_ships(rng, canvas, open_ship_count(rng, kind))
    draw_shadows_and_wakes(rng, canvas, ships)
    apply_shade_and_foam(rng, canvas, static)
    # on top of wakes
    add_small_distractors(rng, canvas, ships, rng.uniform(0, 1) ** 2)
    for ship in ships:
        draw_ship(rng, canvas.image, ship)
    add_clouds_and_haze(rng, canvas)
    image = apply_sensor(rng, canvas.image)
    masks = [full_mask(ship.crop, (h, w)) for ship in ships]
    return Scene(image, [mask_bounds(m) for m in masks], masks,
                 [full_mask(crop, (h, w)) for crop in canvas.distractors])
