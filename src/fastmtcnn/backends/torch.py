"""PyTorch backend: the whole cascade on one device (CUDA, or CPU for tests).

Everything after the upload of the frames stays on the device: integral
images, the packed PNet canvas (one gather for all pyramid levels), PNet, the
candidates, NMS (`torch_nms.grouped_nms`), the exact area crops, RNet and ONet;
the pipeline copies the final boxes to the host once. The cascade itself is
`pipeline.py`'s, shared with the ONNX Runtime backend.

Speed options (each measured on/off by benchmarks/bench_gpu.py):

* ``fp16``: nets in half precision (inputs and pyramid stay exact in float32
  up to the cast; box maths stays float32).
* ``channels_last``: NHWC convolutions (the canvas is gathered NHWC already).
* ``cudnn_benchmark``: let cuDNN time its algorithms per shape (process-wide flag).
* ``pinned``: host frames go through a reused page-locked buffer and an async copy
  (off by default: the extra host copy cost more than the faster DMA saved).
* ``graphs``: fixed-shape mode. Batches run the whole cascade with fixed
  shapes (`torch_static.StaticCascade`), in chunks of up to ``graph_batch``
  frames, each replayed as one CUDA graph per (chunk size, frame size,
  settings): one launch per chunk and one host sync per call. ``caps``
  (per frame: PNet candidates, RNet crops, RNet survivors, ONet crops, ONet
  survivors; crops pooled over the chunk) start at `torch_static.default_caps`;
  frames of a chunk that needs more are redone by the shared pipeline (exact)
  and that graph is recaptured with the short capacity doubled.
* ``nms``: "grouped" (default), "torchvision" (`batched_nms`, for comparison), or "numpy".
* ``kernels``: Triton kernels for the integral image and the canvas (`torch_kernels`;
  CUDA with Triton only, else the torch versions).
* ``fuse_nets``: each conv's bias + PReLU (+ PNet's canvas mask) + max pooling
  as one Triton kernel after a bias-free cuDNN convolution, in all three nets
  (CUDA, channels-last).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import boxes as bx
from ..crop import MEAN, SCALE, area_resize
from ..nets import torch_nets
from ..pipeline import NO_TIMER
from ..pyramid import Canvas, Plan
from . import torch_kernels
from .torch_nms import grouped_nms

try:  # torchvision is optional (CPU CI has none)
    from torchvision.ops import batched_nms as _tv_batched_nms
except ImportError:  # pragma: no cover - depends on the environment
    _tv_batched_nms = None


def _canvas_gather(canvas: Canvas, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat integral-image offsets (4, h*w) of each canvas pixel's area bin, and the bin areas (h*w,).

    Pixel (i, j) of a level of size (lh, lw) averages frame rows
    [floor(i*H/lh), ceil((i+1)*H/lh)) and likewise columns (adaptive average
    pooling, as `crop.resize_frames`); canvas pixels outside every level read
    an empty sum with area 1 (value -0.996, inside PNet's input range: the
    mask keeps them out of every valid cell).
    """
    W1 = width + 1
    ys = np.zeros((canvas.h, canvas.w), np.int64)
    ye = np.zeros_like(ys)
    xs = np.zeros_like(ys)
    xe = np.zeros_like(ys)
    for lv in canvas.levels:
        i = np.arange(lv.h)
        j = np.arange(lv.w)
        r0, r1 = (i * height) // lv.h, ((i + 1) * height + lv.h - 1) // lv.h
        c0, c1 = (j * width) // lv.w, ((j + 1) * width + lv.w - 1) // lv.w
        sl = (slice(lv.y, lv.y + lv.h), slice(lv.x, lv.x + lv.w))
        ys[sl], ye[sl] = r0[:, None], r1[:, None]
        xs[sl], xe[sl] = c0[None, :], c1[None, :]
    area = (ye - ys) * (xe - xs)
    pad = area == 0
    area[pad] = 1
    corners = np.stack([ys * W1 + xs, ys * W1 + xe, ye * W1 + xs, ye * W1 + xe]).reshape(4, -1)
    return corners, area.reshape(-1).astype(np.float32)


class TorchBackend:
    """MTCNN's nets and array maths in torch on ``device`` ("cuda", "cuda:1", "cpu")."""

    name = "torch"

    def __init__(self, device: str | torch.device = "cpu", threads: int | None = None, *, fp16: bool = False,
                 channels_last: bool | None = None, cudnn_benchmark: bool = True, pinned: bool = False,
                 graphs: bool = False, nms: str = "grouped", graph_batch: int = 64,
                 caps: tuple[int, ...] | None = None, kernels: bool = True,
                 fuse_nets: bool = True) -> None:
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA GPU")
        if threads:
            torch.set_num_threads(int(threads))
        if nms not in ("grouped", "torchvision", "numpy"):
            raise ValueError(f"nms must be 'grouped', 'torchvision' or 'numpy', got {nms!r}")
        if nms == "torchvision" and _tv_batched_nms is None:
            raise RuntimeError("nms='torchvision' needs torchvision installed")
        if fp16 and not cuda:
            raise ValueError("fp16 is for CUDA devices")
        if graphs and not cuda:
            raise ValueError("graphs (CUDA graphs) need a CUDA device")
        self.fp16 = bool(fp16)
        self.channels_last = cuda if channels_last is None else bool(channels_last)
        self.pinned = bool(pinned) and cuda
        self.graphs = bool(graphs)
        self.nms_impl = nms
        if cuda:  # process-wide flag: the last backend made sets it
            torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
        self.dtype = torch.float16 if self.fp16 else torch.float32
        nets = torch_nets(self.device, self.dtype)
        if self.channels_last:
            nets = tuple(m.to(memory_format=torch.channels_last) for m in nets)
        self._pnet, self._rnet, self._onet = nets
        self.kernels = bool(kernels) and torch_kernels.available(self.device)
        if self.kernels:
            why = torch_kernels.self_test(self.device)
            if why:
                import warnings

                warnings.warn(f"fastmtcnn: Triton kernels off ({why}); using torch ops", RuntimeWarning)
                self.kernels = False
        self.fused_nms = self.kernels
        if self.kernels:
            why = torch_kernels.self_test_nms(self.device)
            if why:
                import warnings

                warnings.warn(f"fastmtcnn: fused NMS kernel off ({why}); using torch ops", RuntimeWarning)
                self.fused_nms = False
        self.fused_nets = False
        if fuse_nets and self.kernels and self.channels_last:
            nets = (self._pnet, self._rnet, self._onet)
            why = torch_kernels.self_test_nets(nets, self.dtype)
            if why:
                import warnings

                warnings.warn(f"fastmtcnn: fused nets off ({why})", RuntimeWarning)
            else:
                self._pnet, self._rnet, self._onet = torch_kernels.fused_nets(*nets)
                self.fused_nets = True
        self._consts: dict[int, tuple[object, torch.Tensor]] = {}
        self._staging: torch.Tensor | None = None  # pinned host buffer for uploads
        self._staged = None  # event: the last upload from the staging buffer is done
        self._graphs: dict[tuple, tuple] = {}
        if int(graph_batch) < 1:
            raise ValueError(f"graph_batch must be >= 1, got {graph_batch}")
        self.graph_batch = int(graph_batch)
        self.caps = tuple(caps) if caps else None
        self._cascades: dict[tuple, object] = {}
        self._cascade_caps: dict[tuple, tuple] = {}  # per shape: (capacities, NMS steps), grown on overflow
        self.graph_stats = {"replays": 0, "fallbacks": 0}

    def __repr__(self) -> str:
        return (f"TorchBackend(device={str(self.device)!r}, fp16={self.fp16}, channels_last={self.channels_last}, "
                f"graphs={self.graphs}, nms={self.nms_impl!r}, kernels={self.kernels}, "
                f"fused_nets={self.fused_nets})")

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
        """(N, H, W, 3) uint8 on the device: a list of arrays, an NHWC array, or a tensor (not copied if already there)."""
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
        """(N, H+1, W+1, 3) int32 prefix sums: pad a zero row and column, then two scans."""
        if self.kernels:
            return torch_kernels.integral(frames)
        x = F.pad(frames, (0, 0, 1, 0, 1, 0))
        return torch.cumsum(torch.cumsum(x, 1, dtype=torch.int32), 2, dtype=torch.int32)

    def canvas(self, ii: torch.Tensor, canvas: Canvas, height: int, width: int) -> torch.Tensor:
        """Every pyramid level of the canvas in one gather: (N, 3, h, w), NHWC in memory."""
        idx, inv = self._const(("canvas", id(canvas)), canvas, lambda: _canvas_gather(canvas, height, width))
        n = ii.shape[0]
        if self.kernels:
            x = torch_kernels.canvas(ii, idx, inv, self.dtype, MEAN, SCALE)
            return x.reshape(n, canvas.h, canvas.w, 3).permute(0, 3, 1, 2)
        g = ii.reshape(n, -1, 3).index_select(1, idx.reshape(-1)).reshape(n, 4, -1, 3)
        total = (g[:, 3] - g[:, 2]) - (g[:, 1] - g[:, 0])
        x = (total.to(torch.float32) / inv[None, :, None] - MEAN) * SCALE
        return x.reshape(n, canvas.h, canvas.w, 3).permute(0, 3, 1, 2).to(self.dtype)

    def crops(self, ii: torch.Tensor, frame: torch.Tensor, windows: torch.Tensor, size: int) -> torch.Tensor:
        """RNet/ONet inputs: `crop.area_resize`'s numbers, in one Triton kernel where there is one."""
        if self.kernels:
            return torch_kernels.crops(ii, frame, windows, size, self.dtype, MEAN, SCALE)
        return area_resize(ii, frame, windows, size, size)

    def _const(self, key, owner, make) -> tuple[torch.Tensor, ...]:
        """Device copies of numpy tables derived from `owner` (a cached plan object), made once."""
        hit = self._consts.get(key)
        if hit is not None and hit[0] is owner:
            return hit[1]
        t = tuple(torch.from_numpy(a).to(self.device) for a in make())
        self._consts[key] = (owner, t)
        return t

    # ------------------------------------------------------------------ nets

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def pnet(self, x, mask):
        reg, prob = self._pnet(self._in(x), mask)
        return reg.float(), prob.float()

    @torch.inference_mode()
    def rnet(self, x):
        return tuple(o.float() for o in self._rnet(self._in(x)))

    @torch.inference_mode()
    def onet(self, x):
        return tuple(o.float() for o in self._onet(self._in(x)))

    @torch.inference_mode()
    def front(self, frames: torch.Tensor, plan: Plan, timer):
        """Integral image, packed canvases and PNet: ii and [(reg, prob)] per canvas.

        Shapes depend only on (batch, frame size), so with ``graphs`` the front
        of a frame size that fixed-shape mode declined for good (it comes back on
        every call) is captured once and replayed as one CUDA graph. Frames redone after
        an overflow run eagerly: their count varies, a capture would serve once.
        """
        size = tuple(frames.shape[1:])
        if self.graphs and not timer.enabled and any(
                v is False and k[0][1:] == size for k, v in self._cascades.items()):
            return self._front_graph(frames, plan)
        return self._front(frames, plan, timer)

    def _front(self, frames, plan: Plan, timer):
        with timer("integral"):
            ii = self.integral(frames)
        maps = []
        for c in plan.canvases:
            with timer("pyramid"):
                x = self.canvas(ii, c, plan.height, plan.width)
                mask = self.asarray(c.mask)
            with timer("pnet"):
                maps.append(self.pnet(x, mask))
        return ii, maps

    def _front_graph(self, frames: torch.Tensor, plan: Plan):
        key = (tuple(frames.shape), id(plan))
        hit = self._graphs.get(key)
        if hit is None or hit[0] is not plan:
            static_in = torch.empty_like(frames)
            static_in.copy_(frames)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up: cuDNN autotune, allocator, constants
                    self._front(static_in, plan, NO_TIMER)
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = self._front(static_in, plan, NO_TIMER)
            if len(self._graphs) > 8:
                self._graphs.clear()
            hit = self._graphs[key] = (plan, g, static_in, out)
        _, g, static_in, out = hit
        static_in.copy_(frames, non_blocking=True)
        g.replay()
        return out

    # ------------------------------------------------------------------ fixed-shape mode

    def detect_frames(self, frames: torch.Tensor, cfg):
        """With ``graphs``: the cascade as CUDA graph replays, chunks of ``graph_batch`` frames; else None.

        A chunk whose replay flags an overflow of the fixed capacities or an
        unconverged NMS answers None for its frames: the shared pipeline redoes
        them exactly, and the next capture of that shape has more room.
        """
        if not self.graphs:
            return None
        n, step = frames.shape[0], self.graph_batch
        pending = []
        with torch.inference_mode():  # the graphs' buffers were made in inference mode
            for i in range(0, n, step):
                chunk = frames[i:i + step]
                key = (tuple(chunk.shape), cfg)
                entry = self._cascades.get(key)
                if entry is None:
                    if len(self._cascades) > 8:
                        self._cascades.clear()
                    entry = self._cascades[key] = self._capture_cascade(chunk, cfg)
                if entry is False:
                    return None  # this size cannot run with fixed shapes: all frames go the shared way
                cascade, graph, static_in, result = entry
                static_in.copy_(chunk, non_blocking=True)
                graph.replay()
                pending.append((key, cascade, result.clone()))
            host = torch.cat([r for _, _, r in pending]).cpu().numpy()  # one copy back, one sync
        out: list = []
        at = 0
        for key, cascade, r in pending:
            rows, flags = cascade.split(host[at:at + r.numel()])
            at += r.numel()
            if flags.all():
                self.graph_stats["replays"] += 1
                out.extend(cascade.unpack(rows))
                continue
            from .torch_static import MAX_CAPS  # redo exactly; next time a graph with more room / NMS steps

            self.graph_stats["fallbacks"] += 1
            caps, iters = self._cascade_caps[key]
            caps = tuple(min(2 * c, hi) if not ok else c for c, ok, hi in zip(caps, flags[:-1], MAX_CAPS))
            self._cascade_caps[key] = (caps, iters if flags[-1] else iters + 4)
            self._cascades.pop(key, None)
            out.extend([None] * cascade.n)
        return out

    @torch.inference_mode()
    def _capture_cascade(self, frames: torch.Tensor, cfg):
        from .torch_static import BATCH_MAX_CANDIDATES, DEFAULT_ITERS, StaticCascade, default_caps

        key = (tuple(frames.shape), cfg)
        caps, iters = self._cascade_caps.setdefault(key, (self.caps or default_caps(frames.shape[0]), DEFAULT_ITERS))
        if frames.shape[0] >= 8 and caps[0] > BATCH_MAX_CANDIDATES:
            return False  # frames this crowded run faster through the shared pipeline
        try:
            return self._capture(StaticCascade(self, cfg, frames.shape[0], frames.shape[1], frames.shape[2],
                                               caps=caps, iters=iters), frames)
        except ValueError:  # no single packed canvas for this size: the shared pipeline handles it
            return False
        except RuntimeError as e:  # an op that cannot be captured: say so, run the shared path
            import warnings

            warnings.warn(f"fastmtcnn: fixed-shape mode off for {tuple(frames.shape)}: {e}", RuntimeWarning)
            return False

    def _capture(self, cascade, frames: torch.Tensor):
        run = cascade.packed
        static_in = frames.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: cuDNN autotune, allocator, device tables
                run(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            result = run(static_in)
        return cascade, graph, static_in, result

    # ------------------------------------------------------------------ the rest

    def nms(self, boxes, scores, threshold, groups=None, mode="union", plus_one=False):
        if self.nms_impl == "numpy":
            keep = bx.nms(self.to_numpy(boxes), self.to_numpy(scores), threshold,
                          None if groups is None else self.to_numpy(groups), mode, plus_one)
            return torch.from_numpy(keep).to(self.device)
        if self.nms_impl == "torchvision" and mode == "union" and not plus_one:
            if groups is None:
                groups = torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device)
            return _tv_batched_nms(boxes.float(), scores.float(), groups, float(threshold))
        return grouped_nms(boxes, scores, threshold, groups, mode, plus_one)

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
