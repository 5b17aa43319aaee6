"""Box arithmetic of the cascade: candidates from PNet cells, regression,
squaring, clipping for crops, and NMS.

All functions are pure and work on numpy or torch arrays alike (through the
array API), except `nms`, which is numpy; backends bring their own NMS.
The float32 arithmetic and the +1 conventions follow the reference
implementation step by step, since that is what makes results match.
"""
from __future__ import annotations

import numpy as np

from .namespace import array_namespace
from .pyramid import CELL, STRIDE


def _at_least(x, lo):
    """max(x, lo) elementwise, in the array's own library.

    Not the array API's `clip`: its compat layer turns the bound into a host
    tensor (a copy a CUDA graph cannot capture) and imports sympy on the way.
    """
    return x.clamp(min=lo) if hasattr(x, "clamp") else np.maximum(x, x.dtype.type(lo))


def cells_to_boxes(ly, lx, scale, score, reg):
    """Boxes (n, 9) [x1, y1, x2, y2, score, dx1, dy1, dx2, dy2] of PNet cells.

    ly, lx: cell coordinates within their level; scale: the level's scale.
    Mirrors the reference's generateBoundingBox, in float32.
    """
    xp = array_namespace(score)
    f32 = xp.float32
    lx = xp.astype(lx, f32)
    ly = xp.astype(ly, f32)
    scale = xp.astype(scale, f32)
    x1 = xp.floor((STRIDE * lx + 1) / scale)
    y1 = xp.floor((STRIDE * ly + 1) / scale)
    x2 = xp.floor((STRIDE * lx + CELL) / scale)
    y2 = xp.floor((STRIDE * ly + CELL) / scale)
    return xp.concat([xp.stack([x1, y1, x2, y2, xp.astype(score, f32)], axis=1), xp.astype(reg, f32)], axis=1)


def apply_pnet_regression(b):
    """PNet's regression (widths without +1, as in the reference)."""
    xp = array_namespace(b)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    return xp.stack([b[:, 0] + b[:, 5] * w, b[:, 1] + b[:, 6] * h,
                     b[:, 2] + b[:, 7] * w, b[:, 3] + b[:, 8] * h, b[:, 4]], axis=1)


def apply_regression(b, reg):
    """RNet/ONet regression (widths with +1, the reference's bbreg)."""
    xp = array_namespace(b)
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    return xp.stack([b[:, 0] + reg[:, 0] * w, b[:, 1] + reg[:, 1] * h,
                     b[:, 2] + reg[:, 2] * w, b[:, 3] + reg[:, 3] * h, b[:, 4]], axis=1)


def square(b):
    """Grow boxes to squares around their centre (the reference's rerec)."""
    xp = array_namespace(b)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    side = xp.maximum(w, h)
    x1 = b[:, 0] + w * 0.5 - side * 0.5
    y1 = b[:, 1] + h * 0.5 - side * 0.5
    return xp.stack([x1, y1, x1 + side, y1 + side, b[:, 4]], axis=1)


def crop_windows(b, height, width):
    """Integer crop windows [y0, y1) x [x0, x1) of boxes, clipped to their image.

    The reference truncates the box, clips to [1, W] (1-based), and slices
    [y-1 : ey]; boxes whose window is empty are dropped by the caller.
    height, width: the image size, as numbers or per box ((n,) int64 arrays).
    Returns int64 (n, 4) [y0, y1, x0, x1] and a boolean mask of non-empty windows.
    """
    xp = array_namespace(b)
    dev = getattr(b, "device", None)
    t = xp.astype(xp.trunc(b[:, :4]), xp.int64)
    x0 = _at_least(t[:, 0], 1) - 1
    y0 = _at_least(t[:, 1], 1) - 1
    x1 = xp.minimum(t[:, 2], xp.asarray(width, dtype=xp.int64, device=dev))
    y1 = xp.minimum(t[:, 3], xp.asarray(height, dtype=xp.int64, device=dev))
    win = xp.stack([y0, y1, x0, x1], axis=1)
    return win, (y1 > y0) & (x1 > x0)


def landmarks_from_onet(b, lm):
    """Landmark offsets (n, 10: 5 x then 5 y) relative to ONet's input box -> (n, 5, 2) pixels."""
    xp = array_namespace(b)
    w = (b[:, 2] - b[:, 0] + 1)[:, None]
    h = (b[:, 3] - b[:, 1] + 1)[:, None]
    px = w * lm[:, 0:5] + b[:, 0:1] - 1
    py = h * lm[:, 5:10] + b[:, 1:2] - 1
    return xp.stack([px, py], axis=2)


def box_area(b, add: float = 0.0):
    """Areas of (..., 4) x1, y1, x2, y2 boxes; add=1 counts pixels inclusively, as the reference's last NMS does."""
    return (b[..., 2] - b[..., 0] + add) * (b[..., 3] - b[..., 1] + add)


def overlap(a, b, mode: str = "union", add: float = 0.0, area_a=None, area_b=None):
    """Overlap of boxes a and b (..., 4), broadcast against each other: IoU, or over the smaller box ("min").

    The one definition of the arithmetic behind every NMS (numpy, torch, the
    Triton bit-matrix kernel is tested against it) and the matching metrics:
    the operation order is the reference's, so float32 inputs give the
    reference's float32 ratios. Areas may be passed in when already known.
    """
    xp = array_namespace(a, b)
    area_a = box_area(a, add) if area_a is None else area_a
    area_b = box_area(b, add) if area_b is None else area_b
    w = _at_least(xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0]) + add, 0.0)
    h = _at_least(xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1]) + add, 0.0)
    inter = w * h
    denom = xp.minimum(area_a, area_b) if mode == "min" else area_a + area_b - inter
    return inter / denom


#: candidate pairs `nms` examines per step (bounds its memory whatever the number of boxes)
_NMS_PAIRS = 1 << 21
#: fixed-point rounds of `nms` before it resolves the rest box by box (long suppression chains)
_NMS_ROUNDS = 64


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, groups: np.ndarray | None = None,
        mode: str = "union", plus_one: bool = False) -> np.ndarray:
    """Greedy NMS; indices of kept boxes, by decreasing score (ties: by index, as torchvision's stable sort).

    mode "union" is IoU, "min" is intersection over the smaller box (the
    reference's last stage). plus_one uses (x2-x1+1) areas, as the reference's
    numpy NMS does; torchvision's (used for the other stages) does not.
    Boxes of different groups (frames, pyramid levels) never suppress each other.

    Why not box by box: a box is suppressed only by boxes it overlaps, so the
    greedy result depends only on the pairs over the threshold. They are found
    by a sweep along x (pairs whose x extents meet, groups set apart along x),
    their ratios computed with `overlap` (the reference's float32 arithmetic),
    and the greedy rule (kept unless a kept box of higher score suppresses it)
    solved as a fixed point: round t settles every box whose longest chain of
    suppressors is shorter than t, and the fixed point is unique. Cost grows
    with the overlapping pairs, not with boxes x kept boxes (a 12 MP photo's
    4200 PNet candidates: 4 ms, OpenCV's batched NMS 40-60 ms).
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.int64)
    add = np.float32(1 if plus_one else 0)
    order = np.argsort(-np.asarray(scores), kind="stable")  # priority
    b = np.asarray(boxes, np.float32)[order]
    area = box_area(b, add)
    g = None if groups is None else np.asarray(groups)[order]
    src, dst = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # a negative threshold suppresses boxes that do not even meet: every pair is checked then
        for i, j in _x_pairs(b, add, g, every=threshold < 0):
            lo, hi = np.minimum(i, j), np.maximum(i, j)  # lo: the box of higher priority
            if g is not None:
                same = g[lo] == g[hi]
                lo, hi = lo[same], hi[same]
            hit = overlap(b[lo], b[hi], mode, add, area[lo], area[hi]) > threshold
            src.append(lo[hit])
            dst.append(hi[hit])
    src, dst = np.concatenate(src), np.concatenate(dst)
    keep = np.ones(n, bool)
    for _ in range(_NMS_ROUNDS):
        suppressed = np.zeros(n, bool)
        suppressed[dst[keep[src]]] = True
        if np.array_equal(~suppressed, keep):
            return order[keep]
        keep = ~suppressed
    by_dst = np.argsort(dst, kind="stable")  # long chains: box by box, in priority order
    src, dst = src[by_dst], dst[by_dst]
    starts = np.searchsorted(dst, np.arange(n + 1))
    keep[:] = True
    for k in range(n):
        if starts[k] < starts[k + 1] and keep[src[starts[k]:starts[k + 1]]].any():
            keep[k] = False
    return order[keep]


def _x_pairs(b: np.ndarray, add: np.float32, groups: np.ndarray | None, every: bool = False):
    """Index pairs (i, j) of boxes whose x extents may meet (a superset of the overlapping pairs; every
    pair if `every`), in chunks of about `_NMS_PAIRS`. Groups are laid side by side along x, apart, so
    that pairs stay within a group; boxes with NaN meet nothing (their ratios are NaN)."""
    n = len(b)
    if every:
        sx, count = np.arange(n), np.arange(n - 1, -1, -1)
    else:
        x1, x2 = b[:, 0].astype(np.float64), b[:, 2].astype(np.float64) + float(add)
        x1 = np.nan_to_num(x1, nan=np.inf, posinf=1e300, neginf=-1e300)  # NaN: last, in no one's range
        x2 = np.nan_to_num(x2, nan=-np.inf, posinf=1e300, neginf=-1e300)
        if groups is not None and n > 1:
            finite = x1[np.isfinite(x1)]
            span = float(x2.max() - finite.min()) + 2.0 if finite.size else 0.0
            if 0.0 < span < 1e200:  # (rounding keeps the order; pairs across groups are dropped by the caller)
                shift = (groups - groups.min()).astype(np.float64) * span
                x1, x2 = x1 + shift, x2 + shift
        sx = np.argsort(x1, kind="stable")
        # boxes after p in x1 order that start no later than p ends
        count = np.maximum(np.searchsorted(x1[sx], x2[sx], side="right") - np.arange(1, n + 1), 0)
    ends = np.cumsum(count)
    p0 = 0
    while p0 < n:
        done = int(ends[p0 - 1]) if p0 else 0
        p1 = max(p0 + 1, int(np.searchsorted(ends, done + _NMS_PAIRS, side="right")))
        c = count[p0:p1]
        e = int(c.sum())
        if e:
            i = np.repeat(np.arange(p0, p1), c)
            j = np.arange(e) - np.repeat(np.cumsum(c) - c, c) + i + 1
            yield sx[i], sx[j]
        p0 = p1
