"""The whole cascade with fixed shapes, replayed as one CUDA graph (stream and batch mode).

The shared pipeline compacts arrays after every stage (nonzero, boolean
selection), so each stage's shape depends on the pixels and each compaction
is a host sync; per call that is ~900 small kernels and ~20 syncs, which the
GPU pays in launch latency, not in work. Here every stage has a fixed number
of slots and a validity mask instead of compaction:

* candidates: the PNet map sorted by score per frame (stable, so ties keep the
  cell order of the shared path) and cut to K1 slots per frame;
* NMS: a dense suppression matrix per frame over slots already in greedy
  order, solved by the fixed-point iteration of `torch_nms.dense_nms` (a fixed number
  of steps, then a convergence check);
* RNet/ONet crops: the valid slots of *all* frames packed into one pool
  (n x caps crops in all): the nets' work follows the batch's average count,
  not its most crowded frame; their outputs go back to the frames' slots;
* between stages: a stable sort per frame puts the survivors first, in order.

Box maths (`boxes.py`), crops (`pipeline.crops`) and the nets are the
shared ones, step for step, so the results equal the shared pipeline's. If a
frame needs more slots than the capacities, or an NMS did not converge, the
flags say so and the caller reruns the shared pipeline: never a silent cut.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch

from .. import boxes as bx
from ..config import Config
from ..pipeline import NO_TIMER, crops, pnet_front
from ..pyramid import make_plan
from .torch_nms import dense_nms

#: capacities per frame: PNet candidate slots, RNet crops, RNet survivors, ONet crops, ONet survivors.
#: The crop capacities are pooled over the batch (n x cap crops in all).
CAP_NAMES = ("candidates", "rnet crops", "rnet survivors", "onet crops", "onet survivors")
DEFAULT_CAPS = (2048, 512, 256, 128, 128)
#: for batches of 8 frames or more the pool follows the mean count per frame, not one frame's maximum
BATCH_CAPS = (2048, 384, 256, 64, 128)
#: a stream that overflows doubles the capacity that was short, up to these
MAX_CAPS = (16384, 4096, 2048, 1024, 1024)
#: above this many candidate slots per frame a batch of 8 or more runs the shared pipeline instead: the
#: per-frame NMS grows with the square (measured, H200, 1920x1080 minsize 20, 64 frames: 8192 slots
#: gave 992 frames/s, the shared pipeline 1326)
BATCH_MAX_CANDIDATES = 4096
#: fixed-point steps per NMS (real photos need <= 8; see tests)
DEFAULT_ITERS = 8
#: columns of the packed result per slot: box (4), score, landmarks (10), kept
COLS = 16


def batch_max_candidates(height: int, width: int) -> int:
    """`BATCH_MAX_CANDIDATES` for frames of this size, doubled above 4 MP: a large photo has more
    candidates per frame and a much slower shared pipeline (measured, H200, 3264x2448 minsize 40, 8 a
    batch: 8192 slots 708 photos/s, the shared pipeline 195)."""
    return BATCH_MAX_CANDIDATES * (2 if height * width > 4 << 20 else 1)


def first(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the indices of True slots first (in order), then the others; cut to k."""
    return torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :k]


def by_score(score: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per row, slot order by decreasing score (stable), invalid slots last."""
    key = torch.where(valid, score, torch.full_like(score, -float("inf")))
    return torch.sort(key, dim=1, descending=True, stable=True).indices


def take_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (N, K, ...) gathered along K by idx (N, M)."""
    n, m = idx.shape
    flat = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    base = (torch.arange(n, device=idx.device) * x.shape[1])[:, None]
    return flat[(base + idx).reshape(-1)].reshape(n, m, *x.shape[2:])


def default_caps(n: int) -> tuple[int, ...]:
    """Starting capacities for a batch of n frames (they grow on overflow)."""
    return DEFAULT_CAPS if n < 8 else BATCH_CAPS


class StaticCascade:
    """The cascade for N frames of H x W with static shapes: `run(frames)` -> (result, flags)."""

    def __init__(self, be, cfg: Config, n: int, height: int, width: int,
                 caps: tuple[int, ...] | None = None, iters: int = DEFAULT_ITERS) -> None:
        # the backend keeps its cascades: a strong reference back would make a cycle, and a dropped
        # detector's CUDA graphs (gigabytes each for large photos) would live until the cyclic GC ran
        self._be = weakref.ref(be)
        self.cfg, self.n, self.hw = cfg, n, (height, width)
        self.plan = make_plan(height, width, cfg.minsize, cfg.factor, cfg.use_packed)
        if len(self.plan.canvases) != 1:
            raise ValueError("the fixed-shape cascade needs one packed canvas (packed=True, frame >= minsize)")
        caps = tuple(caps) if caps else default_caps(n)
        if len(caps) != len(CAP_NAMES):
            raise ValueError(f"caps are {len(CAP_NAMES)} numbers ({', '.join(CAP_NAMES)}), got {caps}")
        self.canvas = self.plan.canvases[0]
        self.k1 = min(caps[0], self.canvas.out_shape[0] * self.canvas.out_shape[1])
        self.r = n * min(caps[1], self.k1)  # RNet crops of the whole batch
        self.k2 = min(caps[2], self.k1)
        self.o = n * min(caps[3], self.k2)  # ONet crops of the whole batch
        self.k3 = min(caps[4], self.k2)
        self.iters = iters

    @property
    def be(self):
        return self._be()

    def _refine(self, ii, b, valid, pool, size, net, threshold, timer, name):
        """Net outputs for the valid slots of (n, k) boxes, run as one pool of `pool` crops.

        -> boxes with the new scores, slots still valid (window not empty,
        score over threshold), the other outputs per slot, and whether the pool was big enough.
        """
        n, k = b.shape[:2]
        with timer("crops"):
            flat = valid.reshape(-1)
            idx = first(flat[None], pool)[0]  # the valid slots first, in order
            fits = flat.sum() <= pool
            win, ok = bx.crop_windows(b.reshape(n * k, -1)[idx], *self.hw)
            live = flat[idx] & ok
            safe = torch.zeros(4, dtype=win.dtype, device=win.device)  # [0, 1, 0, 1]: a 1-pixel window
            safe[1::2] = 1  # (made by kernels, not a host copy: this runs inside graph capture)
            x = crops(self.be, ii, idx // k, torch.where(live[:, None], win, safe), size)
        with timer(name):
            out = net(x)
        with timer("nms"):  # (the scatter back to the frames' slots)
            score = out[-1][:, 1]
            live = live & (score > threshold)
            valid = torch.zeros_like(flat).index_copy(0, idx, live).reshape(n, k)
            scores = torch.zeros(n * k, dtype=b.dtype, device=b.device).index_copy(0, idx, score.to(b.dtype))
            b = torch.cat([b[..., :4], scores.reshape(n, k, 1)], dim=2)
            rest = [torch.zeros((n * k, o.shape[1]), dtype=o.dtype, device=o.device).index_copy(0, idx, o)
                    .reshape(n, k, -1) for o in out[:-1]]
        return b, valid, rest, fits

    def run(self, frames: torch.Tensor, timer=NO_TIMER):
        """(N, H, W, 3) uint8 -> packed (N, K3, 16) float32 result and flags (6,) bool.

        The flags: each capacity of `CAP_NAMES` was enough, every NMS converged.
        All True: the result is exact. `timer` (eager runs only) times the stages.
        """
        be, cfg, canvas, plan = self.be, self.cfg, self.canvas, self.plan
        n, k1, k2, k3, it = self.n, self.k1, self.k2, self.k3, self.iters
        fz = be.fused_nms and frames.is_cuda
        ii, maps = pnet_front(be, frames, plan, timer)
        with timer("candidates"):
            reg, prob = maps[0]
            cell_level = be.asarray(canvas.cell_level)
            ow = canvas.out_shape[1]
            # cells over threshold, best first, ties in cell order
            face = prob[:, -1]
            hit = (face >= cfg.thresholds[0]) & (cell_level >= 0)[None]
            score, idx = torch.sort(torch.where(hit, face, -1.0).reshape(n, -1), dim=1, descending=True, stable=True)
            score, idx = score[:, :k1], idx[:, :k1]
            fit1 = hit.reshape(n, -1).sum(1).max() <= k1
            valid = hit.reshape(n, -1).gather(1, idx)
            level = cell_level.reshape(-1)[idx].clamp(min=0)
            origins, scales = canvas.level_table
            origins, scales = be.asarray(origins), be.asarray(scales)
            r = reg.reshape(n, 4, -1).gather(2, idx[:, None, :].expand(n, 4, k1)).permute(0, 2, 1)
            b = bx.cells_to_boxes((idx // ow - origins[0][level]).reshape(-1),
                                  (idx % ow - origins[1][level]).reshape(-1),
                                  scales[level].reshape(-1), score.reshape(-1), r.reshape(-1, 4)).reshape(n, k1, 9)
        with timer("nms"):
            # NMS 0.5 within each level, then 0.7 across levels (slots are in greedy order already)
            keep, c1 = dense_nms(b, valid, level, 0.5, it, fused=fz)
            keep, c2 = dense_nms(b, keep, None, 0.7, it, fused=fz)
            b = bx.square(bx.apply_pnet_regression(b.reshape(n * k1, 9))).reshape(n, k1, 5)
        # RNet on the pooled survivors, then per frame: the best k2 by score, NMS
        b, valid, (reg,), fit_r = self._refine(ii, b, keep, self.r, 24, be.rnet, cfg.thresholds[1], timer, "rnet")
        with timer("nms"):
            fit2 = valid.sum(1).max() <= k2
            order = by_score(b[..., 4], valid)[:, :k2]
            b, valid, reg = take_rows(b, order), valid.gather(1, order), take_rows(reg, order)
            keep, c3 = dense_nms(b, valid, None, 0.7, it, fused=fz)
            b = bx.square(bx.apply_regression(b.reshape(n * k2, 5), reg.reshape(n * k2, 4))).reshape(n, k2, 5)
        # ONet likewise
        b, valid, (reg, lmk), fit_o = self._refine(ii, b, keep, self.o, 48, be.onet, cfg.thresholds[2], timer,
                                                   "onet")
        with timer("nms"):
            fit3 = valid.sum(1).max() <= k3
            order = by_score(b[..., 4], valid)[:, :k3]
            b, valid = take_rows(b, order), valid.gather(1, order)
            reg, lmk = take_rows(reg, order), take_rows(lmk, order)
            flat = b.reshape(n * k3, 5)
            lm = bx.landmarks_from_onet(flat, lmk.reshape(n * k3, 10)).reshape(n, k3, 10)
            b = bx.apply_regression(flat, reg.reshape(n * k3, 4)).reshape(n, k3, 5)
            keep, c4 = dense_nms(b, valid, None, 0.7, it, mode="min", plus_one=True, fused=fz)
            out = torch.cat([b, lm, keep[..., None].to(b.dtype)], dim=2)
        return out, torch.stack([fit1, fit_r, fit2, fit_o, fit3, c1 & c2 & c3 & c4])

    def packed(self, frames: torch.Tensor, timer=NO_TIMER) -> torch.Tensor:
        """`run` as one flat tensor, the result then the flags: what a CUDA graph captures and copies back."""
        out, flags = self.run(frames, timer)
        return torch.cat([out.reshape(-1), flags.to(out.dtype)])

    def split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Host copy of `packed` -> the result (N, K3, 16) and the flags as bools."""
        nflags = len(CAP_NAMES) + 1
        return flat[:-nflags].reshape(self.n, self.k3, -1), flat[-nflags:] > 0.5

    @staticmethod
    def unpack(out: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Host copy of `run`'s result -> per frame (boxes (k, 5), landmarks (k, 5, 2)), as `detect_frames` gives."""
        res = []
        for rows in out:
            rows = rows[rows[:, 15] > 0.5]
            lm = rows[:, 5:15].reshape(-1, 5, 2)
            res.append((np.ascontiguousarray(rows[:, :5]), np.ascontiguousarray(lm)))
        return res
