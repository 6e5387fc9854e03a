"""The image store: every training image decoded once, packed end to end in one uint8 tensor with a table of
where each one starts and its sizes. On the GPU, in pinned host memory, or in CPU memory."""

import math
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

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
        table = np.empty((len(images), M_COLS), np.int64)
        table[:, M_OFFSET] = np.cumsum(nbytes) - nbytes
        table[:, [M_STORED_H, M_STORED_W]], table[:, [M_H, M_W]] = stored, sizes
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
