"""Exact greedy NMS for many groups at once, in torch (CPU or CUDA).

Why not torchvision's `batched_nms`: on CUDA it switches, above 5000 boxes, to
a Python loop over the groups (one NMS call and a host sync per group), and a
batch of 64 frames has 640 (frame, level) groups; below that size it runs one
NMS over all boxes, which costs n^2 IoUs and an n x n/64 mask. Boxes of
different groups never interact, and boxes that do not overlap in x never
suppress each other, so the work here is only the pairs that overlap in x
inside a group, all groups in one pass:

1. rank the boxes by score, descending and stable (ties keep input order, as
   the numpy NMS `boxes.nms` does): the greedy order;
2. sort by (group, x1) and, for each box, take the following boxes whose x1
   lies before its x2 (a sweep: one `searchsorted`); compute their IoU and
   keep the suppression edges higher rank -> lower rank (IoU over threshold);
3. greedy NMS keeps i iff no *kept* box has an edge to i. Iterating
   keep <- {i : no kept j -> i} from "all kept" fixes the answer of every box
   whose longest chain of suppressors has length <= the iteration count, so it
   reaches the greedy result exactly, and stops at the first repeat (the greedy
   result is the only fixed point).

The fixed-shape cascade (`torch_static`) needs NMS without compaction: a
dense suppression matrix per frame over slots already in greedy order,
solved by the same fixed-point iteration a fixed number of times
(`dense_nms`; on CUDA the matrix is kept as bits by `torch_kernels.greedy_keep`).

Every IoU here is `boxes.overlap`, the numpy NMS's arithmetic step for step
in float32, so CPU torch and numpy keep the same boxes.
"""
from __future__ import annotations

import numpy as np
import torch

from ..boxes import box_area, overlap

#: pairs (IoU evaluations) per chunk: bounds temporary memory (~60 bytes a pair)
MAX_PAIRS = 1 << 23
#: key = group * SPAN + x: coordinates are assumed within +-SPAN/4 pixels
SPAN = float(1 << 22)


def _edges(b, area, rank, hi, r0: int, r1: int, total: int, threshold: float, mode: str, add: float):
    """Suppression edges (higher rank -> lower rank) among the x-sorted boxes: rows [r0, r1) with their followers."""
    dev = b.device
    cnt = hi[r0:r1] - torch.arange(r0 + 1, r1 + 1, device=dev)
    rows = torch.repeat_interleave(torch.arange(r0, r1, device=dev), cnt, output_size=total)
    first = torch.cumsum(cnt, 0) - cnt  # offset of each row's first pair
    cols = rows + 1 + (torch.arange(total, device=dev) - first[rows - r0])
    ratio = overlap(b[rows], b[cols], mode, add, area[rows], area[cols])
    hit = torch.nonzero(ratio > threshold).squeeze(1)
    r, c = rows[hit], cols[hit]
    first_hi = rank[r] < rank[c]
    return torch.where(first_hi, r, c), torch.where(first_hi, c, r)


def grouped_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, groups: torch.Tensor | None = None,
                mode: str = "union", plus_one: bool = False, max_pairs: int = MAX_PAIRS) -> torch.Tensor:
    """Greedy NMS within each group; indices of kept boxes by decreasing score (like `boxes.nms`)."""
    n = scores.shape[0]
    dev = scores.device
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=dev)
    order = torch.sort(scores, descending=True, stable=True).indices
    # sweep order: by group, then x1
    sp = torch.sort(boxes[:, 0], stable=True).indices
    g = torch.zeros(n, dtype=torch.float64, device=dev) if groups is None else groups[sp].to(torch.float64)
    if groups is not None:
        gs = torch.sort(g, stable=True)
        sp, g = sp[gs.indices], gs.values
    b = boxes[sp].to(torch.float32)
    rank = torch.empty(n, dtype=torch.int64, device=dev)
    rank[order] = torch.arange(n, device=dev)
    rank = rank[sp]
    add = 1.0 if plus_one else 0.0
    area = box_area(b, add)
    lim = SPAN / 4
    key = g * SPAN + torch.clamp(b[:, 0].to(torch.float64), -lim, lim)
    # followers j of i overlap it in x only if x1_j < x2_i + add (one pixel of margin against rounding)
    end = g * SPAN + torch.clamp(b[:, 2].to(torch.float64) + (add + 1.0), -lim, lim)
    hi = torch.searchsorted(key, end, side="right")
    hi = torch.maximum(hi, torch.arange(1, n + 1, device=dev))  # at least past itself
    cum = torch.cumsum(hi - torch.arange(1, n + 1, device=dev), 0)
    total = int(cum[-1])
    src, dst = [], []
    if total <= max_pairs:
        if total:
            s, d = _edges(b, area, rank, hi, 0, n, total, threshold, mode, add)
            src.append(s)
            dst.append(d)
    else:  # chunk the rows so that each chunk has at most max_pairs pairs (a row may exceed it alone)
        cum_h = cum.cpu().numpy()
        r0, done = 0, 0
        while r0 < n:
            r1 = max(r0 + 1, int(np.searchsorted(cum_h, done + max_pairs, side="right")))
            t = int(cum_h[r1 - 1]) - done
            if t:
                s, d = _edges(b, area, rank, hi, r0, r1, t, threshold, mode, add)
                src.append(s)
                dst.append(d)
            done, r0 = int(cum_h[r1 - 1]), r1
    keep = torch.ones(n, dtype=torch.bool, device=dev)
    if src:
        src, dst = torch.cat(src), torch.cat(dst)
        if src.numel():
            hits = torch.zeros(n, dtype=torch.int32, device=dev)

            def step(k: torch.Tensor) -> torch.Tensor:
                return hits.zero_().index_add_(0, dst, k[src].to(torch.int32)) == 0

            rounds = 2
            while True:
                for _ in range(rounds - 1):
                    keep = step(keep)
                nxt = step(keep)
                if torch.equal(nxt, keep):
                    break
                keep = nxt
                rounds = min(rounds * 2, 64)
    kept = torch.zeros(n, dtype=torch.bool, device=dev)
    kept[sp] = keep
    return order[kept[order]]


# --------------------------------------------------------------------------- fixed shapes


def suppression(b: torch.Tensor, valid: torch.Tensor, group: torch.Tensor | None, threshold: float,
                mode: str = "union", plus_one: bool = False, dtype=torch.float32) -> torch.Tensor:
    """(N, K, K) 0/1 matrix S[j, i]: slot j (earlier = higher in greedy order) suppresses slot i."""
    add = 1.0 if plus_one else 0.0
    s = overlap(b[:, :, None, :4], b[:, None, :, :4], mode, add) > threshold
    k = b.shape[1]
    s &= torch.ones(k, k, dtype=torch.bool, device=b.device).triu(1)
    s &= valid[:, :, None] & valid[:, None, :]
    if group is not None:
        s &= group[:, :, None] == group[:, None, :]
    return s.to(dtype)


def iterate_keep(s: torch.Tensor, valid: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy NMS result from the suppression matrix: `iters` fixed-point steps, and whether it converged."""
    keep = valid
    for _ in range(iters):
        keep = valid & (torch.bmm(keep.to(s.dtype)[:, None, :], s)[:, 0, :] == 0)
    nxt = valid & (torch.bmm(keep.to(s.dtype)[:, None, :], s)[:, 0, :] == 0)
    return keep, (nxt == keep).all()


#: slots per row past which `dense_nms` (torch ops, not captured) runs `grouped_nms` on the valid slots
#: instead of the (N, K, K) matrix: a folder window's first NMS has 64 x 4096 slots, a 1.1e9-pair
#: matrix (GBs of float32 temporaries) for a few thousand valid boxes
DENSE_MAX = 512


def dense_nms(b, valid, group, threshold, iters, mode="union", plus_one=False, fused=False, sparse=None):
    """Greedy NMS per row over slots in greedy order -> (keep (N, K), converged).

    fused: Triton bit-matrix kernels. Else the dense suppression matrix, or where a row has more than
    `DENSE_MAX` slots (sparse None) or sparse is True, `sparse_nms` (a host sync: never inside a CUDA
    graph capture, which keeps the matrix)."""
    if fused:
        from . import torch_kernels  # Triton: imported where used (a first result runs without it)

        add = 1.0 if plus_one else 0.0
        return torch_kernels.greedy_keep(b, box_area(b, add), valid, group, threshold, mode, add, iters)
    if sparse is None:
        sparse = b.shape[1] > DENSE_MAX and not (b.is_cuda and torch.cuda.is_current_stream_capturing())
    if sparse:
        return sparse_nms(b, valid, group, threshold, mode, plus_one), torch.ones((), dtype=torch.bool,
                                                                                  device=b.device)
    dtype = torch.float16 if b.is_cuda else torch.float32  # 0/1 sums: exact enough to test == 0
    return iterate_keep(suppression(b, valid, group, threshold, mode, plus_one, dtype), valid, iters)


def sparse_nms(b, valid, group, threshold, mode="union", plus_one=False) -> torch.Tensor:
    """`dense_nms`'s keep (N, K) through `grouped_nms` over the valid slots: rows (and `group`) as its
    groups, slot order as its greedy order (the slots are in greedy order already). Same pairs, same
    `overlap` arithmetic: the same boxes kept."""
    n, k = valid.shape
    idx = torch.nonzero(valid.reshape(-1)).squeeze(1)
    keep = torch.zeros(n * k, dtype=torch.bool, device=b.device)
    if not idx.numel():
        return keep.reshape(n, k)
    rows = idx // k
    if group is not None:
        g = group.reshape(-1)[idx].to(torch.int64)
        g = g - g.min()
        rows = rows * (int(g.max()) + 1) + g
    kept = grouped_nms(b.reshape(n * k, -1)[idx, :4], -idx, threshold, rows, mode, plus_one)
    keep[idx[kept]] = True
    return keep.reshape(n, k)
