"""Box arithmetic of the cascade: candidates from PNet cells, regression,
squaring, clipping for crops, and NMS.

All functions are pure and work on numpy or torch arrays alike (through the
array API), except `nms`, which is numpy; backends bring their own NMS.
The float32 arithmetic and the +1 conventions follow the reference
implementation step by step, since that is what makes results match.
"""
from __future__ import annotations

import cv2
import numpy as np
from array_api_compat import array_namespace

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


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, groups: np.ndarray | None = None,
        mode: str = "union", plus_one: bool = False) -> np.ndarray:
    """Greedy NMS; indices of kept boxes, by decreasing score.

    mode "union" is IoU, "min" is intersection over the smaller box (the
    reference's last stage). plus_one uses (x2-x1+1) areas, as the reference's
    numpy NMS does; torchvision's (used for the other stages) does not.
    Boxes of different groups (frames, pyramid levels) never suppress each
    other, so each group runs on its own: cost grows with the group sizes,
    not with the whole batch.
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.int64)
    boxes = boxes.astype(np.float32, copy=False)
    if mode == "union" and not plus_one:
        # OpenCV's batched NMS (C++) is the same greedy IoU rule as torchvision's, a few times faster
        xywh = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
        ids = np.zeros(n, np.int32) if groups is None else np.asarray(groups, np.int32)
        keep = cv2.dnn.NMSBoxesBatched(xywh.astype(np.float64), np.asarray(scores, np.float32), ids,
                                       -np.inf, float(threshold))
        return np.asarray(keep, np.int64).reshape(-1)
    add = np.float32(1 if plus_one else 0)
    area = box_area(boxes, add)
    if groups is None:
        return _greedy(boxes, area, np.argsort(-scores, kind="stable"), threshold, mode == "min", add)
    order = np.lexsort((-scores, groups))  # by group, then decreasing score
    g = groups[order]
    cuts = np.flatnonzero(g[1:] != g[:-1]) + 1
    keep = np.concatenate([_greedy(boxes, area, seg, threshold, mode == "min", add)
                           for seg in np.split(order, cuts)])
    return keep[np.argsort(-scores[keep], kind="stable")]


def _greedy(boxes: np.ndarray, area: np.ndarray, order: np.ndarray, threshold: float,
            over_min: bool, add: np.float32) -> np.ndarray:
    """Greedy suppression along `order`: one step per kept box, vectorized over the rest."""
    keep = []
    mode = "min" if over_min else "union"
    with np.errstate(divide="ignore", invalid="ignore"):
        while order.size:
            i = order[0]
            keep.append(i)
            rest = order[1:]
            ratio = overlap(boxes[i], boxes[rest], mode, add, area[i], area[rest])
            order = rest[~(ratio > threshold)]
    return np.asarray(keep, np.int64)
