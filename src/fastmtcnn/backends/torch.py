"""PyTorch backend: the whole cascade on one device (CUDA, or CPU for tests).

Everything after the upload of the frames stays on the device: integral
images, the packed PNet canvas (one gather for all pyramid levels), PNet, the
candidates, NMS (`torch_nms`), the exact area crops, RNet and ONet; the
pipeline copies the final boxes to the host once. The cascade itself is
`pipeline.py`'s, shared with the other backends; this file only says where
arrays live and how each step runs. Options are documented on `TorchBackend`.
"""
from __future__ import annotations

import importlib.util
import warnings
from contextlib import contextmanager

import numpy as np
import torch

from .. import boxes as bx
from ..crop import MEAN, SCALE, area_bins, area_resize, integral_image
from ..nets import torch_nets
from ..pipeline import NO_TIMER, StageTimer, pnet_front
from ..pyramid import Canvas, Plan
from . import torch_kernels
from .torch_graphs import ShapeCache, bucket, capture
from .torch_nms import grouped_nms
from .torch_static import DEFAULT_ITERS, MAX_CAPS, StaticCascade, batch_max_candidates, default_caps

GRAPH_MODES = {False: "off", True: "always", "auto": "auto", "off": "off", "always": "always"}


def _canvas_gather(canvas: Canvas, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat integral-image offsets (4, h*w) of each canvas pixel's area bin, and the bin areas (h*w,).

    Pixel (i, j) of a level averages the frame rows and columns of
    `crop.area_bins` (as `crop.resize_frames`); canvas pixels outside every
    level read an empty sum with area 1 (value -0.996, inside PNet's input
    range: the mask keeps them out of every valid cell).
    """
    W1 = width + 1
    ys = np.zeros((canvas.h, canvas.w), np.int64)
    ye = np.zeros_like(ys)
    xs = np.zeros_like(ys)
    xe = np.zeros_like(ys)
    zero = np.zeros(1, np.int64)
    for lv in canvas.levels:
        r0, r1 = area_bins(np, zero, np.array([height]), lv.h)
        c0, c1 = area_bins(np, zero, np.array([width]), lv.w)
        sl = (slice(lv.y, lv.y + lv.h), slice(lv.x, lv.x + lv.w))
        ys[sl], ye[sl] = r0[0][:, None], r1[0][:, None]
        xs[sl], xe[sl] = c0[0][None, :], c1[0][None, :]
    area = (ye - ys) * (xe - xs)
    area[area == 0] = 1
    corners = np.stack([ys * W1 + xs, ys * W1 + xe, ye * W1 + xs, ye * W1 + xe]).reshape(4, -1)
    return corners, area.reshape(-1).astype(np.float32)


class TorchBackend:
    """MTCNN's nets and array maths in torch on ``device`` ("cuda", "cuda:1", "cpu").

    fp16: nets in half precision (pyramid and crops exact in float32 up to the
        cast; box maths float32). Default (None): on for CUDA, where it is
        1.4-1.7x faster (H200), off on the CPU. It finds the reference faces by
        DESIGN.md's matching rule (98%, IoU >= 0.7), not to 1e-2 px: ask for
        fp16=False for that (fp32 runs without TF32, so CUDA fp32 gives the
        CPU backends' numbers).
    channels_last: NHWC convolutions (default on CUDA; the canvas is gathered NHWC).
    cudnn_benchmark: let cuDNN time its algorithms for every new shape of an
        eager call (process-wide flag). Off by default: eager shapes change
        with every frame's face count, and each new one would be timed anew;
        RNet/ONet batches are padded to powers of two when it is on. Graph
        captures always autotune (their shapes are fixed).
    pinned: host frames go through a reused page-locked buffer and an async
        copy (off: the extra host copy cost more than the faster DMA saved).
    graphs: "auto" (default on CUDA): a batch shape (bucketed frame count,
        frame size) runs eagerly the first time and as one CUDA graph replay
        of the fixed-shape cascade (`torch_static.StaticCascade`) from the
        second time on; True captures at once; False never. Graphs hold
        chunks of up to ``graph_batch`` frames, padded up to a bucket that a
        graph already has, so a last partial chunk reuses it. ``caps`` (per
        frame: PNet candidates, RNet crops, RNet survivors, ONet crops, ONet
        survivors) start at `torch_static.default_caps`; frames of a chunk
        that needs more are redone by the shared pipeline (exact) and that
        shape is captured again with the short capacity doubled.
    nms: "grouped" (default, `torch_nms.grouped_nms`), "torchvision", or "numpy".
    kernels: Triton kernels for the integral image, canvas, crops and the
        fixed-shape NMS (CUDA with Triton only). fuse_nets: each conv's bias,
        PReLU (+ PNet's canvas mask) and max pooling as one Triton kernel.
        A kernel that fails on a machine turns both off, with a warning.
        Eager calls use them only once a capture has loaded them: a first
        result never waits for Triton's compiler (seconds on a cold cache).
    graph_memory: the most of the GPU's memory the captured graphs may hold
        (default a quarter; each cache of graphs, least recently used dropped
        first). A graph keeps its batch's buffers: 2 GB for 32 1080p frames,
        2.3 GB for 8 photos of 12 MP (H200, minsize 40).
    """

    name = "torch"
    overlap = False  # one device queue: batches, not threads, keep it busy

    def __init__(self, device: str | torch.device = "cpu", threads: int | None = None, *, fp16: bool | None = None,
                 channels_last: bool | None = None, cudnn_benchmark: bool = False, pinned: bool = False,
                 graphs: bool | str = "auto", nms: str = "grouped", graph_batch: int = 64,
                 caps: tuple[int, ...] | None = None, kernels: bool = True, fuse_nets: bool = True,
                 graph_memory: float = 0.25) -> None:
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA GPU")
        if threads:
            torch.set_num_threads(int(threads))
        if nms not in ("grouped", "torchvision", "numpy"):
            raise ValueError(f"nms must be 'grouped', 'torchvision' or 'numpy', got {nms!r}")
        if nms == "torchvision" and importlib.util.find_spec("torchvision") is None:
            raise RuntimeError("nms='torchvision' needs torchvision installed")
        fp16 = cuda if fp16 is None else fp16
        if graphs not in GRAPH_MODES:
            raise ValueError(f"graphs must be True, False or 'auto', got {graphs!r}")
        if int(graph_batch) < 1:
            raise ValueError(f"graph_batch must be >= 1, got {graph_batch}")
        if not 0 < float(graph_memory) <= 1:
            raise ValueError(f"graph_memory is a fraction of the GPU's memory in (0, 1], got {graph_memory}")
        self.graph_mode = GRAPH_MODES[graphs] if cuda else "off"
        self.fp16 = bool(fp16)
        self.channels_last = cuda if channels_last is None else bool(channels_last)
        self.pinned = bool(pinned) and cuda
        self.nms_impl = nms
        self.cudnn_benchmark = bool(cudnn_benchmark) and cuda
        if cuda:  # process-wide flag: the last backend made sets it
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        self.dtype = torch.float16 if self.fp16 else torch.float32
        nets = torch_nets(self.device, self.dtype)
        if self.channels_last:
            nets = tuple(m.to(memory_format=torch.channels_last) for m in nets)
        self._plain = nets
        self.kernels = bool(kernels) and torch_kernels.available(self.device)
        self.fused_nets = self.kernels and bool(fuse_nets) and self.channels_last
        self._fused = torch_kernels.fused_nets(*nets) if self.fused_nets else None
        self._compiled = False  # Triton kernels in eager calls too: after the first capture loaded them
        self.graph_batch = int(graph_batch)
        self.caps = tuple(caps) if caps else None
        self._consts: dict = {}
        self._staging: torch.Tensor | None = None  # pinned host buffer for uploads
        self._staged = None  # event: the last upload from the staging buffer is done
        # graphs' memory pools, at most `graph_memory` of the GPU (per cache; least recently used go first)
        budget = int(graph_memory * torch.cuda.get_device_properties(self.device).total_memory) if cuda else None
        self._cascades = ShapeCache(budget=budget)  # (batch, H, W, cfg) -> (cascade, graph, input, result) | False
        self._caps: dict = {}  # per shape: (capacities, NMS steps), grown on overflow
        self._fronts = ShapeCache(budget=budget)  # front graphs of frame sizes the fixed-shape cascade declines
        self.graph_stats = {"captures": 0, "replays": 0, "fallbacks": 0, "eager": 0}

    @property
    def fused_nms(self) -> bool:
        return self.kernels

    @contextmanager
    def _fixed_shapes(self):
        """Fixed-shape work (captures, the profiler's view of a replay): Triton kernels on from here on."""
        prev, self._compiled = self._compiled, True
        try:
            yield
        except Exception:
            self._compiled = prev
            raise

    def _keep_captured(self, cache: ShapeCache, key, make):
        """make() (a capture), kept in cache at the cost of the GPU memory torch reserved meanwhile:
        about what the graph keeps."""
        before = torch.cuda.memory_reserved(self.device)
        value = make()
        cache.put(key, value, max(0, torch.cuda.memory_reserved(self.device) - before))
        return value

    def __repr__(self) -> str:
        return (f"TorchBackend(device={str(self.device)!r}, fp16={self.fp16}, channels_last={self.channels_last}, "
                f"graphs={self.graph_mode!r}, nms={self.nms_impl!r}, kernels={self.kernels}, "
                f"fused_nets={self.fused_nets})")

    def _kernels_failed(self, e: Exception) -> None:
        """A Triton kernel failed to compile or run here: warn once, use the torch versions from now on."""
        warnings.warn(f"fastmtcnn: Triton kernels off ({type(e).__name__}: {e}); using torch ops", RuntimeWarning,
                      stacklevel=3)
        self.kernels = self.fused_nets = False

    def _try_kernel(self, fn, *args):
        if self.kernels and self._compiled:
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001 - any compiler or driver error: fall back, exactly
                self._kernels_failed(e)
        return None

    # ------------------------------------------------------------------ arrays

    def asarray(self, x) -> torch.Tensor:
        """x on the device; read-only numpy arrays (the cached plans' tables) are uploaded once."""
        if isinstance(x, np.ndarray) and not x.flags.writeable:
            hit = self._consts.get(id(x))
            if hit is not None and hit[0] is x:
                return hit[1]
            t = torch.from_numpy(np.array(x)).to(self.device)
            if len(self._consts) > 512:
                self._consts.clear()
            self._consts[id(x)] = (x, t)  # keeps x alive, so its id stays unique
            return t
        return torch.as_tensor(x, device=self.device)

    def _upload(self, host: np.ndarray) -> torch.Tensor:
        """Host uint8 frames -> device, through a reused pinned buffer and an async copy."""
        if not self.pinned:
            return torch.from_numpy(host).to(self.device)
        if self._staged is not None:
            self._staged.synchronize()  # the previous copy out of the buffer has finished
        nbytes = host.size
        if self._staging is None or self._staging.numel() < nbytes:
            self._staging = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        buf = self._staging[:nbytes].view(host.shape)
        out = torch.empty(host.shape, dtype=torch.uint8, device=self.device)
        # in slices of >= 8 MB: the DMA of one slice overlaps the host copy of the next
        step = max(1, (8 << 20) // max(1, host[0].size))
        for i in range(0, host.shape[0], step):
            np.copyto(buf[i:i + step].numpy(), host[i:i + step])
            out[i:i + step].copy_(buf[i:i + step], non_blocking=True)
        self._staged = torch.cuda.Event()
        self._staged.record()
        return out

    def frames(self, images) -> torch.Tensor:
        """(N, H, W, 3) uint8 on the device: a list of arrays, an NHWC array, or a tensor (not copied if there)."""
        if isinstance(images, torch.Tensor):
            t = images if images.ndim == 4 else images.unsqueeze(0)
            if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
                raise ValueError(f"frame tensors must be uint8 (N, H, W, 3) RGB, got {t.dtype} {tuple(t.shape)}")
            return t.to(self.device, non_blocking=t.is_pinned()).contiguous()
        if isinstance(images, np.ndarray) and images.ndim == 4:
            host = np.ascontiguousarray(images)
        elif self.pinned:
            first = np.asarray(images[0])
            host = np.empty((len(images), *first.shape), np.uint8)
            for i, im in enumerate(images):
                host[i] = im
        else:
            host = np.stack(images)
        return self._upload(host)

    def integral(self, frames: torch.Tensor) -> torch.Tensor:
        """`crop.integral_image` of the frames (a Triton scan on CUDA)."""
        out = self._try_kernel(torch_kernels.integral, frames)
        return integral_image(frames) if out is None else out

    def canvas(self, ii: torch.Tensor, canvas: Canvas, plan: Plan) -> torch.Tensor:
        """`pipeline.canvas_input`'s numbers in one gather (one kernel on CUDA): (N, 3, h, w), NHWC in memory."""
        idx, area = self._const(("canvas", id(canvas)), canvas, lambda: _canvas_gather(canvas, plan.height, plan.width))
        n = ii.shape[0]
        x = self._try_kernel(torch_kernels.canvas, ii, idx, area, self.dtype, MEAN, SCALE)
        if x is None:
            g = ii.reshape(n, -1, 3).index_select(1, idx.reshape(-1)).reshape(n, 4, -1, 3)
            total = (g[:, 3] - g[:, 2]) - (g[:, 1] - g[:, 0])
            x = ((total.to(torch.float32) / area[None, :, None] - MEAN) * SCALE).to(self.dtype)
        return x.reshape(n, canvas.h, canvas.w, 3).permute(0, 3, 1, 2)

    def crops(self, ii: torch.Tensor, frame: torch.Tensor, windows: torch.Tensor, size: int) -> torch.Tensor:
        """RNet/ONet inputs: `crop.area_resize`'s numbers, in one Triton kernel where there is one."""
        x = self._try_kernel(torch_kernels.crops, ii, frame, windows, size, self.dtype, MEAN, SCALE)
        return area_resize(ii, frame, windows, size, size) if x is None else x

    def _const(self, key, owner, make) -> tuple[torch.Tensor, ...]:
        """Device copies of numpy tables derived from `owner` (a cached plan object), made once."""
        hit = self._consts.get(key)
        if hit is not None and hit[0] is owner:
            return hit[1]
        t = tuple(torch.from_numpy(a).to(self.device) for a in make())
        self._consts[key] = (owner, t)
        return t

    # ------------------------------------------------------------------ nets

    def _net(self, k: int, *args):
        """Net k (0 PNet, 1 RNet, 2 ONet) in the backend's dtype and layout -> float32 outputs."""
        x = args[0].to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n = x.shape[0]
        if k and self.cudnn_benchmark and n:  # autotune is per shape: keep RNet/ONet batches to a few sizes
            pad = max(16, 1 << (n - 1).bit_length()) - n
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
        fused = self.fused_nets and self._compiled
        with torch.inference_mode(), self._exact():
            try:
                out = (self._fused if fused else self._plain)[k](x, *args[1:])
            except Exception as e:  # noqa: BLE001 - a fused kernel failed here: the plain net, exactly
                if not fused:
                    raise
                self._kernels_failed(e)
                out = self._plain[k](x, *args[1:])
        return tuple(o[:n].float() for o in out)

    @contextmanager
    def _exact(self):
        """fp32 convolutions without TF32 (cuDNN's default): fp32 then gives the CPU backends' numbers."""
        if self.fp16 or self.device.type != "cuda":
            yield
            return
        prev = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = prev

    def pnet(self, x, mask):
        return self._net(0, x, mask)

    def rnet(self, x):
        return self._net(1, x)

    def onet(self, x):
        return self._net(2, x)

    # ------------------------------------------------------------------ whole calls

    def front(self, frames: torch.Tensor, plan: Plan, timer: StageTimer):
        """`pipeline.pnet_front`, replayed as one CUDA graph for frame sizes the fixed-shape cascade declines.

        Shapes depend only on (batch, frame size); frames redone after an
        overflow run eagerly (their count varies: a capture would serve once).
        """
        size = tuple(frames.shape[1:])
        if (self.graph_mode == "off" or timer.enabled or frames.device.type != "cuda"
                or not any(v is False and k[1:3] == size[:2] for k, v in self._cascades.entries.items())):
            return pnet_front(self, frames, plan, timer)
        key = (frames.shape[0], id(plan))
        hit = self._fronts.get(key)
        if hit is None or hit[0] is not plan:
            if self.graph_mode == "auto" and not self._fronts.wanted(key):
                return pnet_front(self, frames, plan, timer)
            hit = self._keep_captured(self._fronts, key, lambda: self._capture_front(frames, plan))
        _, graph, static_in, out = hit
        static_in.copy_(frames, non_blocking=True)
        graph.replay()
        return out

    def detect_frames(self, frames: torch.Tensor, cfg, timer: StageTimer = NO_TIMER):
        """The fixed-shape cascade as CUDA graph replays, in chunks of ``graph_batch`` frames; None declines the call.

        A None entry leaves that frame to the shared pipeline: chunks of a shape
        seen for the first time (``graphs="auto"``), of a size the fixed-shape
        cascade cannot take, or whose replay flags an overflow of the
        capacities or an unconverged NMS (the next capture of that shape has
        more room). With the timer on (the profiler) the same fixed-shape code
        runs eagerly, stage by stage, instead of a replay.
        """
        if self.graph_mode == "off" or frames.device.type != "cuda":
            return None
        n, h, w = frames.shape[0], frames.shape[1], frames.shape[2]
        step = self.graph_batch
        runs = []  # (key, cascade, flat result on the device, frames in the chunk) or (None, n)
        with torch.inference_mode():  # the graphs' buffers were made in inference mode
            for i in range(0, n, step):
                chunk = frames[i:i + step]
                m = chunk.shape[0]
                size = bucket(m, step, self._cascades.sizes(lambda k: k[1:] == (h, w, cfg)))
                key = (size, h, w, cfg)
                if timer.enabled:
                    runs.append(self._timed_chunk(key, chunk, timer))
                    continue
                entry = self._cascades.get(key)
                if entry is None and (self.graph_mode == "always" or self._cascades.wanted(key)):
                    entry = self._keep_captured(self._cascades, key, lambda: self._capture_cascade(key, chunk))
                if not entry:
                    self.graph_stats["eager"] += 1
                    runs.append((None, m))
                    continue
                cascade, graph, static_in, result = entry
                static_in[:m].copy_(chunk, non_blocking=True)
                if size > m:
                    static_in[m:].zero_()
                graph.replay()
                runs.append((key, cascade, result.clone(), m))
            live = [r[2] for r in runs if r[0] is not None]
            if not live:
                return None
            host = torch.cat(live).cpu().numpy()  # one copy back, one sync
        out: list = []
        at = 0
        for run in runs:
            if run[0] is None:
                out.extend([None] * run[1])
                continue
            key, cascade, r, m = run
            rows, flags = cascade.split(host[at:at + r.numel()])
            at += r.numel()
            out.extend(self._chunk_result(key, cascade, rows, flags, m))
        return out

    def _chunk_result(self, key, cascade, rows, flags, m: int) -> list:
        """Per-frame results of a chunk, or Nones (and more room for the next capture) when a flag is down."""
        if flags.all():
            self.graph_stats["replays"] += 1
            return cascade.unpack(rows[:m])
        self.graph_stats["fallbacks"] += 1
        caps, iters = self._caps[key]
        caps = tuple(min(2 * c, hi) if not ok else c for c, ok, hi in zip(caps, flags[:-1], MAX_CAPS))
        self._caps[key] = (caps, iters if flags[-1] else iters + 4)
        self._cascades.pop(key)
        return [None] * m

    def _static_cascade(self, key) -> StaticCascade | None:
        size, h, w, cfg = key
        caps, iters = self._caps.setdefault(key, (self.caps or default_caps(size), DEFAULT_ITERS))
        if size >= 8 and caps[0] > batch_max_candidates(h, w):
            return None  # frames this crowded run faster through the shared pipeline
        try:
            return StaticCascade(self, cfg, size, h, w, caps=caps, iters=iters)
        except ValueError:  # no single packed canvas for this size: the shared pipeline handles it
            return None

    @staticmethod
    def _padded(chunk: torch.Tensor, size: int) -> torch.Tensor:
        """The chunk with zero frames appended up to `size` (they hold no faces and are dropped)."""
        out = chunk.new_zeros((size, *chunk.shape[1:]))
        out[:chunk.shape[0]] = chunk
        return out

    def _capture_front(self, frames: torch.Tensor, plan: Plan):
        static_in = frames.clone()
        with torch.inference_mode(), self._fixed_shapes():
            graph, out = capture(lambda x: pnet_front(self, x, plan), static_in, self.device)
        return plan, graph, static_in, out

    def _capture_cascade(self, key, chunk: torch.Tensor):
        cascade = self._static_cascade(key)
        if cascade is None:
            return False
        static_in = self._padded(chunk, key[0])  # the warm-ups run on real frames: representative autotune
        try:
            with self._fixed_shapes():
                graph, result = capture(cascade.packed, static_in, self.device)
        except Exception as e:  # noqa: BLE001 - an op that cannot be captured here: say so, run the shared path
            warnings.warn(f"fastmtcnn: fixed-shape mode off for {tuple(chunk.shape)}: {e}", RuntimeWarning)
            return False
        self.graph_stats["captures"] += 1
        return cascade, graph, static_in, result

    def _timed_chunk(self, key, chunk: torch.Tensor, timer: StageTimer):
        """The fixed-shape cascade of `key`, run eagerly with the stage timer (the profiler's view of a replay)."""
        cascade = self._static_cascade(key)
        if cascade is None:
            return None, chunk.shape[0]
        with self._fixed_shapes():
            return key, cascade, cascade.packed(self._padded(chunk, key[0]), timer), chunk.shape[0]

    # ------------------------------------------------------------------ the rest

    def nms(self, boxes, scores, threshold, groups=None, mode="union", plus_one=False):
        if self.nms_impl == "numpy":
            keep = bx.nms(self.to_numpy(boxes), self.to_numpy(scores), threshold,
                          None if groups is None else self.to_numpy(groups), mode, plus_one)
            return torch.from_numpy(keep).to(self.device)
        if self.nms_impl == "torchvision" and mode == "union" and not plus_one:
            from torchvision.ops import batched_nms  # optional; imported when asked for (start-up time)

            if groups is None:
                groups = torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device)
            return batched_nms(boxes.float(), scores.float(), groups, float(threshold))
        return grouped_nms(boxes, scores, threshold, groups, mode, plus_one)

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
