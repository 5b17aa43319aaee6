"""The whole cascade for a batch of images of any sizes with fixed shapes: no host sync until the result.

The shared pipeline compacts arrays after every stage (nonzero, boolean
selection), so each stage's shape depends on the pixels and each compaction
is a host sync; per call that is ~900 small kernels and ~20 syncs, which the
GPU pays in launch latency and idle time, not in work. Here every stage has
a fixed number of slots and a validity mask instead of compaction, so a call
is one stream of kernels the host queues ahead of the GPU, and the same call
can be captured as one CUDA graph:

* PNet: the batch's pyramid levels in tiles of one size (`pyramid`), made by
  one kernel from a small table of pieces (`TorchBackend.canvas`);
* candidates: the PNet cells over threshold, compacted into a pool, ordered
  per image by score (ties in the per-scale order of `pipeline.cell_candidates`' key) and
  cut to K1 slots per image;
* NMS: a dense suppression matrix per image over slots already in greedy
  order, solved by the fixed-point iteration of `torch_nms.dense_nms` (a
  fixed number of steps, then a convergence check);
* RNet/ONet crops: the valid slots of *all* images packed into one pool (n x
  caps crops in all): the nets' work follows the batch's average count, not
  its most crowded image; their outputs go back to the images' slots;
* between stages: a stable sort per image puts the survivors first, in order.

Box maths (`boxes.py`), crops (`pipeline.crops`) and the nets are the
shared ones, step for step, so the results equal the shared pipeline's. If an
image needs more slots than the capacities, or an NMS did not converge, the
flags say so and the caller reruns the shared pipeline for it: never a silent cut.

The shapes depend only on the capacities (images, tiles, pieces, integral
rows), never on the images' sizes: a graph captured for one batch serves any
other batch that fits its capacities.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from .. import boxes as bx
from ..config import Config
from ..crop import Integrals
from ..nets import PNET_MASK_VALUE
from ..pipeline import NO_TIMER, crops
from ..pyramid import Plan, pnet_out
from .torch_nms import dense_nms

#: capacities per image: PNet cells over threshold, candidates (survivors of the NMS within levels),
#: RNet crops, RNet survivors, ONet crops, ONet survivors. The cells and crops are pooled over the
#: batch (n x cap in all): the work follows the batch's mean count per image, not its most crowded one.
CAP_NAMES = ("pnet cells", "candidates", "rnet crops", "rnet survivors", "onet crops", "onet survivors")
DEFAULT_CAPS = (16384, 2048, 1536, 256, 128, 128)
#: for batches of 8 images or more (seen on 1080p frames at minsize 20, H100: up to ~8000 cells over
#: threshold and ~1500 RNet crops in a crowded frame, far fewer on average). 4096 candidates: a crowded
#: photo of the test set at 1024x1398 has more than 2048, and a folder's window holding it ran again
#: (smaller batches, a stream's frames, keep 2048: a short one runs again once, with it doubled)
BATCH_CAPS = (8192, 4096, 1024, 256, 128, 128)
#: a capacity that was short is doubled for the next calls, up to these
MAX_CAPS = (65536, 16384, 4096, 2048, 1024, 1024)
#: fixed-point steps per NMS (real photos need <= 8; see tests)
DEFAULT_ITERS = 8
#: columns of the packed result per slot: box (4), score, landmarks (10), kept
COLS = 16


#: the cascade's three NMS (after PNet across levels, after RNet, after ONet): threshold, mode, plus_one.
#: The Triton warm-up runs these too (`TorchBackend._nms_steps`): the threshold and the slot count are
#: compile-time constants of the fused NMS kernels
NMS_STEPS = ((0.7, "union", False), (0.7, "union", False), (0.7, "min", True))


def nms_slots(caps: tuple[int, ...]) -> tuple[int, int, int]:
    """Slots a row of each of the three NMS holds under these capacities (`CAP_NAMES`)."""
    k1 = min(caps[1], caps[0])
    k2 = min(caps[3], k1)
    return k1, k2, min(caps[5], k2)


def default_caps(n: int) -> tuple[int, ...]:
    """Starting capacities for a batch of n images (they grow on overflow)."""
    return DEFAULT_CAPS if n < 8 else BATCH_CAPS


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


#: (row, column) offsets of the cells that can overlap a cell of the same level by IoU > 0.5: cell boxes
#: two or more cells apart in both directions, or three in one, overlap by 0.42 at most
#: (tests/test_torch_backend.py checks this bound over every scale)
NEIGHBOURS = tuple((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0))


def level_nms(b: torch.Tensor, key: torch.Tensor, by_key: torch.Tensor, rank: torch.Tensor, valid: torch.Tensor,
              iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy NMS 0.5 within each pyramid level over a pool of PNet cells, without a (K x K) matrix.

    b: (P, 9) cell boxes; key: (P,) (level group << 42) + (row << 21) + column of each cell (invalid
    slots larger than any); by_key: the pool sorted by key; rank: each slot's place in greedy order.
    The boxes of one level sit on a grid, so a cell can only be suppressed by its `NEIGHBOURS`: they are
    found by binary search in the sorted keys, and the greedy result is the fixed point of
    keep[i] = valid[i] and no kept earlier neighbour overlaps it by more than 0.5 (as `torch_nms`).
    -> keep (P,), and whether `iters` steps reached the fixed point.
    """
    p = key.shape[0]
    sorted_keys = key[by_key]
    dy, dx = _neighbours(key.device)
    lx, ly = key & ((1 << 21) - 1), (key >> 21) & ((1 << 21) - 1)
    target = key[:, None] + (dy << 21) + dx  # (P, 24)
    at = torch.searchsorted(sorted_keys, target).clamp(max=p - 1)
    j = by_key[at]
    found = (sorted_keys[at] == target) & (lx[:, None] + dx >= 0) & (ly[:, None] + dy >= 0) & valid[:, None]
    over = bx.overlap(b[j, :4], b[:, None, :4]) > 0.5
    edge = found & over & (rank[j] < rank[:, None])  # j suppresses i if kept
    keep = valid
    for _ in range(iters):
        keep = valid & ~(edge & keep[j]).any(dim=1)
    nxt = valid & ~(edge & keep[j]).any(dim=1)
    return keep, (nxt == keep).all()


_OFFSETS: dict = {}


def _neighbours(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`NEIGHBOURS` as (1, 24) int64 row and column offsets on `device`, made once (before any capture:
    a host-to-device copy cannot be captured)."""
    if device not in _OFFSETS:
        _OFFSETS[device] = tuple(torch.tensor([[o[i] for o in NEIGHBOURS]], dtype=torch.int64, device=device)
                                 for i in (0, 1))
    return _OFFSETS[device]


@dataclass(frozen=True)
class Shape:
    """A fixed-shape cascade's capacities: images, tiles (of side `tile`), pieces, integral rows."""

    images: int
    tiles: int
    pieces: int
    rows: int
    tile: int

    def holds(self, plan: Plan, rows: int) -> bool:
        return (len(plan.sizes) <= self.images and len(plan.canvases) <= self.tiles
                and len(plan.pieces) <= self.pieces and rows <= self.rows and plan.tile == self.tile)


class Inputs:
    """The device buffers a fixed-shape cascade reads: what a CUDA graph replays on.

    ii: (rows, 3) int32 integral images; images: (n, 3) int64 (row offset, H, W);
    pieces: (P, 11) int32 (`torch_kernels.tiles`); decode: (P, 4) int64 (cell origin
    y, x, level group, image) and scale: (P,) float32 of each piece. Unused rows are zero.
    """

    def __init__(self, shape: Shape, device: torch.device) -> None:
        self.shape = shape
        self.ii = torch.zeros((shape.rows, 3), dtype=torch.int32, device=device)
        self.images = torch.zeros((shape.images, 3), dtype=torch.int64, device=device)
        self.pieces = torch.zeros((shape.pieces, 11), dtype=torch.int32, device=device)
        self.decode = torch.zeros((shape.pieces, 4), dtype=torch.int64, device=device)
        self.scale = torch.ones(shape.pieces, dtype=torch.float32, device=device)
        self.host = np.zeros((0, 11), np.int32)  # the pieces' table on the host (the torch tiles' row counts)

    def integrals(self) -> Integrals:
        return Integrals(self.ii, self.images[:, 0], self.images[:, 1], self.images[:, 2], ())

    def load(self, plan: Plan, offsets: np.ndarray) -> None:
        """Copy a batch's tables in (one upload each); rows past the batch's are zeroed (no pieces, no images)."""
        s, n, p = self.shape, len(plan.sizes), len(plan.pieces)
        img = np.zeros((s.images, 3), np.int64)
        img[:n, 0] = offsets[:n]
        img[:n, 1:] = plan.sizes
        pieces = np.zeros((s.pieces, 11), np.int32)
        decode = np.zeros((s.pieces, 4), np.int64)
        scale = np.ones(s.pieces, np.float32)
        if p:
            t = plan.tables
            pieces[:p, :9] = t["rect"]
            pieces[:p, 9] = t["image"]
            pieces[:p, 10] = np.arange(p)
            decode[:p] = np.stack([t["oy"], t["ox"], t["group"], t["image"]], axis=1)
            scale[:p] = t["scale"]
        self.host = pieces
        for dst, src in ((self.images, img), (self.pieces, pieces), (self.decode, decode), (self.scale, scale)):
            upload(dst, src)


def upload(dst: torch.Tensor, src: np.ndarray) -> torch.Tensor:
    """dst <- src without waiting for the device: through page-locked memory, asynchronously.

    Why: torch's blocking host-to-device copy synchronizes the stream, so a
    batch's tables would wait for the batch queued before it to finish, and
    the GPU would idle while the host queues this one.
    """
    host = torch.from_numpy(src)
    cuda = dst.device.type == "cuda"
    dst.copy_(host.pin_memory() if cuda else host, non_blocking=cuda)
    return dst


class TiledCascade:
    """The cascade for a batch that fits `shape`, with fixed shapes: `run(inputs)` -> (result, flags)."""

    def __init__(self, be, cfg: Config, shape: Shape, caps: tuple[int, ...] | None = None,
                 iters: int = DEFAULT_ITERS) -> None:
        # the backend keeps its cascades: a strong reference back would make a cycle, and a dropped
        # detector's CUDA graphs (gigabytes each for large batches) would live until the cyclic GC ran
        self._be = weakref.ref(be)
        self.cfg, self.shape = cfg, shape
        caps = tuple(caps) if caps else default_caps(shape.images)
        if len(caps) != len(CAP_NAMES):
            raise ValueError(f"caps are {len(CAP_NAMES)} numbers ({', '.join(CAP_NAMES)}), got {caps}")
        self.k = pnet_out(shape.tile)  # PNet cells per tile side
        self.hits = shape.images * min(caps[0], shape.tiles * self.k * self.k)  # cells over threshold, pooled
        self.k1, self.k2, self.k3 = nms_slots(caps)
        self.r = shape.images * min(caps[2], self.k1)  # RNet crops of the whole batch
        self.o = shape.images * min(caps[4], self.k2)  # ONet crops of the whole batch
        self.iters = iters

    @property
    def be(self):
        return self._be()

    def _candidates(self, inp: Inputs, reg, prob, cells, timer=NO_TIMER):
        """PNet cells over threshold -> NMS 0.5 within each level (`level_nms`) -> per image the best k1
        survivors (by score, ties in per-scale order): boxes (n, k1, 9), valid (n, k1), and whether every
        image fit and the NMS converged."""
        n, k1, k, pool = self.shape.images, self.k1, self.k, self.hits
        dev = prob.device
        face = prob[:, -1].reshape(-1)
        cell = cells.reshape(-1)
        hit = (face >= self.cfg.thresholds[0]) & (cell >= 0)
        # compaction without a sync: hit j goes to slot cumsum - 1; a pool too small is flagged below
        pos = torch.cumsum(hit.to(torch.int32), 0) - 1
        at = torch.full((pool + 1,), face.numel(), dtype=torch.int64, device=dev)
        at.scatter_(0, torch.where(hit & (pos < pool), pos, pool).to(torch.int64),
                    torch.arange(face.numel(), device=dev))
        at = at[:pool]
        valid = at < face.numel()
        at = at.clamp(max=face.numel() - 1)
        piece = cell[at].clamp(min=0)
        dec = inp.decode[piece]  # (pool, 4): oy, ox, group, image
        img = torch.where(valid, dec[:, 3], torch.full_like(dec[:, 3], n))
        cy, cx = (at // k) % k, at % k
        ly, lx = cy - dec[:, 0], cx - dec[:, 1]
        score = face[at]
        r = reg[at // (k * k), :, cy, cx]  # (pool, 4)
        b = bx.cells_to_boxes(ly, lx, inp.scale[piece], score, r)
        # the per-scale order of cells: (level group, row, column); invalid slots last
        key = torch.where(valid, (dec[:, 2] << 42) + (ly << 21) + lx, torch.full_like(ly, 1 << 62))
        o1 = torch.sort(key, stable=True).indices
        # greedy order: image, then score (descending), then the per-scale order
        bits = score.float().view(torch.int32).to(torch.int64)[o1]
        order = o1[torch.sort((img[o1] << 32) + (0x7F800000 - bits), stable=True).indices]
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(pool, device=dev))
        with timer("nms"):
            keep, converged = level_nms(b, key, o1, rank, valid, self.iters)
        # per image, the first k1 survivors in greedy order go to its slots
        kept = keep[order]
        img_o = img[order]
        before = torch.zeros(n + 1, dtype=torch.int64, device=dev).scatter_add_(0, img_o, kept.to(torch.int64))
        starts = torch.cumsum(before, 0) - before
        nth = torch.cumsum(kept.to(torch.int64), 0) - 1 - starts[img_o]
        ok = kept & (nth < k1) & (img_o < n)
        slot = torch.full((n * k1 + 1,), pool, dtype=torch.int64, device=dev)
        slot.scatter_(0, torch.where(ok, img_o * k1 + nth, n * k1), order)
        slot = slot[:n * k1]
        filled = slot < pool
        slot = slot.clamp(max=pool - 1)
        fits = torch.stack([hit.sum() <= pool, before[:n].max() <= k1])
        return b[slot].reshape(n, k1, 9), filled.reshape(n, k1), fits, converged

    def _refine(self, inp: Inputs, ii, b, valid, pool, size, net, threshold, timer, name):
        """Net outputs for the valid slots of (n, k) boxes, run as one pool of `pool` crops.

        -> boxes with the new scores, slots still valid (window not empty,
        score over threshold), the other outputs per slot, and whether the pool was big enough.
        """
        n, k = b.shape[:2]
        with timer("crops"):
            flat = valid.reshape(-1)
            idx = first(flat[None], pool)[0]  # the valid slots first, in order
            fits = flat.sum() <= pool
            img = idx // k
            win, ok = bx.crop_windows(b.reshape(n * k, -1)[idx], inp.images[img, 1], inp.images[img, 2])
            live = flat[idx] & ok
            safe = torch.zeros(4, dtype=win.dtype, device=win.device)  # [0, 1, 0, 1]: a 1-pixel window
            safe[1::2] = 1  # (made by kernels, not a host copy: this runs inside graph capture)
            x = crops(self.be, ii, img, torch.where(live[:, None], win, safe), size)
        with timer(name):
            out = net(x)
        with timer("nms"):  # (the scatter back to the images' slots)
            score = out[-1][:, 1]
            live = live & (score > threshold)
            valid = torch.zeros_like(flat).index_copy(0, idx, live).reshape(n, k)
            scores = torch.zeros(n * k, dtype=b.dtype, device=b.device).index_copy(0, idx, score.to(b.dtype))
            b = torch.cat([b[..., :4], scores.reshape(n, k, 1)], dim=2)
            rest = [torch.zeros((n * k, o.shape[1]), dtype=o.dtype, device=o.device).index_copy(0, idx, o)
                    .reshape(n, k, -1) for o in out[:-1]]
        return b, valid, rest, fits

    def run(self, inp: Inputs, timer=NO_TIMER):
        """The batch in `inp` -> packed (n, K3, 16) float32 result and flags (7,) bool.

        The flags: each capacity of `CAP_NAMES` was enough, every NMS converged.
        All True: the result is exact. `timer` (eager runs only) times the stages.
        """
        be, cfg, s = self.be, self.cfg, self.shape
        n, k2, k3, it = s.images, self.k2, self.k3, self.iters
        dev = inp.ii.device
        fz = be.fused_nms and dev.type == "cuda"

        def nms(b, valid, i: int):
            threshold, mode, plus_one = NMS_STEPS[i]
            return dense_nms(b, valid, None, threshold, it, mode, plus_one, fused=fz)

        ii = inp.integrals()
        with timer("pyramid"):
            x, mask, cells = be.make_tiles(ii, inp.images, inp.pieces, inp.host, s.tiles, s.tile)
        with timer("pnet"):
            reg, prob = be.pnet(x, mask)
        with timer("candidates"):
            b, valid, fit1, c1 = self._candidates(inp, reg, prob, cells, timer)
        with timer("nms"):
            # NMS 0.7 across levels (the 0.5 within each level is done; slots are in greedy order already)
            keep, c2 = nms(b, valid, 0)
            b = bx.square(bx.apply_pnet_regression(b.reshape(n * self.k1, 9))).reshape(n, self.k1, 5)
        # RNet on the pooled survivors, then per image: the best k2 by score, NMS
        b, valid, (reg,), fit_r = self._refine(inp, ii, b, keep, self.r, 24, be.rnet, cfg.thresholds[1], timer,
                                               "rnet")
        with timer("nms"):
            fit2 = valid.sum(1).max() <= k2
            order = by_score(b[..., 4], valid)[:, :k2]
            b, valid, reg = take_rows(b, order), valid.gather(1, order), take_rows(reg, order)
            keep, c3 = nms(b, valid, 1)
            b = bx.square(bx.apply_regression(b.reshape(n * k2, 5), reg.reshape(n * k2, 4))).reshape(n, k2, 5)
        # ONet likewise
        b, valid, (reg, lmk), fit_o = self._refine(inp, ii, b, keep, self.o, 48, be.onet, cfg.thresholds[2],
                                                   timer, "onet")
        with timer("nms"):
            fit3 = valid.sum(1).max() <= k3
            order = by_score(b[..., 4], valid)[:, :k3]
            b, valid = take_rows(b, order), valid.gather(1, order)
            reg, lmk = take_rows(reg, order), take_rows(lmk, order)
            flat = b.reshape(n * k3, 5)
            lm = bx.landmarks_from_onet(flat, lmk.reshape(n * k3, 10)).reshape(n, k3, 10)
            b = bx.apply_regression(flat, reg.reshape(n * k3, 4)).reshape(n, k3, 5)
            keep, c4 = nms(b, valid, 2)
            out = torch.cat([b, lm, keep[..., None].to(b.dtype)], dim=2)
        return out, torch.cat([fit1, torch.stack([fit_r, fit2, fit_o, fit3, c1 & c2 & c3 & c4])])

    def packed(self, inp: Inputs, timer=NO_TIMER) -> torch.Tensor:
        """`run` as one flat tensor, the result then the flags: what a CUDA graph captures and copies back."""
        out, flags = self.run(inp, timer)
        return torch.cat([out.reshape(-1), flags.to(out.dtype)])

    def split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Host copy of `packed` -> the result (N, K3, 16) and the flags as bools."""
        nflags = len(CAP_NAMES) + 1
        return flat[:-nflags].reshape(self.shape.images, self.k3, -1), flat[-nflags:] > 0.5

    @staticmethod
    def unpack(out: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Host copy of `run`'s result -> per image (boxes (k, 5), landmarks (k, 5, 2)), as `detect_images` gives."""
        res = []
        for rows in out:
            rows = rows[rows[:, 15] > 0.5]
            lm = rows[:, 5:15].reshape(-1, 5, 2)
            res.append((np.ascontiguousarray(rows[:, :5]), np.ascontiguousarray(lm)))
        return res


#: the mask value of tile pixels outside every piece (`nets.PNET_MASK_VALUE`)
MASK = PNET_MASK_VALUE
