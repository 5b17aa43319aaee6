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


def _bins(xp, start, length, m: int):
    """Adaptive-pooling bin edges (n, m) for windows [start, start+length), exact integer maths."""
    i = xp.arange(m, dtype=xp.int64, device=getattr(start, "device", None))[None, :]
    length = length[:, None]
    lo = start[:, None] + (i * length) // m
    hi = start[:, None] + ((i + 1) * length + m - 1) // m
    return lo, hi


def area_resize(ii, frame, windows, out_h: int, out_w: int):
    """Resize windows of frames to out_h x out_w by area averaging, normalized for the nets.

    ii: integral images (N, H+1, W+1, C); frame: (n,) frame index of each window;
    windows: (n, 4) int [y0, y1, x0, x1], non-empty and inside the frame.
    Returns (n, C, out_h, out_w) float32, already (x - 127.5) / 128.
    """
    xp = array_namespace(ii)
    ys, ye = _bins(xp, windows[:, 0], windows[:, 1] - windows[:, 0], out_h)
    xs, xe = _bins(xp, windows[:, 2], windows[:, 3] - windows[:, 2], out_w)
    f = frame[:, None, None]
    ys, ye = ys[:, :, None], ye[:, :, None]
    xs, xe = xs[:, None, :], xe[:, None, :]
    total = ii[f, ye, xe, :] - ii[f, ys, xe, :] - ii[f, ye, xs, :] + ii[f, ys, xs, :]
    area = xp.astype((ye - ys) * (xe - xs), xp.float32)[..., None]
    out = (xp.astype(total, xp.float32) / area - MEAN) * SCALE
    return xp.permute_dims(out, (0, 3, 1, 2))
