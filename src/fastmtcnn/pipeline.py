"""The MTCNN cascade, written once for every backend.

A backend owns where arrays live and how the three nets run; everything here
is array maths through the array API, so numpy (ONNX Runtime) and torch
(CPU or CUDA) share it. Stages are separate functions so that the profiler
can time them and tests can call them.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from array_api_compat import array_namespace

from . import boxes as bx
from .config import Config
from .crop import area_resize, resize_frames
from .pyramid import Canvas, Plan, make_plan


class Backend(Protocol):
    """What the pipeline needs from a backend: arrays, three nets and NMS.

    The last four members are optional fast paths: a backend that has none
    sets them to None, and the pipeline then does the work itself.
    """

    name: str

    def frames(self, images) -> object:
        """Stack RGB uint8 images of one size into an (N, H, W, 3) array where the nets run."""

    def integral(self, frames) -> object:
        """`crop.integral_image` of the frames: (N, H+1, W+1, 3) int32."""

    def pnet(self, x, mask) -> tuple: ...

    def rnet(self, x) -> tuple: ...

    def onet(self, x) -> tuple: ...

    def nms(self, boxes, scores, threshold: float, groups=None, mode: str = "union", plus_one: bool = False):
        """Indices of boxes kept by greedy NMS, by decreasing score."""

    def asarray(self, x):
        """x where the nets run (backends may cache read-only plan tables)."""

    def to_numpy(self, x): ...

    def synchronize(self) -> None: ...

    #: canvas(ii, canvas, plan) -> `canvas_input`'s (N, 3, h, w) PNet input, e.g. in one gather
    canvas: Callable[..., Any] | None
    #: crops(ii, frame, windows, size) -> `crop.area_resize`'s numbers, e.g. in one kernel
    crops: Callable[..., Any] | None
    #: front(frames, plan, timer) -> what `pnet_front` returns, e.g. replayed as one CUDA graph
    front: Callable[..., Any] | None
    #: overlap: True when two calls may run at once from two threads (`MTCNN.detect_batch` then keeps
    #: two images in flight: the engines release the GIL); False for a GPU backend, whose batches do that
    overlap: bool
    #: detect_frames(frames, config, timer) -> per-frame results as `detect_frames` gives, for a whole
    #: call (e.g. fixed-shape CUDA graphs); None declines the call, a None entry leaves that frame to
    #: the shared cascade
    detect_frames: Callable[..., Any] | None


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


def canvas_input(ii, canvas: Canvas, n: int):
    """Resize every level of the canvas into one (N, 3, h, w) PNet input."""
    xp = array_namespace(ii)
    x = xp.zeros((n, 3, canvas.h, canvas.w), dtype=xp.float32, device=getattr(ii, "device", None))
    for lv in canvas.levels:
        x[:, :, lv.y:lv.y + lv.h, lv.x:lv.x + lv.w] = resize_frames(ii, lv.h, lv.w)
    return x


def pnet_front(be: Backend, frames, plan: Plan, timer: StageTimer = NO_TIMER):
    """Integral image of the frames and PNet's (reg, prob) on each canvas of the plan."""
    n = frames.shape[0]
    with timer("integral"):
        ii = be.integral(frames)
    maps = []
    for canvas in plan.canvases:
        with timer("pyramid"):
            x = canvas_input(ii, canvas, n) if be.canvas is None else be.canvas(ii, canvas, plan)
            mask = be.asarray(canvas.mask)
        with timer("pnet"):
            maps.append(be.pnet(x, mask))
    return ii, maps


def pnet_candidates(be: Backend, reg, prob, canvas: Canvas, plan: Plan, threshold: float):
    """PNet cells over threshold -> boxes (n, 9), frame index, pyramid level."""
    xp = array_namespace(prob)
    cell_level = be.asarray(canvas.cell_level)
    face = prob[:, -1, :, :]  # PNet gives P(face) as its last (only) channel
    hit = (face >= threshold) & (cell_level >= 0)[None, :, :]
    f, cy, cx = xp.nonzero(hit)
    level = cell_level[cy, cx]
    # each level's origin (in cells) and scale, looked up by pyramid level id
    origins, scales = canvas.level_table
    origins = be.asarray(origins)
    oy, ox = origins[0, :][level], origins[1, :][level]
    scale = be.asarray(scales)[level]
    r = reg[f, :, cy, cx]  # advanced indices around a slice: (k, 4)
    b = bx.cells_to_boxes(cy - oy, cx - ox, scale, face[f, cy, cx], r)
    return b, f, level


def stage1(be: Backend, maps, plan: Plan, cfg: Config, timer: StageTimer = NO_TIMER):
    """PNet outputs of all canvases -> squared candidate boxes (m, 5) and their frame index."""
    with timer("candidates"):
        parts = [pnet_candidates(be, reg, prob, canvas, plan, cfg.thresholds[0])
                 for canvas, (reg, prob) in zip(plan.canvases, maps)]
        xp = array_namespace(parts[0][0])
        b = xp.concat([p[0] for p in parts], axis=0)
        f = xp.concat([p[1] for p in parts], axis=0)
        lv = xp.concat([p[2] for p in parts], axis=0)
        if b.shape[0] == 0:
            return b[:, :5], f
        keep = be.nms(b[:, :4], b[:, 4], 0.5, groups=f * len(plan.scales) + lv)
        b, f = xp.take(b, keep, axis=0), xp.take(f, keep, axis=0)
        keep = be.nms(b[:, :4], b[:, 4], 0.7, groups=f)
        b, f = xp.take(b, keep, axis=0), xp.take(f, keep, axis=0)
        return bx.square(bx.apply_pnet_regression(b)), f


def _select(xp, mask, *arrays):
    """arrays[mask] for each array, with one nonzero (one device sync, not one per array)."""
    i = xp.nonzero(mask)[0]
    return tuple(xp.take(a, i, axis=0) for a in arrays)


def crops(be: Backend, ii, f, win, size: int):
    """Area crops of windows for RNet/ONet: the backend's own kernel if it has one, else `crop.area_resize`."""
    return area_resize(ii, f, win, size, size) if be.crops is None else be.crops(ii, f, win, size)


def _run_chunks(net, x, max_batch: int):
    """Run a net over x in chunks of at most max_batch; concatenate each output."""
    xp = array_namespace(x)
    outs = [net(x[i:i + max_batch]) for i in range(0, x.shape[0], max_batch)]
    return tuple(xp.concat([o[k] for o in outs], axis=0) for k in range(len(outs[0])))


def refine(be: Backend, ii, b, f, size: int, net, max_batch: int, threshold: float,
           hw: tuple[int, int], timer: StageTimer, name: str):
    """Crop boxes, run RNet/ONet, keep the ones over threshold. Returns (boxes with new scores, f, outputs)."""
    with timer("crops"):
        xp = array_namespace(b)
        win, ok = bx.crop_windows(b, *hw)
        b, f, win = _select(xp, ok, b, f, win)
        # frame by frame, so that a batch's gathers stay within one frame's integral image
        order = xp.argsort(f, stable=True)
        b, f, win = (xp.take(a, order, axis=0) for a in (b, f, win))
        x = crops(be, ii, f, win, size)
    with timer(name):
        out = _run_chunks(net, x, max_batch)
    score = out[-1][:, 1]
    b, f, score, *out = _select(xp, score > threshold, b, f, score, *out[:-1])
    b = xp.concat([b[:, :4], score[:, None]], axis=1)
    return b, f, tuple(out)


def rnet_onet(be: Backend, ii, b, f, cfg: Config, hw: tuple[int, int], timer: StageTimer = NO_TIMER):
    """The cascade from RNet on: candidates (m, 5) of frames f -> faces (k, 5), their frames, landmarks (k, 5, 2).

    Also the whole detector of tracking mode, which feeds it boxes around the
    previous frame's faces instead of PNet's.
    """
    xp = array_namespace(b)
    lm = xp.zeros((0, 5, 2), dtype=xp.float32, device=getattr(b, "device", None))
    if b.shape[0]:
        b, f, (reg,) = refine(be, ii, b, f, 24, be.rnet, cfg.max_batch[0], cfg.thresholds[1], hw, timer, "rnet")
        with timer("nms"):
            keep = be.nms(b[:, :4], b[:, 4], 0.7, groups=f)
            b = bx.square(bx.apply_regression(b[keep], reg[keep]))
            f = f[keep]
    if b.shape[0]:
        b, f, (reg, lmk) = refine(be, ii, b, f, 48, be.onet, cfg.max_batch[1], cfg.thresholds[2], hw, timer, "onet")
        with timer("nms"):
            lm = bx.landmarks_from_onet(b, lmk)
            b = bx.apply_regression(b, reg)
            keep = be.nms(b[:, :4], b[:, 4], 0.7, groups=f, mode="min", plus_one=True)
            b, f, lm = b[keep], f[keep], lm[keep]
    return b, f, lm


def detect_frames(be: Backend, frames, cfg: Config, timer: StageTimer = NO_TIMER):
    """Run the cascade on (N, H, W, 3) frames -> per-frame (boxes (k,5), landmarks (k,5,2)) on host.

    A backend's `detect_frames` may answer the whole call, or some frames of
    it; the rest run through the shared cascade here.
    """
    out = None if be.detect_frames is None else be.detect_frames(frames, cfg, timer)
    if out is None:
        return _cascade(be, frames, cfg, timer)
    redo = [i for i, r in enumerate(out) if r is None]
    if redo:
        for i, r in zip(redo, _cascade(be, frames[redo] if len(redo) < len(out) else frames, cfg, timer)):
            out[i] = r
    return out


def _cascade(be: Backend, frames, cfg: Config, timer: StageTimer = NO_TIMER):
    n, H, W = frames.shape[0], frames.shape[1], frames.shape[2]
    plan = make_plan(H, W, cfg.minsize, cfg.factor, cfg.use_packed)
    ii, maps = pnet_front(be, frames, plan, timer) if be.front is None else be.front(frames, plan, timer)
    xp = array_namespace(ii)
    if plan.canvases:
        b, f = stage1(be, maps, plan, cfg, timer)
    else:  # image smaller than minsize allows: nothing to look at
        b = xp.zeros((0, 5), dtype=xp.float32, device=getattr(ii, "device", None))
        f = xp.zeros(0, dtype=xp.int64, device=getattr(ii, "device", None))
    b, f, lm = rnet_onet(be, ii, b, f, cfg, (H, W), timer)
    with timer("to_host"):
        b, f, lm = be.to_numpy(b), be.to_numpy(f), be.to_numpy(lm)
    return [(b[f == i], lm[f == i]) for i in range(n)]
