"""Comparing two sets of boxes: IoU between every pair and the greedy one-to-one
matching used to call a result faithful (DESIGN.md) and by evaluation and
tracking reports. The IoU is `boxes.overlap`, the arithmetic NMS uses."""
from __future__ import annotations

import numpy as np

from .boxes import overlap


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (len(a), len(b)) of x1, y1, x2, y2 boxes, in float64, areas without +1; 0 for boxes without area."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = overlap(a[:, None, :], b[None, :, :])
    return np.where(np.isnan(iou), 0.0, iou)  # 0 / 0: neither box has area


def greedy_match(a: np.ndarray, b: np.ndarray, min_iou: float = 0.7) -> list[tuple[int, int]]:
    """One-to-one pairs (i, j), highest IoU first, each at IoU >= min_iou."""
    m = iou_matrix(a, b)
    pairs: list[tuple[int, int]] = []
    if m.size == 0:
        return pairs
    order = np.dstack(np.unravel_index(np.argsort(-m, axis=None, kind="stable"), m.shape))[0]
    used_a, used_b = set(), set()
    for i, j in order:
        if m[i, j] < min_iou:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(int(i))
        used_b.add(int(j))
        pairs.append((int(i), int(j)))
    return pairs


def centres_inside(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) True where a's centre lies in b and b's centre lies in a.

    A matching rule that does not depend on how loosely each side draws its
    boxes (tight brow-to-chin labels against MTCNN's forehead-to-chin boxes).
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ca = (a[:, :2] + a[:, 2:]) / 2
    cb = (b[:, :2] + b[:, 2:]) / 2
    a_in_b = ((ca[:, None, :] >= b[None, :, :2]) & (ca[:, None, :] <= b[None, :, 2:])).all(-1)
    b_in_a = ((cb[None, :, :] >= a[:, None, :2]) & (cb[None, :, :] <= a[:, None, 2:])).all(-1)
    return a_in_b & b_in_a


def match_in_order(sim: np.ndarray, min_sim: float, ignore: np.ndarray | None = None) -> np.ndarray:
    """Detections (rows, best score first) to ground truth (columns), COCO style.

    Each row takes the most similar column not yet taken with sim >= min_sim;
    failing that, an `ignore`d column with sim >= min_sim (ignored columns may
    be taken many times, so a detection on an ignored face is neither a hit
    nor a false positive). Returns the column per row, -1 for none.
    """
    sim = np.asarray(sim, np.float64)
    n_rows, n_cols = sim.shape
    ign = np.zeros(n_cols, bool) if ignore is None else np.asarray(ignore, bool)
    taken = np.zeros(n_cols, bool)
    out = np.full(n_rows, -1, np.int64)
    for i in range(n_rows):
        ok = sim[i] >= min_sim
        free = ok & ~taken & ~ign
        if free.any():
            j = int(np.argmax(np.where(free, sim[i], -np.inf)))
            taken[j] = True
            out[i] = j
        elif (ok & ign).any():
            out[i] = int(np.argmax(np.where(ok & ign, sim[i], -np.inf)))
    return out
