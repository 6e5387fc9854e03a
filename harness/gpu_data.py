"""The GPU data pipeline (train.py's GPU_DATA = True): decode once, keep the images on the GPU, augment whole
batches there with Ultralytics' formulas and knob names. harness/README.md says how it fits."""

import functools
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from copy import copy

import cv2
import numpy as np

from harness import memory, validation
from harness.common import GPU_DATA_ENV, HarnessError, warn

# Ultralytics' CPU workers (decode, mosaic, affine, HSV and flips, one image at a time) feed about a third of
# what yolo11n's step takes on an H100. Here the training images are decoded once per run, before the clock,
# and kept as uint8 on the GPU (in pinned host memory when they and the model do not both fit), each at its
# own size, packed end to end. Each batch is drawn in two halves: the CPU draws every random choice with
# Ultralytics' formulas and moves the boxes in numpy (plan); the GPU draws the pixels with two Triton kernels
# (render), which fold Ultralytics' resize of a small image into the warp. While the GPU trains on one batch,
# a thread plans the batch after next and the next one is drawn. Validation stays Ultralytics' own.

PAD = 114                    # Ultralytics' grey for letterbox padding and warp borders
DECODE_THREADS = min(16, os.cpu_count() or 1)  # cv2 releases the GIL: threads decode in parallel
# The image store's table, one row per image: where its pixels start, its stored (h, w), and the (h, w) that
# Ultralytics' loader resizes it to (the long side to imgsz). Larger images are stored resized; smaller ones
# as they are, their resize drawn by the warp.
M_OFFSET, M_STORED_H, M_STORED_W, M_H, M_W, M_COLS = 0, 1, 2, 3, 4, 5


def load_capped(path, imgsz):
    """One image as Ultralytics' training loader reads it, BGR, but resized only when its long side is over
    imgsz: (the image or None if it cannot be decoded, the (h, w) that Ultralytics resizes it to)."""
    from ultralytics.utils.patches import imread
    im = imread(str(path))
    if im is None:
        return None, (0, 0)
    h0, w0 = im.shape[:2]
    r = imgsz / max(h0, w0)
    size = (min(math.ceil(w0 * r), imgsz), min(math.ceil(h0 * r), imgsz))
    if r < 1:
        im = cv2.resize(im, size, interpolation=cv2.INTER_LINEAR)
    return im, size[::-1]


class ImageStore:
    """Every training image, packed end to end in one flat uint8 tensor (BGR, row-major) with its table (the
    M_* columns). `pixels` and `table` live together: on the GPU, in pinned host memory, or in CPU memory."""

    def __init__(self, pixels, table):
        self.pixels, self.table = pixels, table

    @classmethod
    def decode(cls, files, imgsz):
        """The images of `files`, decoded by threads into CPU memory: (the store, [N, 2] (h, w) that
        Ultralytics resizes each to, (0, 0) for an image that cannot be decoded)."""
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            loaded = list(pool.map(lambda f: load_capped(f, imgsz), files))
        sizes = np.array([hw for _, hw in loaded], np.int64).reshape(-1, 2)
        return cls.pack([im for im, _ in loaded], sizes), sizes

    @classmethod
    def pack(cls, images, sizes):
        """A store of these images (BGR arrays, None for one that could not be decoded), each to be resized to
        its row of sizes [N, 2] (h, w)."""
        import torch
        stored = np.array([im.shape[:2] if im is not None else (0, 0) for im in images],
                          np.int64).reshape(-1, 2)
        nbytes = stored.prod(1) * 3
        table = np.concatenate([(np.cumsum(nbytes) - nbytes)[:, None], stored, sizes], 1)
        pixels = np.empty(int(nbytes.sum()), np.uint8)
        for im, a in zip(images, table[:, M_OFFSET].tolist()):
            if im is not None:
                pixels[a:a + im.size] = im.reshape(-1)
        return cls(torch.from_numpy(pixels), torch.from_numpy(table))

    @property
    def nbytes(self):
        return self.pixels.numel()

    def to(self, device, pin=False):
        """This store on `device` (or, with pin, in pinned host memory); from pinned memory the copy is
        asynchronous on the current stream."""
        if pin:
            return ImageStore(self.pixels.pin_memory(), self.table.pin_memory())
        return ImageStore(*(t.to(device, non_blocking=True) for t in (self.pixels, self.table)))

    def subset(self, ids):
        """The images `ids` (distinct, a CPU tensor), packed into a new store in pinned memory where there is
        CUDA: what one batch of a store in host memory copies to the GPU."""
        import torch
        table = self.table[ids].clone()
        nbytes = table[:, M_STORED_H] * table[:, M_STORED_W] * 3
        out = torch.empty(int(nbytes.sum()), dtype=torch.uint8, pin_memory=self.pixels.is_pinned())
        src, dst = self.pixels.numpy(), out.numpy()
        starts = (torch.cumsum(nbytes, 0) - nbytes).tolist()
        for a, b, n in zip(table[:, M_OFFSET].tolist(), starts, nbytes.tolist()):
            dst[b:b + n] = src[a:a + n]
        table[:, M_OFFSET] = torch.as_tensor(starts)
        return ImageStore(out, table)


def pack_labels(labels):
    """Every box of the dataset in one array of rows (cls, x, y, w, h), normalized to its image, with where
    each image's rows start and how many it has."""
    counts = np.array([len(lb["cls"]) for lb in labels], np.int64)
    rows = [np.hstack([lb["cls"].reshape(-1, 1), lb["bboxes"].reshape(-1, 4)]) for lb in labels]
    boxes = np.concatenate(rows).astype(np.float32) if counts.sum() else np.zeros((0, 5), np.float32)
    return boxes, np.cumsum(counts) - counts, counts


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


class GpuDataset:
    """The training set as the GPU pipeline sees it: decoded images, packed boxes, the augmentation
    hyperparameters (Ultralytics' names and meanings), and Ultralytics' dataset for its labels."""

    def __init__(self, dataset, hyp, device, fits_on_gpu=None):
        """fits_on_gpu(nbytes): whether the decoded images go on the GPU (default: yes on CUDA); the trainer's
        memory plan (harness/memory.py) answers it from the model's measured need."""
        import torch
        t = time.time()
        self.dataset, self.labels, self.device = dataset, dataset.labels, device
        self.imgsz = dataset.imgsz
        self.hyp = hyp
        store, self.sizes = ImageStore.decode(dataset.im_files, self.imgsz)
        self.boxes, self.start, self.count = pack_labels(self.labels)
        # The dataset check lets a few broken files through with a warning; train without them.
        self.index = np.flatnonzero(self.sizes[:, 0])
        for i in np.flatnonzero(self.sizes[:, 0] == 0)[:3]:
            warn(f"{dataset.im_files[i]} cannot be decoded: training goes on without it")
        if not len(self.index):
            raise HarnessError(f"no training image could be decoded ({dataset.im_files[0]}, ...); "
                               "check the dataset")
        cuda = device.type == "cuda"
        # Images that do not fit on the GPU: each batch's images are gathered and copied over (fetch).
        self.gather = fits_on_gpu is not None and not fits_on_gpu(store.nbytes) and cuda  # the plan: CPU too
        self.store = store.to(device, pin=self.gather) if cuda else store
        self.copy_stream = torch.cuda.Stream(device) if self.gather else None
        if cuda:  # compile the Triton kernels now, before the training clock starts
            p = self.plan(self.index[:1], np.random.default_rng(0))
            self.render(torch.as_tensor(p["tiles"]), torch.as_tensor(p["params"]))
        where = "host memory" if self.gather else "GPU" if cuda else "memory"
        print(f"GPU data: {len(self)} training images decoded in {time.time() - t:.1f} s, "
              f"{store.nbytes / 2**30:.1f} GB in {where}")

    def __len__(self):  # decodable images
        return len(self.index)

    def close_mosaic(self, hyp):
        """Ultralytics' close_mosaic: the last epochs train on plain images."""
        self.hyp.mosaic = self.hyp.mixup = 0.0

    def plan(self, idx, rng):
        """The CPU half of a batch: every random choice, and the boxes moved to their final place."""
        from ultralytics.data.augment import RandomPerspective
        hyp, s, b = self.hyp, self.imgsz, len(idx)
        mosaic = rng.uniform(0, 1, b) <= hyp.mosaic  # Ultralytics skips a mix when uniform > p
        tiles = self.index[rng.integers(0, len(self), (b, 4))]
        tiles[:, 0] = idx
        hw = self.sizes[tiles]                         # (h, w) of each tile
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
        r = rng.uniform(-1, 1, (b, 3)) * [hyp.hsv_h, hyp.hsv_s, hyp.hsv_v] + [0, 1, 1]  # hue shift, gains

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
        n = self.count[tiles[sample, k]]
        rows = (np.repeat(self.start[tiles[sample, k]], n) + np.arange(n.sum())
                - np.repeat(np.cumsum(n) - n, n))
        sample, k = np.repeat(sample, n), np.repeat(k, n)
        cls, xywh = self.boxes[rows, :1], self.boxes[rows, 1:].astype(np.float64)
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
        params = np.concatenate([minv.reshape(b, 9), xc[:, None], yc[:, None], ox, oy,  # P_* columns
                                 mix[:, None], ratio[:, None], partner[:, None], r], 1).astype(np.float32)
        return dict(tiles=tiles, params=params, batch_idx=sample[order], cls=cls[order], bboxes=xywhn[order])

    def fetch(self, tiles):
        """Where render() reads a batch's images from, given plan()'s tiles as a CPU tensor: (store, ids
        [B, 4] into its table, a CUDA event to wait for or None). Images kept in host memory: the batch's
        distinct images, packed into pinned memory and copied over on a side stream. GpuLoader calls this in
        its planning thread, so the packing (tens of ms) and the copy overlap the training step."""
        import torch
        dev = self.device
        if not self.gather:
            return self.store, tiles.to(dev, non_blocking=True), None
        uniq, ids = torch.unique(tiles, return_inverse=True)
        batch = self.store.subset(uniq)
        if dev.type != "cuda":
            return batch, ids, None
        with torch.cuda.stream(self.copy_stream):
            store, ids = batch.to(dev), ids.to(dev, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        return store, ids, ready

    def render(self, tiles, params):
        """The GPU half of a batch, from plan()'s tiles (a CPU tensor, or what fetch() made of it) and params
        (a CPU tensor): [B, 3, S, S] RGB images in 0..255 (half precision on the GPU), as Ultralytics'
        pipeline would draw them for these choices."""
        import torch
        store, ids, ready = self.fetch(tiles) if torch.is_tensor(tiles) else tiles
        if ready is not None:  # copied on the side stream: wait for it, and keep its memory until drawn
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(ready)
            for t in (store.pixels, store.table, ids):
                t.record_stream(stream)
        draw = render_triton if self.device.type == "cuda" else render_torch
        return draw(store, ids, params.to(self.device, non_blocking=True), self.imgsz)


# Where params' columns are (GpuDataset.plan writes them, both renderers read them).
P_MINV, P_XC, P_YC, P_OX, P_OY, P_MIX, P_RATIO, P_PARTNER, P_GAINS, P_COLS = (
    0, 9, 10, 11, 15, 19, 20, 21, 22, 25)


def render_torch(store, ids, params, s, chunk=16):
    """The renderer in plain torch, for the CPU (and the reference the Triton one is tested against), `chunk`
    images at a time."""
    import torch
    b = len(ids)
    img = torch.cat([warp_torch(store, ids[a:a + chunk], params[a:a + chunk], s) for a in range(0, b, chunk)])
    mix, ratio, partner = params[:, P_MIX] > 0, params[:, P_RATIO], params[:, P_PARTNER].long()
    r = ratio.view(b, 1, 1, 1)
    img = torch.where(mix.view(b, 1, 1, 1), img * r + img[partner] * (1 - r), img)
    return hsv_jitter(img, params[:, P_GAINS:P_GAINS + 3])


def warp_torch(store, ids, params, s, padded=None):
    """Mosaic, affine and flips of these images: [B, 3, S, S] float RGB. Each output pixel samples the canvas:
    bilinearly between four pixels of the resized image (grey beyond its edges), whose value at a point is
    read bilinearly from the stored image at cv2.resize's pixel centres. padded (default: where every image is
    stored at its resized size) samples padded tiles with grid_sample instead: the same pixels, 2-3x faster on
    a CPU."""
    import torch
    b, dev = len(ids), store.pixels.device
    minv, xc, yc = (params[:, P_MINV:P_MINV + 9].view(b, 3, 3), params[:, P_XC:P_XC + 1],
                    params[:, P_YC:P_YC + 1])
    ox, oy = params[:, P_OX:P_OX + 4], params[:, P_OY:P_OY + 4]
    ys, xs = torch.meshgrid(torch.arange(s, device=dev), torch.arange(s, device=dev), indexing="ij")
    src = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3).float() @ minv.transpose(1, 2)
    u, v = src[..., 0] / src[..., 2], src[..., 1] / src[..., 2]
    q = (u >= xc).long() + 2 * (v >= yc).long()
    tu, tv = u - ox.gather(1, q), v - oy.gather(1, q)
    table = store.table[ids]  # [B, 4, M_COLS]: each quadrant's image; a pixel takes its quadrant's
    on_canvas = (u >= 0) & (u <= 2 * s - 1) & (v >= 0) & (v <= 2 * s - 1)
    if padded is None:
        padded = bool((table[..., [M_STORED_H, M_STORED_W]] == table[..., [M_H, M_W]]).all())
    if padded:
        return sample_tiles(store, ids, tu, tv, q, on_canvas, s)
    offset = table[..., M_OFFSET].gather(1, q)
    sh, sw, h, w = (table[..., c].float().gather(1, q) for c in (M_STORED_H, M_STORED_W, M_H, M_W))
    # how much of the four resized pixels around (tu, tv) lies on the image, the rest being grey
    x0, y0 = tu.floor(), tv.floor()
    fx, fy = tu - x0, tv - y0
    wx = ((x0 >= 0) & (x0 < w)) * (1 - fx) + ((x0 >= -1) & (x0 < w - 1)) * fx
    wy = ((y0 >= 0) & (y0 < h)) * (1 - fy) + ((y0 >= -1) & (y0 < h - 1)) * fy
    inside = wx * wy * on_canvas
    # the resized image at (tu, tv), read from the stored one (clamped to its edge, as cv2.resize does)
    su = torch.minimum(((tu + 0.5) * sw / w - 0.5).clamp(min=0), sw - 1)
    sv = torch.minimum(((tv + 0.5) * sh / h - 0.5).clamp(min=0), sh - 1)
    sx0, sy0 = su.floor(), sv.floor()
    gx, gy = su - sx0, sv - sy0
    sx1, sy1 = torch.minimum(sx0 + 1, sw - 1), torch.minimum(sy0 + 1, sh - 1)
    stride = sw.long() * 3
    rows = [offset + sy0.long() * stride, offset + sy1.long() * stride]
    taps = [[r + sx0.long() * 3, r + sx1.long() * 3] for r in rows]  # [[top left, top right], [bottom ...]]
    weights = [[(1 - gx) * (1 - gy), gx * (1 - gy)], [(1 - gx) * gy, gx * gy]]
    out = []
    for c in (2, 1, 0):  # BGR -> RGB
        value = sum(store.pixels[taps[i][j] + c].float() * weights[i][j] for i in (0, 1) for j in (0, 1))
        out.append(value * inside + PAD * (1 - inside))
    return torch.stack(out, 1).view(b, 3, s, s)


def sample_tiles(store, ids, tu, tv, q, on_canvas, s):
    """warp_torch's pixels where every image is stored at its resized size: the images padded into S x S grey
    tiles, then one grid_sample."""
    import torch
    import torch.nn.functional as F
    b = len(ids)
    uniq, inverse = torch.unique(ids, return_inverse=True)
    tiles = torch.full((len(uniq), s, s, 3), PAD, dtype=torch.uint8, device=store.pixels.device)
    for k, (offset, h, w) in enumerate(store.table[uniq][:, [M_OFFSET, M_STORED_H, M_STORED_W]].tolist()):
        tiles[k, :h, :w] = store.pixels[offset:offset + h * w * 3].view(h, w, 3)
    tiles = tiles[inverse.view(-1)].view(b, 4, s, s, 3).permute(0, 4, 1, 2, 3).flip(1).float() - PAD  # to RGB
    grid = torch.stack([tu * (2 / (s - 1)) - 1, tv * (2 / (s - 1)) - 1, q * (2 / 3) - 1], -1)
    img = F.grid_sample(tiles, grid.view(b, 1, s, s, 3), mode="bilinear", padding_mode="zeros",
                        align_corners=True).squeeze(2) + PAD
    return torch.where(on_canvas.view(b, 1, s, s), img, torch.full_like(img, PAD))


def hsv_jitter(img, gains):
    """Ultralytics' RandomHSV on float RGB in 0..255: hue shifted by gains[:, 0] of a turn, saturation
    and value multiplied by gains[:, 1] and gains[:, 2] (clipped)."""
    import torch
    mx, mn = img.max(1).values, img.min(1).values
    d = mx - mn
    r, g, b = img.unbind(1)
    safe = torch.where(d > 0, d, torch.ones_like(d))
    hue = torch.where(mx == r, ((g - b) / safe) % 6,
                      torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(d > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(mx > 0, d / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    hue = (hue + gains[:, 0, None, None]) % 1
    sat = (sat * gains[:, 1, None, None]).clamp(0, 1)
    val = (mx * gains[:, 2, None, None]).clamp(0, 255)
    h6 = hue * 6
    out = [val - val * sat * torch.clamp(torch.minimum((n + h6) % 6, 4 - (n + h6) % 6), 0, 1)
           for n in (5, 3, 1)]
    return torch.stack(out, 1)


# The same renderer as two Triton kernels: each output pixel is read straight from the decoded images
# and written once, where the torch version materializes four float tiles per image and a dozen
# full-size intermediates.
RENDER_BLOCK = 1024  # output pixels per Triton program


def render_triton(store, ids, params, s):
    """render_torch's output (in half precision) from two Triton kernels: warp, then mixup and HSV. The
    images come channels-last (NHWC strides), the layout Ultralytics gives the model on CUDA, so the first
    convolution needs no layout change."""
    import torch
    import triton
    warp, blend_hsv = _triton_kernels()
    b = len(ids)
    grid = (triton.cdiv(s * s, RENDER_BLOCK), b)
    warped = torch.empty((b, s, s, 3), dtype=torch.float16, device=store.pixels.device)
    warp[grid](store.pixels, store.table, ids.contiguous(), params.contiguous(), warped, s, P_COLS, M_COLS,
               PAD, RENDER_BLOCK)
    out = torch.empty_like(warped)
    blend_hsv[grid](warped, params.contiguous(), out, s, P_COLS, RENDER_BLOCK)
    return out.permute(0, 3, 1, 2)  # [B, 3, S, S] with NHWC strides: .float() / 255 keep them


@functools.cache
def _triton_kernels():
    """Built on first use: Triton is imported only where the GPU path runs (TRITON_INTERPRET=1 runs
    them on the CPU, which is how the tests check them)."""
    import triton
    import triton.language as tl

    @triton.jit
    def warp(pixels, table, ids, choices, out, S: tl.constexpr, NP: tl.constexpr, NM: tl.constexpr,
             PAD: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = p < S * S
        x, y = (p % S).to(tl.float32), (p // S).to(tl.float32)
        row = choices + b * NP  # this image's params row (an argument named params breaks Triton's binder)
        w = tl.load(row + 6) * x + tl.load(row + 7) * y + tl.load(row + 8)
        u = (tl.load(row + 0) * x + tl.load(row + 1) * y + tl.load(row + 2)) / w
        v = (tl.load(row + 3) * x + tl.load(row + 4) * y + tl.load(row + 5)) / w
        q = (u >= tl.load(row + 9)).to(tl.int32) + 2 * (v >= tl.load(row + 10)).to(tl.int32)
        tu, tv = u - tl.load(row + 11 + q), v - tl.load(row + 15 + q)
        on_canvas = live & (u >= 0) & (u <= 2 * S - 1) & (v >= 0) & (v <= 2 * S - 1)
        image = table + tl.load(ids + b * 4 + q, mask=live, other=0) * NM  # its row of the store's table
        base = pixels + tl.load(image, mask=live, other=0)
        sh = tl.load(image + 1, mask=live, other=1).to(tl.float32)
        sw = tl.load(image + 2, mask=live, other=1).to(tl.float32)
        h = tl.load(image + 3, mask=live, other=1).to(tl.float32)
        wd = tl.load(image + 4, mask=live, other=1).to(tl.float32)
        # how much of the four resized pixels around (tu, tv) lies on the image, the rest being grey
        x0, y0 = tl.floor(tu), tl.floor(tv)
        fx, fy = tu - x0, tv - y0
        wx = tl.where((x0 >= 0) & (x0 < wd), 1 - fx, 0.0) + tl.where((x0 >= -1) & (x0 < wd - 1), fx, 0.0)
        wy = tl.where((y0 >= 0) & (y0 < h), 1 - fy, 0.0) + tl.where((y0 >= -1) & (y0 < h - 1), fy, 0.0)
        inside = tl.where(on_canvas, wx * wy, 0.0)
        # the resized image at (tu, tv), read from the stored one (clamped to its edge, as cv2.resize does)
        su = tl.minimum(tl.maximum((tu + 0.5) * sw / wd - 0.5, 0.0), sw - 1)
        sv = tl.minimum(tl.maximum((tv + 0.5) * sh / h - 0.5, 0.0), sh - 1)
        sx0f, sy0f = tl.floor(su), tl.floor(sv)
        gx, gy = su - sx0f, sv - sy0f
        sx0, sy0 = sx0f.to(tl.int64), sy0f.to(tl.int64)
        stride = sw.to(tl.int64)
        sx1 = tl.minimum(sx0 + 1, stride - 1)
        sy1 = tl.minimum(sy0 + 1, sh.to(tl.int64) - 1)
        read = on_canvas & (inside > 0)
        for c in tl.static_range(3):
            k = 2 - c  # BGR -> RGB
            p00 = tl.load(base + (sy0 * stride + sx0) * 3 + k, mask=read, other=PAD).to(tl.float32)
            p01 = tl.load(base + (sy0 * stride + sx1) * 3 + k, mask=read, other=PAD).to(tl.float32)
            p10 = tl.load(base + (sy1 * stride + sx0) * 3 + k, mask=read, other=PAD).to(tl.float32)
            p11 = tl.load(base + (sy1 * stride + sx1) * 3 + k, mask=read, other=PAD).to(tl.float32)
            value = (p00 * (1 - gx) + p01 * gx) * (1 - gy) + (p10 * (1 - gx) + p11 * gx) * gy
            acc = value * inside + PAD * (1 - inside)
            tl.store(out + (b * (S * S) + p) * 3 + c, acc.to(tl.float16), mask=live)  # NHWC

    @triton.jit
    def blend_hsv(img, choices, out, S: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = p < S * S
        row = choices + b * NP  # this image's params row
        own = img + (b * (S * S) + p) * 3  # NHWC, as warp wrote it
        r = tl.load(own, mask=live, other=0).to(tl.float32)
        g = tl.load(own + 1, mask=live, other=0).to(tl.float32)
        bl = tl.load(own + 2, mask=live, other=0).to(tl.float32)
        ratio = tl.load(row + 20)
        if tl.load(row + 19) > 0:  # MixUp with the partner's warped image
            mate = img + (tl.load(row + 21).to(tl.int64) * (S * S) + p) * 3
            r = r * ratio + tl.load(mate, mask=live, other=0).to(tl.float32) * (1 - ratio)
            g = g * ratio + tl.load(mate + 1, mask=live, other=0).to(tl.float32) * (1 - ratio)
            bl = bl * ratio + tl.load(mate + 2, mask=live, other=0).to(tl.float32) * (1 - ratio)
        # hsv_jitter, pixel by pixel
        mx = tl.maximum(tl.maximum(r, g), bl)
        d = mx - tl.minimum(tl.minimum(r, g), bl)
        safe = tl.where(d > 0, d, 1.0)
        hue = tl.where(mx == r, (g - bl) / safe, tl.where(mx == g, (bl - r) / safe + 2, (r - g) / safe + 4))
        hue = tl.where(d > 0, hue - 6 * tl.floor(hue / 6), 0.0) / 6 + tl.load(row + 22)
        hue = hue - tl.floor(hue)
        sat = tl.minimum(tl.maximum(tl.where(mx > 0, d / tl.where(mx > 0, mx, 1.0), 0.0)
                                    * tl.load(row + 23), 0), 1)
        val = tl.minimum(tl.maximum(mx * tl.load(row + 24), 0), 255)
        for c in tl.static_range(3):
            k = 6 * hue + 5 - 2 * c  # n = 5, 3, 1 for r, g, b
            k = k - 6 * tl.floor(k / 6)
            ch = val - val * sat * tl.minimum(tl.maximum(tl.minimum(k, 4 - k), 0), 1)
            tl.store(out + (b * (S * S) + p) * 3 + c, ch.to(tl.float16), mask=live)
    return warp, blend_hsv


class EpochShard:
    """What Ultralytics' trainer reads off a DataLoader's sampler: images per epoch, and set_epoch()."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return self.loader.samples

    def set_epoch(self, epoch):
        self.loader.epoch = epoch


class GpuLoader:
    """Stands in for Ultralytics' training DataLoader (the parts its trainer uses): an epoch is a seeded
    shuffle, split across DDP ranks like DistributedSampler, cut into equal batches augmented on the GPU."""
    num_workers = 0
    drop_last = False

    def __init__(self, data, batch_size, seed, rank=-1, world_size=1):
        self.dataset, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size = max(rank, 0), max(world_size, 1)
        self.epoch = 0
        self.sampler = EpochShard(self)
        self.rng = np.random.default_rng(seed + 1 + self.rank)

    def __len__(self):  # batches per epoch
        return math.ceil(self.samples / self.batch_size)

    @property
    def samples(self):  # images per epoch for this rank: whole batches
        return math.ceil(len(self.dataset) / (self.world_size * self.batch_size)) * self.batch_size

    def reset(self):
        pass

    def __iter__(self):
        order = self.dataset.index[
            np.random.default_rng(self.seed + self.epoch).permutation(len(self.dataset))]
        # Padded with the epoch's first images to whole batches on every rank, as DistributedSampler pads
        # ranks: a smaller last batch is a new input shape, for which cuDNN spends seconds of the budget
        # choosing kernels.
        order = np.resize(order, self.samples * self.world_size)[self.rank::self.world_size]
        self.epoch += 1
        batches = [order[a:a + self.batch_size] for a in range(0, len(order), self.batch_size)]
        # When the trainer takes a batch, the next one is drawn and the one after that planned:
        # - planned in a thread, the CPU half, while the trainer waits for each step's end. One thread keeps
        #   the draws in order: a seed gives the same batches.
        # - drawn one batch ahead, on the trainer's own stream (a side stream's cached blocks would grow the
        #   memory reserve every epoch): the GPU draws the next batch while the CPU, just back from the
        #   trainer's per-batch sync, launches this one's forward pass.
        with ThreadPoolExecutor(1) as planner:
            ahead = planner.submit(self.plan, batches[0])
            drawn = None
            for i in range(len(batches)):
                p = ahead.result()
                if i + 1 < len(batches):
                    ahead = planner.submit(self.plan, batches[i + 1])
                drawn, done = self.render(p), drawn
                if done is not None:
                    yield done
            yield drawn

    def plan(self, idx):
        """The CPU half of one batch, as tensors ready to copy to the GPU (pinned when there is one)."""
        import torch
        p = self.dataset.plan(idx, self.rng)
        out = {k: torch.as_tensor(p[k], dtype=torch.long if k == "tiles" else torch.float32)
               for k in ("tiles", "params", "batch_idx", "cls", "bboxes")}
        if self.dataset.device.type == "cuda":
            out = {k: v.pin_memory() for k, v in out.items()}
        if self.dataset.gather:  # images in host memory: this batch's tiles, on their way to the GPU
            out["tiles"] = self.dataset.fetch(out["tiles"])
        out["im_file"] = [self.dataset.dataset.im_files[i] for i in idx]
        return out

    def render(self, p):
        """One batch in Ultralytics' format, on the GPU: the planned tensors copied over, the pixels drawn."""
        dev = self.dataset.device
        b = {k: p[k].to(dev, non_blocking=True) for k in ("batch_idx", "cls", "bboxes")}
        return {"img": self.dataset.render(p["tiles"], p["params"]), **b, "im_file": p["im_file"]}


class TrainingData:
    """prepare.Trainer's loaders and its one batch: the GPU pipeline for training (GPU_DATA = True) with its
    images where the memory plan puts them, Ultralytics' own loader otherwise, kept batches for VAL = True's
    validation; and a run that ends where Ultralytics would halve the batch after running out of memory."""

    def get_dataloader(self, dataset_path, batch_size=16, rank=0, mode="train"):
        if mode == "val" and self.world_size <= 1 and validation.prebuilt():  # VAL = True: decoded once
            # workers start on first use
            loader = super().get_dataloader(dataset_path, batch_size, rank, mode)
            return validation.PrebuiltBatches(loader.dataset, loader.batch_size, self.device, keep=True)
        if mode != "train" or os.environ.get(GPU_DATA_ENV) != "1":
            loader = super().get_dataloader(dataset_path, batch_size, rank, mode)
            if mode == "train":  # the model at this batch must fit: an error: line before the clock if not
                self.train_files = list(loader.dataset.im_files)  # what the guard checks training read
                memory.plan(self, batch_size, loader.dataset.labels, 0)
            return loader
        if getattr(self, "gpu_data", None) is None:  # decoded once
            from ultralytics.utils.torch_utils import torch_distributed_zero_first
            with torch_distributed_zero_first(rank):  # one process writes the label cache
                dataset = self.build_dataset(dataset_path, "train", batch_size)
            self.train_files = list(dataset.im_files)
            self.gpu_data = GpuDataset(dataset, copy(self.args), self.device, lambda nbytes: memory.plan(
                self, batch_size, dataset.labels, nbytes))  # on the GPU where they fit beside the model
        return GpuLoader(self.gpu_data, batch_size, self.args.seed, rank, self.world_size)

    def _build_train_pipeline(self):
        # Ultralytics' out-of-memory retry halves the batch and builds again: a run trains train.py's batch
        if getattr(self, "planned_batch", self.batch_size) != self.batch_size:
            raise HarnessError(memory.ran_out(self, self.planned_batch))
        self.planned_batch = self.batch_size
        super()._build_train_pipeline()
