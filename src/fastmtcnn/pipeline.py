"""The MTCNN cascade, written once for every backend, for a batch of images of any sizes.

A backend owns where arrays live and how the three nets run; everything here
is array maths through the array API, so numpy (OpenVINO, ONNX Runtime) and
torch (CPU or CUDA) share it. Stages are separate functions so that the
profiler can time them and tests can call them.

The batch's pyramid levels go into PNet tiles of one fixed size
(`pyramid.make_plan`), its candidates are decoded back to each image's
levels, and RNet/ONet crop every image's candidates from one buffer of
integral images (`crop.Integrals`): no stage's shape depends on an image's size.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from . import boxes as bx
from .config import Config
from .crop import Integrals, area_resize, resize_region
from .namespace import array_namespace
from .pyramid import Plan, make_plan

#: RNet/ONet batches are padded up to one of these sizes (8, 12, 16, 24, 32, 48, ...: at most a third
#: more work), so the engines see few shapes: cuDNN and OpenVINO pick or compile kernels per shape
BATCH_BUCKETS = tuple(sorted({b for k in range(3, 20) for b in (1 << k, 3 << (k - 1))}))


class Backend(Protocol):
    """What the pipeline needs from a backend: arrays, three nets and NMS.

    The members typed Callable | None are optional fast paths: a backend that
    has none sets them to None, and the pipeline then does the work itself.
    """

    name: str
    #: tile side(s) PNet runs on (`pyramid.make_plan`'s `tiles`)
    tiles: int | tuple[int, ...]

    def images(self, images) -> Sequence:
        """RGB uint8 images (a list of (H, W, 3) of any sizes, or an (N, H, W, 3) array) where the nets run."""

    def integrals(self, images) -> Integrals:
        """`crop.integrals` of the images."""

    def pnet(self, x, mask) -> tuple: ...

    def rnet(self, x) -> tuple: ...

    def onet(self, x) -> tuple: ...

    def nms(self, boxes, scores, threshold: float, groups=None, mode: str = "union", plus_one: bool = False):
        """Indices of boxes kept by greedy NMS, by decreasing score."""

    def asarray(self, x):
        """x where the nets run (backends may cache read-only plan tables)."""

    def to_numpy(self, x): ...

    def synchronize(self) -> None: ...

    #: canvas(ii, plan, ids) -> `canvas_input`'s (len(ids), 3, h, w) PNet input, its mask, and
    #: `canvas_cells`' piece index of each PNet cell (or None: the pipeline makes them)
    canvas: Callable[..., Any] | None
    #: crops(ii, frame, windows, size) -> `crop.area_resize`'s numbers, e.g. in one kernel
    crops: Callable[..., Any] | None
    #: front(images, plan, threshold, timer) -> (`Integrals` of the images, candidates as `cell_candidates`
    #: gives, in parts): PNet and its cells over the threshold, e.g. made and run tile by tile
    front: Callable[..., Any] | None
    #: overlap: True when two calls may run at once from two threads (`MTCNN.detect_batch` then keeps
    #: two images in flight: the engines release the GIL); False for a GPU backend, whose batches do that
    overlap: bool
    #: submit_images(images, config, timer) -> a function waiting for per-image results as
    #: `detect_images` gives, for a whole call (e.g. a fixed-shape cascade, queued on the device);
    #: None declines the call, a None entry in the results leaves that image to the shared cascade
    submit_images: Callable[..., Any] | None


@dataclass
class StageTimer:
    """Wall time per stage, accumulated over calls (the profiler's table)."""

    enabled: bool = False
    sync: object = None
    totals: dict = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str):
        if not self.enabled:
            yield
            return
        if self.sync:
            self.sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                self.sync()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t


#: a disabled timer: stages run untimed, no syncs
NO_TIMER = StageTimer()


@lru_cache(maxsize=64)
def plan_for(sizes: tuple[tuple[int, int], ...], minsize: float, factor: float,
             tiles: int | tuple[int, ...] | None) -> Plan:
    """`pyramid.make_plan`, cached per batch of sizes (a video's chunks, a folder of one camera)."""
    return make_plan(sizes, minsize, factor, tiles)


def batch_plan(be: Backend, sizes: Sequence[tuple[int, int]], cfg: Config) -> Plan:
    """The plan a backend runs a batch of these (H, W) image sizes with (tiles, or per-scale)."""
    return plan_for(tuple((int(h), int(w)) for h, w in sizes), cfg.minsize, cfg.factor,
                    be.tiles if cfg.use_packed else None)


def canvas_input(ii: Integrals, plan: Plan, ids: Sequence[int]):
    """PNet input of canvases `ids` (all of one shape): (len(ids), 3, h, w) float32, every piece resampled."""
    xp = array_namespace(ii.flat)
    c0 = plan.canvases[ids[0]]
    x = xp.zeros((len(ids), 3, c0.h, c0.w), dtype=xp.float32, device=getattr(ii.flat, "device", None))
    for n, k in enumerate(ids):
        for p in plan.canvases[k].pieces:
            x[n, :, p.y:p.y + p.h, p.x:p.x + p.w] = resize_region(
                ii.image(p.image), p.level_h, p.level_w, (p.src_y, p.src_y + p.h), (p.src_x, p.src_x + p.w))
    return x


def canvas_mask(plan: Plan, ids: Sequence[int]) -> np.ndarray:
    """The masks of canvases `ids` (all of one shape): (len(ids), 1, h-2, w-2) float32 (`pyramid.Canvas.mask`)."""
    return np.concatenate([plan.canvases[k].mask() for k in ids])


def canvas_cells(plan: Plan, ids: Sequence[int]) -> np.ndarray:
    """(len(ids), h', w') int32: the plan's piece index of every PNet cell of canvases `ids`, -1 where none."""
    return np.stack([plan.canvases[k].cell_piece() for k in ids])


def pnet_front(be: Backend, images, plan: Plan, timer: StageTimer = NO_TIMER):
    """Integral images of the batch and PNet's outputs: (ii, [(canvas ids, cells or None, reg, prob), ...]),
    one entry per PNet call."""
    with timer("integral"):
        ii = be.integrals(images)
    maps = []
    for ids in plan.groups():
        with timer("pyramid"):
            if be.canvas is None:
                x, mask, cells = canvas_input(ii, plan, ids), be.asarray(canvas_mask(plan, ids)), None
            else:
                x, mask, cells = be.canvas(ii, plan, ids)
        with timer("pnet"):
            maps.append((ids, cells, *be.pnet(x, mask)))
    return ii, maps


#: bits of each level coordinate in the candidates' sort key
_KEY_BITS = 21


def pnet_candidates(be: Backend, ids: Sequence[int], cells, reg, prob, plan: Plan, threshold: float):
    """PNet cells over threshold -> boxes (n, 9), image index, level group (image * levels + level), sort key
    (`cell_candidates`)."""
    xp = array_namespace(prob)
    cells = be.asarray(canvas_cells(plan, ids)) if cells is None else cells
    face = prob[:, -1, :, :]  # PNet gives P(face) as its last (only) channel
    t, cy, cx = xp.nonzero((face >= threshold) & (cells >= 0))
    r = reg[t, :, cy, cx]  # advanced indices around a slice: (k, 4)
    return cell_candidates(be, plan, cells[t, cy, cx], cy, cx, face[t, cy, cx], r)


def cell_candidates(be: Backend, plan: Plan, p, cy, cx, score, reg):
    """PNet cells (piece p of the plan, cell cy, cx of its canvas; score, reg (k, 4)) -> boxes (k, 9), image
    index, level group (image * levels + level), sort key.

    The key orders candidates as a per-scale run lists them (image, level,
    row, column), wherever the tiles put them: NMS breaks ties between equal
    scores by that order.
    """
    xp = array_namespace(score)
    tab = {k: be.asarray(v) for k, v in plan.tables.items() if k != "rect"}
    ly = cy - xp.take(tab["oy"], p, axis=0)
    lx = cx - xp.take(tab["ox"], p, axis=0)
    b = bx.cells_to_boxes(ly, lx, xp.take(tab["scale"], p, axis=0), score, reg)
    group = xp.take(tab["group"], p, axis=0)
    key = (group * (1 << _KEY_BITS) + xp.astype(ly, xp.int64)) * (1 << _KEY_BITS) + xp.astype(lx, xp.int64)
    return b, xp.take(tab["image"], p, axis=0), group, key


def candidates_nms(be: Backend, parts, timer: StageTimer = NO_TIMER):
    """Candidates (`cell_candidates`' outputs, in parts) -> squared boxes (m, 5) and their image index:
    NMS per level, then per image, in the reference's order."""
    with timer("candidates"):
        xp = array_namespace(parts[0][0])
        b, f, g, key = (xp.concat([p[k] for p in parts], axis=0) for k in range(4))
        if b.shape[0] == 0:
            return b[:, :5], f
        order = xp.argsort(key, stable=True)
        b, f, g = (xp.take(a, order, axis=0) for a in (b, f, g))
        keep = be.nms(b[:, :4], b[:, 4], 0.5, groups=g)
        b, f = xp.take(b, keep, axis=0), xp.take(f, keep, axis=0)
        keep = be.nms(b[:, :4], b[:, 4], 0.7, groups=f)
        b, f = xp.take(b, keep, axis=0), xp.take(f, keep, axis=0)
        return bx.square(bx.apply_pnet_regression(b)), f


def _select(xp, mask, *arrays):
    """arrays[mask] for each array, with one nonzero (one device sync, not one per array)."""
    i = xp.nonzero(mask)[0]
    return tuple(xp.take(a, i, axis=0) for a in arrays)


def crops(be: Backend, ii: Integrals, f, win, size: int):
    """Area crops of windows for RNet/ONet: the backend's own kernel if it has one, else `crop.area_resize`."""
    return area_resize(ii, f, win, size, size) if be.crops is None else be.crops(ii, f, win, size)


def padded_batch(n: int, limit: int | None = None) -> int:
    """The batch n crops run as: the smallest of `BATCH_BUCKETS` that holds them, at most `limit` (max_batch)."""
    b = next((b for b in BATCH_BUCKETS if b >= n), n)
    return b if limit is None else max(n, min(b, limit))


def _run_chunks(net, x, max_batch: int):
    """Run a net over x in chunks of at most max_batch, each padded to `padded_batch`; concatenate each output."""
    xp = array_namespace(x)
    outs = []
    for i in range(0, x.shape[0], max_batch):
        part = x[i:i + max_batch]
        n = part.shape[0]
        pad = padded_batch(n, max_batch) - n
        if pad:
            part = xp.concat([part, xp.zeros((pad, *part.shape[1:]), dtype=part.dtype,
                                             device=getattr(part, "device", None))], axis=0)
        outs.append(tuple(o[:n] for o in net(part)))
    return tuple(xp.concat([o[k] for o in outs], axis=0) for k in range(len(outs[0])))


def refine(be: Backend, ii: Integrals, b, f, size: int, net, max_batch: int, threshold: float,
           timer: StageTimer, name: str):
    """Crop boxes, run RNet/ONet, keep the ones over threshold. Returns (boxes with new scores, f, outputs)."""
    with timer("crops"):
        xp = array_namespace(b)
        win, ok = bx.crop_windows(b, xp.take(ii.height, f, axis=0), xp.take(ii.width, f, axis=0))
        b, f, win = _select(xp, ok, b, f, win)
        # image by image, so that a batch's gathers stay within one image's integral
        order = xp.argsort(f, stable=True)
        b, f, win = (xp.take(a, order, axis=0) for a in (b, f, win))
        x = crops(be, ii, f, win, size)
    with timer(name):
        out = _run_chunks(net, x, max_batch)
    score = out[-1][:, 1]
    b, f, score, *out = _select(xp, score > threshold, b, f, score, *out[:-1])
    b = xp.concat([b[:, :4], score[:, None]], axis=1)
    return b, f, tuple(out)


def rnet_onet(be: Backend, ii: Integrals, b, f, cfg: Config, timer: StageTimer = NO_TIMER):
    """The cascade from RNet on: candidates (m, 5) of images f -> faces (k, 5), their images, landmarks (k, 5, 2).

    Also the whole detector of tracking mode, which feeds it boxes around the
    previous frame's faces instead of PNet's.
    """
    xp = array_namespace(b)
    lm = xp.zeros((0, 5, 2), dtype=xp.float32, device=getattr(b, "device", None))
    if b.shape[0]:
        b, f, (reg,) = refine(be, ii, b, f, 24, be.rnet, cfg.max_batch[0], cfg.thresholds[1], timer, "rnet")
        with timer("nms"):
            keep = be.nms(b[:, :4], b[:, 4], 0.7, groups=f)
            b = bx.square(bx.apply_regression(b[keep], reg[keep]))
            f = f[keep]
    if b.shape[0]:
        b, f, (reg, lmk) = refine(be, ii, b, f, 48, be.onet, cfg.max_batch[1], cfg.thresholds[2], timer, "onet")
        with timer("nms"):
            lm = bx.landmarks_from_onet(b, lmk)
            b = bx.apply_regression(b, reg)
            keep = be.nms(b[:, :4], b[:, 4], 0.7, groups=f, mode="min", plus_one=True)
            b, f, lm = b[keep], f[keep], lm[keep]
    return b, f, lm


def detect_images(be: Backend, images, cfg: Config, timer: StageTimer = NO_TIMER):
    """Run the cascade on a batch of images (the backend's `images`) -> per image (boxes (k,5), landmarks (k,5,2))."""
    return submit_images(be, images, cfg, timer)()


def submit_images(be: Backend, images, cfg: Config,
                  timer: StageTimer = NO_TIMER) -> Callable[[], list[tuple[Any, Any]]]:
    """`detect_images` in two steps: the call is queued here, the returned function waits for its results.

    Why two steps: where a backend's work runs asynchronously (a CUDA
    stream), a caller can queue its next batch before it waits for this one
    and turns its results into Python objects, so the device does not idle
    meanwhile (`photos.detect_photos`). A backend's `submit_images` may
    answer the whole call, or some images of it; the rest run through the
    shared cascade, when the results are asked for. Without that hook the
    cascade runs here.
    """
    wait = None if be.submit_images is None else be.submit_images(images, cfg, timer)
    if wait is None:
        out = _cascade(be, images, cfg, timer)
        return lambda: out

    def results():
        out = wait()
        redo = [i for i, r in enumerate(out) if r is None]
        if redo:
            for i, r in zip(redo, _cascade(be, [images[i] for i in redo], cfg, timer)):
                out[i] = r
        return out

    return results


def _cascade(be: Backend, images, cfg: Config, timer: StageTimer = NO_TIMER):
    plan = batch_plan(be, [im.shape[:2] for im in images], cfg)
    if be.front is None:
        ii, maps = pnet_front(be, images, plan, timer)
        with timer("candidates"):
            parts = [pnet_candidates(be, *m, plan, cfg.thresholds[0]) for m in maps]
    else:
        ii, parts = be.front(images, plan, cfg.thresholds[0], timer)
    xp = array_namespace(ii.flat)
    if parts:
        b, f = candidates_nms(be, parts, timer)
    else:  # images smaller than minsize allows: nothing to look at
        b = xp.zeros((0, 5), dtype=xp.float32, device=getattr(ii.flat, "device", None))
        f = xp.zeros(0, dtype=xp.int64, device=getattr(ii.flat, "device", None))
    b, f, lm = rnet_onet(be, ii, b, f, cfg, timer)
    with timer("to_host"):
        b, f, lm = be.to_numpy(b), be.to_numpy(f), be.to_numpy(lm)
    return [(b[f == i], lm[f == i]) for i in range(len(images))]
