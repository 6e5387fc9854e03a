"""The CPU half of a batch: every random choice drawn with Ultralytics' formulas, the boxes moved to their
final place in numpy, and the params row per image that both renderers draw from (its layout defined here
only)."""

import itertools
from typing import Any, NamedTuple

import numpy as np


class Params(NamedTuple):
    """The fields of a plan's params row, one float32 row per image: each field's values, first column or
    width (LAYOUT)."""
    minv: Any     # 9: the inverse of flips @ M (3 x 3, row-major): the GPU samples from output to canvas
    xc: Any       # the mosaic's centre (4 * imgsz for a plain image: all of it in tile 0's quadrant)
    yc: Any
    ox: Any       # 4: each tile's top-left corner on the canvas
    oy: Any
    mix: Any      # MixUp: 1 for a blended image, else 0
    ratio: Any    # MixUp: the image's own share of the blend
    partner: Any  # MixUp: the index in the batch of the image blended in
    gains: Any    # 3: HSV's hue shift (of a turn), saturation gain, value gain


class Layout(NamedTuple):
    """Where a params row keeps each field: its first column and its width; and the row's width."""
    start: Params
    width: Params
    cols: int

    @classmethod
    def of(cls, width, order=Params._fields):
        """The layout of fields of these widths, placed one after another in this order."""
        start = dict(zip(order, itertools.accumulate((getattr(width, f) for f in order), initial=0)))
        return cls(Params(**{f: start[f] for f in Params._fields}), width, sum(width))


# plan_batch writes the params rows through LAYOUT and both renderers read them through it (the Triton kernels
# as constexpr arguments): a change here changes all three.
LAYOUT = Layout.of(Params(minv=9, xc=1, yc=1, ox=4, oy=4, mix=1, ratio=1, partner=1, gains=3))


def pack_params(values):
    """The params rows [B, LAYOUT.cols] float32, from a Params of each field's values ([B] or [B, width])."""
    b = len(values.minv)
    rows = np.empty((b, LAYOUT.cols), np.float32)
    for v, a, w in zip(values, LAYOUT.start, LAYOUT.width):
        rows[:, a:a + w] = np.asarray(v, np.float64).reshape(b, w)
    return rows


def unpack_params(rows):
    """A Params of views into params rows [B, LAYOUT.cols] (an array or a tensor): [B] for a field of one
    column, [B, width] for a wider one."""
    return Params(*(rows[:, a] if w == 1 else rows[:, a:a + w] for a, w in zip(LAYOUT.start, LAYOUT.width)))


class Plan(NamedTuple):
    """The CPU half of a batch of B images (numpy arrays, or their tensors): what the renderers draw from, and
    the boxes in Ultralytics' format."""
    tiles: Any      # [B, 4] the image in each mosaic quadrant (tile 0: the batch's own), rows of the store
    params: Any     # [B, LAYOUT.cols] float32: every other choice (Params)
    batch_idx: Any  # [n] the image of each box
    cls: Any        # [n, 1]
    bboxes: Any     # [n, 4] xywh, normalized to the image


class Boxes(NamedTuple):
    """Every box of the dataset: rows (cls, x, y, w, h) normalized to their image, and where each image's rows
    start and how many it has."""
    rows: np.ndarray
    start: np.ndarray
    count: np.ndarray


def pack_labels(labels):
    """The Boxes of Ultralytics' labels (a dict per image)."""
    counts = np.array([len(lb["cls"]) for lb in labels], np.int64)
    rows = [np.hstack([lb["cls"].reshape(-1, 1), lb["bboxes"].reshape(-1, 4)]) for lb in labels]
    boxes = np.concatenate(rows).astype(np.float32) if counts.sum() else np.zeros((0, 5), np.float32)
    return Boxes(boxes, np.cumsum(counts) - counts, counts)


def affine_matrices(rng, n, sizes, imgsz, hyp):
    """Ultralytics' RandomPerspective matrices M = T @ S @ R @ P @ C for n canvases of the given (w, h);
    also each one's scale, for its box filter."""
    def uniform(a, b=None):
        return rng.uniform(-a, a, n) if b is None else rng.uniform(a, b, n)
    m = np.tile(np.eye(3), (n, 1, 1))
    c, p, r, sh, t = m.copy(), m.copy(), m.copy(), m.copy(), m.copy()
    c[:, 0, 2], c[:, 1, 2] = -sizes[:, 0] / 2, -sizes[:, 1] / 2
    p[:, 2, 0], p[:, 2, 1] = uniform(hyp.perspective), uniform(hyp.perspective)
    angle = np.radians(uniform(hyp.degrees))
    lo, hi = hyp.scale if isinstance(hyp.scale, (tuple, list)) else (1 - hyp.scale, 1 + hyp.scale)
    scale = uniform(lo, hi)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)  # cv2.getRotationMatrix2D about the origin
    r[:, 0, 0], r[:, 0, 1], r[:, 1, 0], r[:, 1, 1] = cos, sin, -sin, cos
    sh[:, 0, 1], sh[:, 1, 0] = np.tan(np.radians(uniform(hyp.shear))), np.tan(np.radians(uniform(hyp.shear)))
    t[:, 0, 2] = uniform(0.5 - hyp.translate, 0.5 + hyp.translate) * imgsz
    t[:, 1, 2] = uniform(0.5 - hyp.translate, 0.5 + hyp.translate) * imgsz
    return t @ sh @ r @ p @ c, scale


def warp_boxes(xyxy, m):
    """Ultralytics' box transform: the four corners through M, then their enclosing box."""
    corners = xyxy[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(-1, 4, 2)
    pts = np.concatenate([corners, np.ones_like(corners[..., :1])], -1) @ m.transpose(0, 2, 1)
    pts = pts[..., :2] / pts[..., 2:]
    return np.concatenate([pts.min(1), pts.max(1)], 1)


def plan_batch(data, idx, rng):
    """The Plan of a batch of the images idx (rows of the store), its choices drawn from rng. data is the
    GpuDataset: its hyp (Ultralytics' knob names), imgsz, index (the decodable images), sizes and boxes."""
    from ultralytics.data.augment import RandomPerspective
    hyp, s, b = data.hyp, data.imgsz, len(idx)
    mosaic = rng.uniform(0, 1, b) <= hyp.mosaic  # Ultralytics skips a mix when uniform > p
    tiles = data.index[rng.integers(0, len(data.index), (b, 4))]
    tiles[:, 0] = idx
    hw = data.sizes[tiles]                         # (h, w) of each tile
    # Mosaic layout (Ultralytics' Mosaic, n=4): tiles meet at a random centre of a 2S x 2S canvas.
    xc = rng.uniform(s // 2, 2 * s - s // 2, b).astype(np.int64)
    yc = rng.uniform(s // 2, 2 * s - s // 2, b).astype(np.int64)
    ox = np.stack([xc - hw[:, 0, 1], xc, xc - hw[:, 2, 1], xc], 1)
    oy = np.stack([yc - hw[:, 0, 0], yc - hw[:, 1, 0], yc, yc], 1)
    big = 4 * s  # a plain image: tile 0 alone, at the origin, and every pixel in its quadrant
    ox[~mosaic], oy[~mosaic] = 0, 0
    xc[~mosaic], yc[~mosaic] = big, big
    canvas = np.where(mosaic[:, None], 2 * s, hw[:, 0, ::-1]).astype(np.float64)  # (w, h)
    m, scale = affine_matrices(rng, b, canvas, s, hyp)
    flip_ud, flip_lr = rng.uniform(0, 1, b) < hyp.flipud, rng.uniform(0, 1, b) < hyp.fliplr
    mix = rng.uniform(0, 1, b) <= hyp.mixup
    ratio = rng.beta(32.0, 32.0, b)
    partner = (np.arange(b) + rng.integers(1, max(b, 2), b)) % b  # another image of this batch
    gains = rng.uniform(-1, 1, (b, 3)) * [hyp.hsv_h, hyp.hsv_s, hyp.hsv_v] + [0, 1, 1]  # hue shift, gains

    # Flips act on the warped image: fold them into M (pixels span 0..S-1, boxes 0..S).
    flip_px, flip_box = np.tile(np.eye(3), (b, 1, 1)), np.tile(np.eye(3), (b, 1, 1))
    for f, axis in ((flip_lr, 0), (flip_ud, 1)):
        flip_px[f, axis, axis], flip_px[f, axis, 2] = -1, s - 1
        flip_box[f, axis, axis], flip_box[f, axis, 2] = -1, s
    minv = np.linalg.inv(flip_px @ m)  # the GPU samples backwards: output pixel -> canvas

    # Boxes of the tiles in use, in canvas pixels.
    use = np.zeros((b, 4), bool)
    use[:, 0], use[mosaic, 1:] = True, True
    sample, k = np.nonzero(use)
    boxes = data.boxes
    n = boxes.count[tiles[sample, k]]
    rows = (np.repeat(boxes.start[tiles[sample, k]], n) + np.arange(n.sum())
            - np.repeat(np.cumsum(n) - n, n))
    sample, k = np.repeat(sample, n), np.repeat(k, n)
    cls, xywh = boxes.rows[rows, :1], boxes.rows[rows, 1:].astype(np.float64)
    wh = hw[sample, k, ::-1]
    xyxy = (np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
            * np.tile(wh, 2))
    xyxy += np.stack([ox[sample, k], oy[sample, k]] * 2, 1)
    in_mosaic = mosaic[sample]
    xyxy[in_mosaic] = xyxy[in_mosaic].clip(0, 2 * s)  # Mosaic clips to its canvas, drops empty boxes
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    sample, cls, before = sample[keep], cls[keep], xyxy[keep]
    after = warp_boxes(before, flip_box[sample] @ m[sample]).clip(0, s)
    # Ultralytics' own filter: big enough, not mostly cut off, not a sliver.
    keep = RandomPerspective.box_candidates(box1=(before * scale[sample, None]).T, box2=after.T)
    sample, cls, after = sample[keep], cls[keep], after[keep]
    # MixUp: a blended image carries its partner's boxes too.
    extra = np.nonzero(mix[:, None] & (partner[:, None] == sample[None]))
    sample = np.concatenate([sample, extra[0]])
    cls, after = np.concatenate([cls, cls[extra[1]]]), np.concatenate([after, after[extra[1]]])
    xywhn = np.concatenate([(after[:, :2] + after[:, 2:]) / 2, after[:, 2:] - after[:, :2]], 1) / s
    order = np.argsort(sample, kind="stable")
    tiles[~mosaic, 1:] = tiles[~mosaic, :1]  # never read for a plain image: fetch() then copies one tile
    params = pack_params(Params(minv=minv.reshape(b, 9), xc=xc, yc=yc, ox=ox, oy=oy, mix=mix, ratio=ratio,
                                partner=partner, gains=gains))
    return Plan(tiles, params, sample[order], cls[order], xywhn[order])
