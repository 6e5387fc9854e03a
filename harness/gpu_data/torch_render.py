"""The GPU half of a batch in plain torch: the CPU's renderer (CI), and the reference the Triton kernels are
tested against. Mosaic, affine and flips in one backward warp from the stored images, then MixUp and HSV."""

import harness.gpu_data.plan as plan  # the module, not the package: no import cycle
from harness.gpu_data.store import M_H, M_OFFSET, M_STORED_H, M_STORED_W, M_W, PAD


def render_torch(store, ids, params, s, chunk=16):
    """The batch drawn from store's images ids [B, 4] and plan's params rows [B, cols]: [B, 3, S, S] float
    RGB in 0..255, `chunk` images warped at a time."""
    import torch
    b = len(ids)
    img = torch.cat([warp_torch(store, ids[a:a + chunk], params[a:a + chunk], s) for a in range(0, b, chunk)])
    p = plan.unpack_params(params)
    r = p.ratio.view(b, 1, 1, 1)
    img = torch.where((p.mix > 0).view(b, 1, 1, 1), img * r + img[p.partner.long()] * (1 - r), img)
    return hsv_jitter(img, p.gains)


def warp_torch(store, ids, params, s, padded=None):
    """Mosaic, affine and flips of these images: [B, 3, S, S] float RGB. Each output pixel samples the canvas:
    bilinearly between four pixels of the resized image (grey beyond its edges), whose value at a point is
    read bilinearly from the stored image at cv2.resize's pixel centres. padded (default: where every image is
    stored at its resized size) samples padded tiles with grid_sample instead: the same pixels, 2-3x faster on
    a CPU."""
    import torch
    b, dev = len(ids), store.pixels.device
    p = plan.unpack_params(params)
    ys, xs = torch.meshgrid(torch.arange(s, device=dev), torch.arange(s, device=dev), indexing="ij")
    minv = p.minv.view(b, 3, 3)
    src = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3).float() @ minv.transpose(1, 2)
    u, v = src[..., 0] / src[..., 2], src[..., 1] / src[..., 2]
    q = (u >= p.xc[:, None]).long() + 2 * (v >= p.yc[:, None]).long()
    tu, tv = u - p.ox.gather(1, q), v - p.oy.gather(1, q)
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
