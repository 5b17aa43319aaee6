"""Area resampling of image windows through an integral image.

The reference resizes with torch's "area" interpolation, which is adaptive
average pooling: output pixel i averages input rows
[floor(i*n/m), ceil((i+1)*n/m)). With an integral image every such mean is
four lookups, so all pyramid levels and all RNet/ONet crops of a batch come
from one integral image per frame, with no per-box Python loop; and because
the integral holds exact integer sums, the means match the reference's to
float rounding. Written once for numpy and torch (array API).
"""
from __future__ import annotations

from array_api_compat import array_namespace

MEAN = 127.5
SCALE = 0.0078125  # 1/128: the nets' input normalization


def integral_image(images):
    """(N, H, W, C) uint8 -> (N, H+1, W+1, C) int32 inclusive prefix sums with a zero border."""
    xp = array_namespace(images)
    n, h, w, c = images.shape
    s = xp.cumulative_sum(xp.cumulative_sum(xp.astype(images, xp.int32), axis=1), axis=2)
    out = xp.zeros((n, h + 1, w + 1, c), dtype=xp.int32, device=getattr(images, "device", None))
    out[:, 1:, 1:, :] = s
    return out


def area_bins(xp, start, length, m: int):
    """Adaptive-pooling bin edges (n, m) for windows [start, start+length), exact integer maths."""
    i = xp.arange(m, dtype=xp.int64, device=getattr(start, "device", None))[None, :]
    length = length[:, None]
    lo = start[:, None] + (i * length) // m
    hi = start[:, None] + ((i + 1) * length + m - 1) // m
    return lo, hi


def _normalize(xp, total, area):
    """Mean of each bin, then the nets' (x - 127.5) / 128; in place on one float32 buffer."""
    out = xp.astype(total, xp.float32)
    out /= xp.astype(area, xp.float32)
    out -= MEAN
    out *= SCALE
    return out


def area_resize(ii, frame, windows, out_h: int, out_w: int):
    """Resize windows of frames to out_h x out_w by area averaging, normalized for the nets.

    ii: integral images (N, H+1, W+1, C); frame: (n,) frame index of each window;
    windows: (n, 4) int [y0, y1, x0, x1], non-empty and inside the frame.
    Returns (n, C, out_h, out_w) float32, already (x - 127.5) / 128.
    """
    xp = array_namespace(ii)
    N, H1, W1, C = ii.shape
    ys, ye = area_bins(xp, windows[:, 0], windows[:, 1] - windows[:, 0], out_h)
    xs, xe = area_bins(xp, windows[:, 2], windows[:, 3] - windows[:, 2], out_w)
    # one flat gather of the four corners: rows of C sums at (frame, y, x)
    base = frame[:, None, None] * (H1 * W1)
    rows = [base + (y * W1)[:, :, None] for y in (ys, ye)]
    corners = [r + x[:, None, :] for r in rows for x in (xs, xe)]  # ss, se, es, ee
    flat = xp.reshape(ii, (N * H1 * W1, C))
    g = xp.take(flat, xp.reshape(xp.stack(corners, axis=0), (-1,)), axis=0)
    g = xp.reshape(g, (4, windows.shape[0], out_h, out_w, C))
    total = g[3] - g[2] - g[1] + g[0]
    area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :])[..., None]
    return xp.permute_dims(_normalize(xp, total, area), (0, 3, 1, 2))


def resize_frames(ii, out_h: int, out_w: int):
    """Whole frames to out_h x out_w by area averaging (a pyramid level), normalized for PNet.

    Every frame shares the same bins, so the sums separate: two row gathers,
    then two column gathers, (N, C, out_h, out_w) float32.
    """
    xp = array_namespace(ii)
    N, H1, W1, C = ii.shape
    dev = getattr(ii, "device", None)
    zero = xp.zeros(1, dtype=xp.int64, device=dev)
    ys, ye = area_bins(xp, zero, xp.asarray([H1 - 1], dtype=xp.int64, device=dev), out_h)
    xs, xe = area_bins(xp, zero, xp.asarray([W1 - 1], dtype=xp.int64, device=dev), out_w)
    rows = xp.take(ii, ye[0], axis=1) - xp.take(ii, ys[0], axis=1)  # (N, out_h, W+1, C)
    total = xp.take(rows, xe[0], axis=2) - xp.take(rows, xs[0], axis=2)  # (N, out_h, out_w, C)
    area = ((ye - ys)[0][:, None] * (xe - xs)[0][None, :])[None, :, :, None]
    return xp.permute_dims(_normalize(xp, total, area), (0, 3, 1, 2))
