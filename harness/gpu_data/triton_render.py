"""The GPU half of a batch as two Triton kernels, render_torch's pixels in half precision: warp (mosaic,
affine and flips), then MixUp and HSV. Each output pixel is read straight from the stored images and
written once, where the torch version materializes four float tiles per image and a dozen full-size
intermediates."""

import functools

import harness.gpu_data.plan as plan  # the module, not the package: no import cycle
from harness.gpu_data.store import M_COLS, M_H, M_OFFSET, M_STORED_H, M_STORED_W, M_W, PAD

RENDER_BLOCK = 1024  # output pixels per Triton program


def render_triton(store, ids, params, s):
    """render_torch's output (in half precision) from two Triton kernels: warp, then mixup and HSV. The
    images come channels-last (NHWC strides), the layout Ultralytics gives the model on CUDA, so the first
    convolution needs no layout change."""
    import torch
    import triton
    warp, blend_hsv = kernels()
    b, at, cols = len(ids), plan.LAYOUT.start, plan.LAYOUT.cols
    grid = (triton.cdiv(s * s, RENDER_BLOCK), b)
    warped = torch.empty((b, s, s, 3), dtype=torch.float16, device=store.pixels.device)
    # the columns of the params rows and of the store's table, as the kernels' constexpr arguments
    warp[grid](store.pixels, store.table, ids.contiguous(), params.contiguous(), warped, s, cols, M_COLS, PAD,
               RENDER_BLOCK, MINV=at.minv, XC=at.xc, YC=at.yc, OX=at.ox, OY=at.oy, OFFSET=M_OFFSET,
               STORED_H=M_STORED_H, STORED_W=M_STORED_W, RESIZED_H=M_H, RESIZED_W=M_W)
    out = torch.empty_like(warped)
    blend_hsv[grid](warped, params.contiguous(), out, s, cols, RENDER_BLOCK, MIX=at.mix, RATIO=at.ratio,
                    PARTNER=at.partner, GAINS=at.gains)
    return out.permute(0, 3, 1, 2)  # [B, 3, S, S] with NHWC strides: .float() / 255 keep them


@functools.cache
def kernels():
    """The two kernels (warp, blend_hsv), built on first use: Triton is imported only where the GPU path runs
    (TRITON_INTERPRET=1 runs them on the CPU, which is how the tests check them)."""
    import triton
    import triton.language as tl

    @triton.jit
    def warp(pixels, table, ids, choices, out, S: tl.constexpr, NP: tl.constexpr, NM: tl.constexpr,
             PAD: tl.constexpr, BLOCK: tl.constexpr, MINV: tl.constexpr, XC: tl.constexpr, YC: tl.constexpr,
             OX: tl.constexpr, OY: tl.constexpr, OFFSET: tl.constexpr, STORED_H: tl.constexpr,
             STORED_W: tl.constexpr, RESIZED_H: tl.constexpr, RESIZED_W: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = p < S * S
        x, y = (p % S).to(tl.float32), (p // S).to(tl.float32)
        row = choices + b * NP  # this image's params row (an argument named params breaks Triton's binder)
        m = row + MINV  # the 3 x 3 matrix, row-major
        w = tl.load(m + 6) * x + tl.load(m + 7) * y + tl.load(m + 8)
        u = (tl.load(m + 0) * x + tl.load(m + 1) * y + tl.load(m + 2)) / w
        v = (tl.load(m + 3) * x + tl.load(m + 4) * y + tl.load(m + 5)) / w
        q = (u >= tl.load(row + XC)).to(tl.int32) + 2 * (v >= tl.load(row + YC)).to(tl.int32)
        tu, tv = u - tl.load(row + OX + q), v - tl.load(row + OY + q)
        on_canvas = live & (u >= 0) & (u <= 2 * S - 1) & (v >= 0) & (v <= 2 * S - 1)
        image = table + tl.load(ids + b * 4 + q, mask=live, other=0) * NM  # its row of the store's table
        base = pixels + tl.load(image + OFFSET, mask=live, other=0)
        sh = tl.load(image + STORED_H, mask=live, other=1).to(tl.float32)
        sw = tl.load(image + STORED_W, mask=live, other=1).to(tl.float32)
        h = tl.load(image + RESIZED_H, mask=live, other=1).to(tl.float32)
        wd = tl.load(image + RESIZED_W, mask=live, other=1).to(tl.float32)
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
    def blend_hsv(img, choices, out, S: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr,
                  MIX: tl.constexpr, RATIO: tl.constexpr, PARTNER: tl.constexpr, GAINS: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = p < S * S
        row = choices + b * NP  # this image's params row
        own = img + (b * (S * S) + p) * 3  # NHWC, as warp wrote it
        r = tl.load(own, mask=live, other=0).to(tl.float32)
        g = tl.load(own + 1, mask=live, other=0).to(tl.float32)
        bl = tl.load(own + 2, mask=live, other=0).to(tl.float32)
        ratio = tl.load(row + RATIO)
        if tl.load(row + MIX) > 0:  # MixUp with the partner's warped image
            mate = img + (tl.load(row + PARTNER).to(tl.int64) * (S * S) + p) * 3
            r = r * ratio + tl.load(mate, mask=live, other=0).to(tl.float32) * (1 - ratio)
            g = g * ratio + tl.load(mate + 1, mask=live, other=0).to(tl.float32) * (1 - ratio)
            bl = bl * ratio + tl.load(mate + 2, mask=live, other=0).to(tl.float32) * (1 - ratio)
        # hsv_jitter, pixel by pixel
        mx = tl.maximum(tl.maximum(r, g), bl)
        d = mx - tl.minimum(tl.minimum(r, g), bl)
        safe = tl.where(d > 0, d, 1.0)
        hue = tl.where(mx == r, (g - bl) / safe, tl.where(mx == g, (bl - r) / safe + 2, (r - g) / safe + 4))
        hue = tl.where(d > 0, hue - 6 * tl.floor(hue / 6), 0.0) / 6 + tl.load(row + GAINS)
        hue = hue - tl.floor(hue)
        sat = tl.minimum(tl.maximum(tl.where(mx > 0, d / tl.where(mx > 0, mx, 1.0), 0.0)
                                    * tl.load(row + GAINS + 1), 0), 1)
        val = tl.minimum(tl.maximum(mx * tl.load(row + GAINS + 2), 0), 255)
        for c in tl.static_range(3):
            k = 6 * hue + 5 - 2 * c  # n = 5, 3, 1 for r, g, b
            k = k - 6 * tl.floor(k / 6)
            ch = val - val * sat * tl.minimum(tl.maximum(tl.minimum(k, 4 - k), 0), 1)
            tl.store(out + (b * (S * S) + p) * 3 + c, ch.to(tl.float16), mask=live)
    return warp, blend_hsv
