"""PyTorch backend: the whole cascade on one device (CUDA, or CPU for tests).

Everything after the upload of the images stays on the device: integral
images of the whole batch in one buffer, the PNet tiles (one kernel from a
table of pieces), PNet, the candidates, NMS (`torch_nms`), the exact area
crops, RNet and ONet; the results are copied to the host once. On CUDA a call
runs the fixed-shape cascade (`torch_static.TiledCascade`): no host sync
until the result, shapes that depend on the batch's capacities, never on the
images' sizes. The shared cascade (`pipeline.py`) answers what that cannot
(an image whose candidates overflow the capacities, the CPU). Options are
documented on `TorchBackend`.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import os
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .. import boxes as bx
from .. import cache
from ..config import Config
from ..crop import MEAN, SCALE, Integrals, area_resize, integral_image, integral_offsets
from ..nets import PNET_MASK_VALUE, torch_nets
from ..pipeline import NO_TIMER, StageTimer, batch_plan
from ..pyramid import TILE, Plan, pnet_out
from . import torch_warmup
from .torch_graphs import ShapeCache, bucket, capture
from .torch_nms import dense_nms, grouped_nms
from .torch_static import (BATCH_CAPS, DEFAULT_CAPS, DEFAULT_ITERS, MAX_CAPS, NMS_STEPS, Inputs, Shape, TiledCascade,
                           default_caps, nms_slots)

GRAPH_MODES = {False: "off", True: "always", "auto": "auto", "off": "off", "always": "always"}
#: PNet tile side on the GPU (`pyramid.TILE`, export-onnx's default too)
GPU_TILE = TILE
#: most images and pixels in one fixed-shape call (bounds its memory: tiles, activations, integrals)
MAX_IMAGES = 64
MAX_PIXELS = 128 << 20
#: with graphs="auto", calls of at most this many images are captured as CUDA graphs (when their shape
#: comes back); larger ones run the same fixed-shape kernels eagerly
GRAPH_IMAGES = 4

#: fixed-shape reruns of a chunk whose capacities were short, each with the short ones doubled, before
#: its images go to the shared pipeline
RETRIES = 2

#: longest a long job waits for kernels loading from Triton's cache (`TorchBackend.wait_for_kernels`)
KERNEL_WAIT = 5.0

#: set at interpreter exit: kernel warm-ups stop at their next step. A daemon thread still inside Triton's
#: compiler when Python finalizes aborts the process ("terminate called without an active exception")
_EXITING = threading.Event()
_WARMUPS: set[threading.Thread] = set()


@atexit.register
def _stop_warmups() -> None:
    """Let running kernel warm-ups finish the step they are in (one kernel) and stop, before Python finalizes."""
    _EXITING.set()
    for t in list(_WARMUPS):
        t.join()


def _start(thread: threading.Thread) -> None:
    """Start a backend's helper thread, registered first so that the interpreter's exit waits for it
    (`_stop_warmups`)."""
    _WARMUPS.add(thread)
    thread.start()


def triton_usable(device: torch.device) -> bool:
    """Whether the Triton kernels may run on `device`: CUDA, with Triton installed (imported later, by the
    kernels' warm-up; one that then fails to import turns them off with a warning)."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def _kernels():
    """`torch_kernels`, imported where the kernels are first used (see `TorchBackend.__init__`)."""
    from . import torch_kernels

    return torch_kernels


def _pow2(n: int, least: int = 1) -> int:
    return max(least, 1 << max(0, int(n) - 1).bit_length())


#: tiles per PNet call past this many: a larger batch runs in chunks of it (`TorchBackend.pnet`)
PNET_CHUNK = 64

#: sizes per octave an eager call's PNet batch (its tile count) is padded to (`tile_bucket`); a power of two
TILE_STEPS = 4


def tile_bucket(n: int) -> int:
    """n rounded up to a multiple of `PNET_CHUNK` past it; below, to one of `TILE_STEPS` sizes an octave
    (.., 16, 20, 24, 28, 32, 40, 48, 56, 64; exact up to 8).

    Why: cuDNN makes an execution plan for every new input shape it meets, and
    a window of photos of new sizes has a new tile count. A first pass over a
    folder of mixed sizes took 150-200 ms a window of 64 against 66 ms once
    met, while a one-size folder's first pass ran near its warm rate (H200,
    before this padding). Four sizes an octave: that folder's first pass ran
    at 545 img/s against 483 with exact counts (H100, fresh processes, one
    run), and with the kernels ready its windows still took 195, 80, 70, 110,
    75 ms against 60 warm. Past `PNET_CHUNK` tiles PNet runs in chunks of
    that many (`TorchBackend.pnet`): one shape, whatever the window. Padding
    costs fewer than `PNET_CHUNK` empty tiles (a quarter below it).
    """
    n = int(n)
    if n > PNET_CHUNK:  # PNet runs in chunks of PNET_CHUNK tiles: one shape for every count past it
        return -(-n // PNET_CHUNK) * PNET_CHUNK
    if n <= 2 * TILE_STEPS:
        return max(n, 1)
    step = 1 << ((n - 1).bit_length() - TILE_STEPS.bit_length())  # an octave (2^k, 2^(k+1)] in TILE_STEPS steps
    return -(-n // step) * step


class TorchBackend:
    """MTCNN's nets and array maths in torch on ``device`` ("cuda", "cuda:1", "cpu").

    fp16: nets in half precision (pyramid and crops exact in float32 up to the
        cast; box maths float32). Default (None): on for CUDA, where it is
        1.4-1.7x faster (H200), off on the CPU. It finds the reference faces by
        DESIGN.md's matching rule (98%, IoU >= 0.7), not to 1e-2 px: ask for
        fp16=False for that (fp32 runs without TF32, so CUDA fp32 gives the
        CPU backends' numbers).
    channels_last: NHWC convolutions (default on CUDA; tiles are made NHWC).
    cudnn_benchmark: let cuDNN time its algorithms for every new shape of an
        eager call (process-wide flag). Off by default. Graph captures always
        autotune (their shapes are fixed).
    pinned: host images go through a reused page-locked buffer and an async copy.
    fixed_shapes: run calls through the fixed-shape cascade
        (`torch_static.TiledCascade`): default on CUDA. Images whose
        candidates overflow its capacities are redone by the shared pipeline
        (exact), and the capacity that was short is doubled for later calls.
    graphs: "auto" (default on CUDA): a fixed-shape call whose capacities
        (bucketed) come back is captured as one CUDA graph on its second
        sighting and replayed from then on; True captures at once; False
        never. Captures hold their batch's buffers (``graph_memory``, a
        fraction of the GPU's memory, bounds them, least recently used
        dropped first).
    graph_batch: most images per fixed-shape call (larger batches run in chunks).
    tile: PNet tile side (even); every image's pyramid is cut into tiles of this size.
    nms: "grouped" (default, `torch_nms.grouped_nms`), "torchvision", or "numpy".
    kernels: Triton kernels for the integral image, tiles, crops and the
        fixed-shape NMS (CUDA with Triton only). fuse_nets: each conv's bias,
        PReLU (+ PNet's tile mask) and max pooling as one Triton kernel.
        A kernel that fails on a machine turns both off, with a warning.
        The kernels compile (or load from Triton's disk cache) on a background
        thread started by the second call (`wait_for_kernels` starts it at
        once); until they are ready, calls use the torch versions, so a first
        result never waits for Triton's compiler (seconds on a cold cache) nor
        shares the interpreter with its loading.
    """

    name = "torch"
    overlap = False  # one device queue: batches, not threads, keep it busy
    front = None  # the shared pipeline's `pnet_front`, with `canvas` below

    def __init__(self, device: str | torch.device = "cpu", threads: int | None = None, *, fp16: bool | None = None,
                 channels_last: bool | None = None, cudnn_benchmark: bool = False, pinned: bool = False,
                 fixed_shapes: bool | None = None, graphs: bool | str = "auto", nms: str = "grouped",
                 graph_batch: int = MAX_IMAGES, caps: tuple[int, ...] | None = None, kernels: bool = True,
                 fuse_nets: bool = True, graph_memory: float = 0.25, tile: int = GPU_TILE) -> None:
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
        if int(tile) < 24 or int(tile) % 2:
            raise ValueError(f"tile must be an even number of pixels >= 24, got {tile}")
        self.tiles = int(tile)
        self.graph_mode = GRAPH_MODES[graphs] if cuda else "off"
        self.fixed_shapes = cuda if fixed_shapes is None else bool(fixed_shapes)
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
        # Triton is imported by the kernels' warm-up, not here: importing it parses every kernel's source
        # (0.37 s of a fresh process's 2.1 s to its first result, H200 cProfile), and a first result runs
        # torch ops. Installed but broken, it fails the warm-up, which turns the kernels off.
        self.kernels = bool(kernels) and triton_usable(self.device)
        self.fused_nets = self.kernels and bool(fuse_nets) and self.channels_last
        self._fused = None  # `fused`, made on first use (the warm-up)
        self._compiled = False  # Triton kernels in use: once compiled (`_compile_kernels`) or captured
        self.graph_batch = int(graph_batch)
        self.caps = tuple(caps) if caps else None
        self._consts: dict = {}
        budget = int(graph_memory * torch.cuda.get_device_properties(self.device).total_memory) if cuda else None
        # (Shape, (cfg, starting caps), caps, iters) -> (cascade, graph, inputs, result) | False
        self._graphs = ShapeCache(budget=budget)
        self._caps: dict = {}  # per (config, starting capacities): (capacities, NMS steps), grown on overflow
        self.graph_stats = {"captures": 0, "replays": 0, "fallbacks": 0, "eager": 0, "reruns": 0}
        self.warmup: threading.Thread | None = None
        self._answered = False  # a call was answered: the next one starts the warm-up
        self._first_launch: threading.Thread | None = None  # `_launch_ops`, started with a job's warm-up
        if self.kernels:  # started by the second call (`submit_images`): the first result never shares the GIL
            self.warmup = threading.Thread(target=self._compile_kernels, name="fastmtcnn-triton", daemon=True)

    @property
    def fused(self) -> tuple:
        """The nets with Triton epilogues (`torch_kernels.fused_nets`), made where first used."""
        if self._fused is None:
            self._fused = _kernels().fused_nets(*self._plain)
        return self._fused

    @property
    def fused_nms(self) -> bool:
        return self.kernels and self._compiled

    def __repr__(self) -> str:
        return (f"TorchBackend(device={str(self.device)!r}, fp16={self.fp16}, channels_last={self.channels_last}, "
                f"fixed_shapes={self.fixed_shapes}, graphs={self.graph_mode!r}, nms={self.nms_impl!r}, "
                f"kernels={self.kernels}, fused_nets={self.fused_nets}, tile={self.tiles})")

    # ------------------------------------------------------------------ Triton kernels

    def _compile_kernels(self, aside: bool = True) -> None:
        """Compile (or load from Triton's disk cache) every kernel on tiny inputs, on a side stream, then turn
        them on. Runs on a background thread: calls meanwhile use torch ops, with the same numbers. At exit it
        stops between kernels (`_stop_warmups`): a one-photo process waits for one compile at most.

        aside: where no earlier process compiled them (`kernels_cached`), a process of their own compiles
        them first (`torch_warmup`: it outlives a short job), and this thread then loads them."""
        try:
            if aside and not self.kernels_cached():
                self._compile_aside()
            if _EXITING.is_set():
                return
            _kernels().remember_triton_key(cache.folder("triton"))
            with torch.cuda.device(self.device), torch.cuda.stream(torch.cuda.Stream(self.device)):
                for step in self._kernel_steps():
                    if _EXITING.is_set():
                        return
                    with torch.inference_mode():
                        step()
                torch.cuda.current_stream(self.device).synchronize()
            self._compiled = True
            self._note_cached()
        except Exception as e:  # noqa: BLE001 - any compiler or driver error: torch ops from now on, exactly
            self._kernels_failed(e)
        finally:
            _WARMUPS.discard(threading.current_thread())

    def _compile_aside(self) -> bool:
        """`torch_warmup.compile_aside` for this backend's kernels; whether they are in Triton's cache now."""
        note = self._cached_note()
        if note is None:
            return False
        pkg = str(Path(__file__).resolve().parents[2])  # the child imports this fastmtcnn, not another
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pkg, os.environ.get("PYTHONPATH")]))}
        argv = [sys.executable, "-c", "import sys; from fastmtcnn.backends.torch import compile_main; "
                "sys.exit(compile_main(sys.argv[1:]))", str(self.device),
                *("1" if f else "0" for f in (self.fp16, self.fused_nets, self.channels_last))]
        return torch_warmup.compile_aside(note, argv, _EXITING, env=env)

    def _kernel_steps(self):
        """Every Triton kernel once, on tiny inputs: one step per kernel (or pair)."""
        dev = self.device
        img = torch.zeros((1, 40, 40, 3), dtype=torch.uint8, device=dev)
        ii = self._integrals_with(img, use=True, force=True)
        yield lambda: None  # the integral's kernels ran just now: a place to stop
        plan = batch_plan(self, [(40, 40)], Config(minsize=12))
        x, mask, _ = self.canvas(ii, plan, list(range(len(plan.canvases))), kernels=True)
        if self.fused_nets:
            yield lambda: self.fused[0](x, mask)
        win = torch.tensor([[0, 24, 0, 24]], device=dev)
        f = torch.zeros(1, dtype=torch.int64, device=dev)
        for size, net in ((24, 1), (48, 2)):
            c = _kernels().crops(ii.flat, _image_table(ii), f, win, size, self.dtype, MEAN, SCALE)
            if self.fused_nets:
                yield lambda c=c, net=net: self.fused[net](c.contiguous(memory_format=torch.channels_last))
        yield from self._nms_steps()

    def _nms_steps(self):
        """The fused NMS kernels as the cascade launches them: its three NMS (`NMS_STEPS`) at the slot
        counts of each size class's starting capacities (`nms_slots`), one step each.

        Why: the threshold and the number of 32-slot words a row holds are
        compile-time constants of these kernels; a warm-up at 0.5 on 64 slots
        compiled variants no call uses and left the real ones to a job's first
        call (on an H100 the first process of a machine ran its first pass over
        the mixed folder at 123 img/s, its second at 887; this is the suspect).
        Capacities that grow on overflow still compile once, then (cached).
        """
        seen = set()
        for caps in (self.caps,) if self.caps else (DEFAULT_CAPS, BATCH_CAPS):
            for k, step in zip(nms_slots(caps), NMS_STEPS):
                if (k, step) in seen:
                    continue
                seen.add((k, step))
                b = torch.rand((1, k, 5), device=self.device) * 10
                b[..., 2:4] += 10
                valid = torch.ones((1, k), dtype=torch.bool, device=self.device)
                threshold, mode, plus_one = step
                yield lambda b=b, valid=valid, t=threshold, m=mode, p=plus_one: dense_nms(b, valid, None, t, 2, m, p,
                                                                                         fused=True)

    def _kernels_failed(self, e: Exception) -> None:
        """A Triton kernel failed to compile or run here: warn once, use the torch versions from now on."""
        warnings.warn(f"fastmtcnn: Triton kernels off ({type(e).__name__}: {e}); using torch ops", RuntimeWarning,
                      stacklevel=3)
        self.kernels = self.fused_nets = self._compiled = False

    def _try_kernel(self, name: str, *args, force: bool = False):
        """`torch_kernels.<name>(*args)` where the kernels are in use (or `force`d); else None."""
        if self.kernels and (self._compiled or force):
            try:
                return getattr(_kernels(), name)(*args)
            except Exception as e:  # noqa: BLE001 - any compiler or driver error: fall back, exactly
                if force:
                    raise
                self._kernels_failed(e)
        return None

    def _cached_note(self) -> Path | None:
        """The file that says Triton's disk cache holds every kernel of this backend (written after a
        warm-up): named by the kernels' sources, Triton, torch, the GPU and Triton's cache folder."""
        if not self.kernels:
            return None
        where = cache.folder("triton")
        if where is None:
            return None
        kernels = _kernels()
        if kernels.triton is None:  # installed but would not import: the warm-up turns the kernels off
            return None
        h = hashlib.sha256()
        for f in (Path(__file__), Path(kernels.__file__)):
            h.update(f.read_bytes())
        h.update(repr((kernels.triton.__version__, torch.__version__, torch.version.cuda,
                       torch.cuda.get_device_capability(self.device), self.dtype, self.fused_nets,
                       os.environ.get("TRITON_CACHE_DIR"), os.environ.get("TRITON_HOME"))).encode())
        return Path(where) / f"kernels-{h.hexdigest()[:32]}"

    def _note_cached(self) -> None:
        with contextlib.suppress(OSError):
            if (note := self._cached_note()) is not None:
                note.touch()

    def kernels_cached(self) -> bool:
        """Whether an earlier process compiled this backend's Triton kernels on this machine: loading them
        from Triton's cache then takes a fraction of a second, not the ~13 s of compiling."""
        note = self._cached_note()
        return note is not None and note.is_file()

    def wait_for_kernels(self, timeout: float = KERNEL_WAIT) -> bool:
        """Start the kernel warm-up and wait up to `timeout` s for it; whether the kernels are in use.

        Why: a long job (a folder) whose kernels load from Triton's cache runs its first pass at the warm
        rate when it waits for them first; loading them aside, on a thread, while the job runs shares the
        interpreter with it, and the kernels were measured to be still loading at the end of a 384-photo
        pass. A job whose kernels must be compiled (`kernels_cached` False) should not wait: that is ~13 s.
        Started before any call, the warm-up comes with `_launch_ops` beside it.
        """
        if self.warmup is None:
            return self._compiled
        # not with graphs "always": its tiny call would capture a graph of its own, after the kernels
        if self.warmup.ident is None and not self._answered and self.graph_mode != "always" \
                and not _EXITING.is_set():
            self._first_launch = threading.Thread(target=self._launch_ops, name="fastmtcnn-first", daemon=True)
            _start(self._first_launch)
        self._start_warmup()
        if timeout:
            self._after_first_launch()
        self.warmup.join(timeout)
        return self._compiled

    def _after_first_launch(self) -> None:
        """Wait for `_launch_ops` if it runs: a call never shares the backend with it."""
        first = self._first_launch
        if first is not None and first is not threading.current_thread():
            first.join()
            self._first_launch = None

    def _launch_ops(self) -> None:
        """One tiny image through the cascade on torch ops, results dropped, beside the kernels' loading.

        Why: a process's first call pays, once, for CUDA loading the module of each op on its first
        launch and for cuDNN's first calls: ~0.3 s of a fresh video job's first 1080p chunk (H100), paid
        after the kernels had loaded. A job that waits for them (`wait_for_kernels`) pays it meanwhile."""
        try:
            with torch.inference_mode(), torch.cuda.device(self.device):
                wait = self.submit_images([torch.zeros((64, 64, 3), dtype=torch.uint8, device=self.device)],
                                          Config())
                if wait is not None:
                    wait()
        except Exception:  # noqa: BLE001 - whatever failed here fails again, and is reported, in the job's call
            pass
        finally:
            _WARMUPS.discard(threading.current_thread())

    def _start_warmup(self) -> None:
        if self.warmup is not None and self.warmup.ident is None and not _EXITING.is_set():
            _start(self.warmup)

    @contextmanager
    def _kernels_on(self):
        """Kernels in use inside this block (a graph capture waits for them: a graph is captured once)."""
        if self.warmup is not None:
            self._start_warmup()
            self.warmup.join()
        yield

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
        """Host uint8 images -> device, through page-locked memory and an async copy, without waiting.

        Why not one reused staging buffer: its copy is queued behind the work
        already on the stream, so reusing it meant waiting for that work, i.e.
        a batch of host images could not be queued (`MTCNN.submit`) while the
        batch before it ran. Torch's pinned-memory cache keeps each buffer
        until its copy is done (it records the copy on the stream) and reuses it.
        """
        if not self.pinned:
            return torch.from_numpy(host).to(self.device)
        buf = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
        out = torch.empty(host.shape, dtype=torch.uint8, device=self.device)
        # in slices of >= 8 MB: the DMA of one slice overlaps the host copy of the next
        flat_host, flat_buf, flat_out = host.reshape(-1), buf.reshape(-1), out.reshape(-1)
        step = 8 << 20
        for i in range(0, host.size, step):
            np.copyto(flat_buf[i:i + step].numpy(), flat_host[i:i + step])
            flat_out[i:i + step].copy_(flat_buf[i:i + step], non_blocking=True)
        return out

    def images(self, images) -> list[torch.Tensor] | torch.Tensor:
        """Images on the device: an (N, H, W, 3) uint8 tensor (kept as one) or a list of (H, W, 3) of any sizes."""
        if isinstance(images, torch.Tensor):
            t = images if images.ndim == 4 else images.unsqueeze(0)
            _check_tensor(t)
            return t.to(self.device, non_blocking=t.is_pinned()).contiguous()
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return self._upload(np.ascontiguousarray(images))
        out = []
        for im in images:
            if isinstance(im, torch.Tensor):
                _check_tensor(im[None] if im.ndim == 3 else im)
                out.append(im.to(self.device).contiguous())
            else:
                out.append(self._upload(np.ascontiguousarray(im)))
        return out

    def integrals(self, images) -> Integrals:
        """`crop.integrals` of the images in one device buffer (one Triton launch pair for all on CUDA)."""
        return self._integrals_with(images, use=self.kernels and self._compiled)

    def _integrals_with(self, images, use: bool, force: bool = False) -> Integrals:
        sizes = [tuple(im.shape[:2]) for im in images]
        offsets = integral_offsets(tuple(sizes))
        flat = torch.empty((int(offsets[-1]), 3), dtype=torch.int32, device=self.device)
        self._integrate(images, flat, offsets, use, force)
        return Integrals.of(flat, sizes, device=self.device)

    def _integrate(self, images, flat: torch.Tensor, offsets: np.ndarray, use: bool, force: bool = False) -> None:
        """Image i's integral into `flat` from row offsets[i]: the kernels' one launch pair for the whole
        batch, whatever its sizes, or torch ops."""
        done = self._try_kernel("integrals", list(images), flat, offsets[:-1], force=force) if use else None
        if done is None:
            stacked = isinstance(images, torch.Tensor)
            parts = [(images, 0, len(images))] if stacked else [(im[None], i, i + 1) for i, im in enumerate(images)]
            for frames, a, b in parts:
                h, w = frames.shape[1:3]
                flat[offsets[a]:offsets[b]].view(b - a, h + 1, w + 1, 3).copy_(integral_image(frames))

    # ------------------------------------------------------------------ pipeline hooks

    def canvas(self, ii: Integrals, plan: Plan, ids, kernels: bool | None = None):
        """PNet input of canvases `ids` (N, 3, h, w) (NHWC memory), their masks and cells (`tiles`)."""
        c0 = plan.canvases[ids[0]]
        if c0.h != c0.w:  # per-scale canvases (one level each): the array-API resampling
            from ..pipeline import canvas_input, canvas_mask

            return canvas_input(ii, plan, ids), self.asarray(canvas_mask(plan, ids)), None
        t = plan.tables
        sel = np.flatnonzero(np.isin(t["canvas"], np.asarray(ids)))
        pieces = np.zeros((len(sel), 11), np.int32)
        pieces[:, :9] = t["rect"][sel]
        pieces[:, 0] = np.searchsorted(np.asarray(ids), t["rect"][sel, 0])  # canvas -> position in this call
        pieces[:, 9] = t["image"][sel]
        pieces[:, 10] = sel
        return self.make_tiles(ii, _image_table(ii), torch.from_numpy(pieces).to(self.device), pieces, len(ids), c0.h,
                               kernels)

    def make_tiles(self, ii: Integrals, images: torch.Tensor, pieces: torch.Tensor, host: np.ndarray, n: int,
                   tile: int, kernels: bool | None = None):
        """`n` PNet tiles from a table of pieces (`torch_kernels.tiles`): input (n, 3, T, T) in the nets'
        dtype (NHWC memory), mask (n, 1, T-2, T-2), cells (n, K, K) int32 (piece index, -1 where none).
        host: the same table on the host (the torch fallback's row and pixel counts)."""
        k = pnet_out(tile)
        x = torch.zeros((n, tile, tile, 3), dtype=self.dtype, device=self.device)
        # mask and cells with one spare element at the end (see `_tiles_torch`)
        m = torch.full((n * (tile - 2) ** 2 + 1,), PNET_MASK_VALUE, dtype=self.dtype, device=self.device)
        c = torch.full((n * k * k + 1,), -1, dtype=torch.int32, device=self.device)
        mask, cells = m[:-1].view(n, tile - 2, tile - 2), c[:-1].view(n, k, k)
        use = self.kernels and self._compiled if kernels is None else kernels
        if not (use and self._try_kernel("tiles", ii.flat, images, pieces, x, mask, cells, tile, tile,
                                          MEAN, SCALE, force=bool(kernels)) is not None):
            _tiles_torch(images, ii.flat, pieces, x, m, c, host)
        return x.permute(0, 3, 1, 2), mask[:, None], cells

    def crops(self, ii: Integrals, frame: torch.Tensor, windows: torch.Tensor, size: int) -> torch.Tensor:
        """RNet/ONet inputs: `crop.area_resize`'s numbers, in one Triton kernel where there is one."""
        x = self._try_kernel("crops", ii.flat, _image_table(ii), frame, windows, size, self.dtype,
                             MEAN, SCALE)
        return area_resize(ii, frame, windows, size, size) if x is None else x

    # ------------------------------------------------------------------ nets

    def _net(self, k: int, *args):
        """Net k (0 PNet, 1 RNet, 2 ONet) in the backend's dtype and layout -> float32 outputs."""
        x = args[0].to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n = x.shape[0]
        fused = self.fused_nets and self._compiled
        with torch.inference_mode(), self._exact():
            try:
                out = (self.fused if fused else self._plain)[k](x, *args[1:])
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
        """PNet over tiles; a batch of more than `PNET_CHUNK` tiles (a multiple of it, `_shape`) in chunks
        of that many, so that the convolutions meet one shape whatever the tile count."""
        n, c = x.shape[0], PNET_CHUNK
        if n <= c or n % c:
            return self._net(0, x, mask)
        out = None
        for i in range(0, n, c):
            part = self._net(0, x[i:i + c], None if mask is None else mask[i:i + c])
            if out is None:
                out = tuple(torch.empty((n, *p.shape[1:]), dtype=p.dtype, device=p.device) for p in part)
            for o, p in zip(out, part):
                o[i:i + c].copy_(p)
        return out

    def rnet(self, x):
        return self._net(1, x)

    def onet(self, x):
        return self._net(2, x)

    # ------------------------------------------------------------------ whole calls

    def submit_images(self, images, cfg, timer: StageTimer = NO_TIMER):
        """Queue the fixed-shape cascade (`TiledCascade`) over the batch, in chunks, and the copy of its
        results to the host -> a function that waits for them; None declines the call.

        Nothing here waits for the device: a caller may queue the next batch
        before it asks for this one's results (`pipeline.submit_images`).
        A chunk whose candidates overflowed a capacity, or whose NMS did not
        converge, runs again with the short capacity doubled (kept for later
        calls), up to `RETRIES` times, when the results are asked for; a None
        entry then leaves that image to the shared pipeline. With the timer on
        (the profiler) the cascade runs eagerly, stage by stage, synchronized.
        """
        if not self.fixed_shapes or not cfg.use_packed:
            return None
        self._after_first_launch()
        if self._answered:
            self._start_warmup()
        with torch.inference_mode():
            ranges = self._chunks([im.shape[:2] for im in images])
            pending = [self._run_chunk(images[a:b], cfg, timer) for a, b in ranges]
            if not pending:
                return list
            host, done = self._to_host(torch.cat([p[3] for p in pending]))

        def results() -> list:
            if done is not None:
                done.synchronize()
            flat = host.numpy()
            out: list = []
            at = 0
            with torch.inference_mode():
                for (a, b), (m, cascade, key, result, replayed) in zip(ranges, pending):
                    rows, flags = cascade.split(flat[at:at + result.numel()])
                    at += result.numel()
                    tries = 0
                    while not flags.all() and self._grow(key, flags) and tries < RETRIES:  # (grown for later)
                        tries += 1
                        # again with the grown capacities: one more fixed-shape run of the chunk, not the
                        # shared pipeline photo by photo (each photo's pyramid levels new shapes to cuDNN)
                        self.graph_stats["reruns"] += 1
                        m, cascade, key, result, replayed = self._run_chunk(images[a:b], cfg, timer)
                        rows, flags = cascade.split(result.cpu().numpy())
                    out.extend(self._chunk_result(cascade, rows, flags, m, replayed))
            self._answered = True
            return out

        return results

    def _to_host(self, flat: torch.Tensor):
        """An asynchronous copy of a device result into page-locked host memory -> (host tensor, event
        to wait for; None where the copy is done)."""
        if self.device.type != "cuda":
            return flat.cpu(), None
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        host.copy_(flat, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return host, done

    def _chunks(self, sizes) -> list[tuple[int, int]]:
        """[a, b) ranges of images of these (H, W) sizes: at most `graph_batch` images and `MAX_PIXELS`
        pixels each (one image alone may be more)."""
        out, a, px = [], 0, 0
        for i, (h, w) in enumerate(sizes):
            p = int(h) * int(w)
            if i > a and (i - a >= self.graph_batch or px + p > MAX_PIXELS):
                out.append((a, i))
                a, px = i, 0
            px += p
        if a < len(sizes):
            out.append((a, len(sizes)))
        return out

    def plan_ahead(self, sizes, cfg) -> None:
        """Plan a coming call of images of these (H, W) sizes: its chunks' plans and tables, cached
        (`pipeline.plan_for`), so that the call finds them made.

        Why: planning is Python on the host (a window of 64 new sizes: ~12 ms
        on a 2-core CPU) and the GPU waits for it; a folder's reader thread
        plans the next window while the GPU runs this one (`photos.detect_photos`).
        """
        if not self.fixed_shapes or not cfg.use_packed:
            return
        for a, b in self._chunks(sizes):
            batch_plan(self, sizes[a:b], cfg).tables  # noqa: B018 - made and cached here

    def _run_chunk(self, images, cfg, timer: StageTimer):
        """Queue one chunk's fixed-shape cascade (eager or a graph replay) -> (images, cascade, key, flat result)."""
        plan = batch_plan(self, [im.shape[:2] for im in images], cfg)
        rows = sum((h + 1) * (w + 1) for h, w in plan.sizes)
        ck = self._caps_key(cfg, len(images))
        caps, iters = self.capacities(cfg, len(images))
        # "auto": graphs for small batches (a stream's frames), where launches cost more than the work; a
        # large batch's kernels are long enough for the host to queue ahead of them, graph or not
        graphed = not timer.enabled and (self.graph_mode == "always" or (
            self.graph_mode == "auto" and len(images) <= GRAPH_IMAGES))
        shape = self._shape(plan, rows, graphed)
        key = (shape, ck, caps, iters)
        entry = self._graphs.get(key) if graphed else None
        # "auto" captures only once the Triton kernels are ready (a graph is captured once, with them):
        # until then the same fixed-shape call runs eagerly, never waiting for the compiler
        ready = not self.kernels or self._compiled
        if graphed and entry is None and (self.graph_mode == "always" or (ready and self._graphs.wanted(key))):
            entry = self._keep_captured(key, lambda: self._capture(key, images, plan))
        if entry:
            cascade, graph, inp, result = entry
            self._load(inp, images, plan)
            graph.replay()
            return len(images), cascade, key, result.clone(), True
        cascade = TiledCascade(self, cfg, shape, caps, iters)
        inp = Inputs(shape, self.device)
        self._load(inp, images, plan)
        return len(images), cascade, key, cascade.packed(inp, timer), False

    def _shape(self, plan: Plan, rows: int, graphed: bool) -> Shape:
        """The capacities a batch runs with: its own counts, or rounded up to buckets when a graph may be
        captured for them (a captured shape then serves every batch that fits)."""
        n, t, p = len(plan.sizes), len(plan.canvases), len(plan.pieces)
        if not graphed:  # images bucketed too: RNet's and ONet's pools are per image (a folder's last window)
            return Shape(bucket(n, self.graph_batch), tile_bucket(t), max(p, 1), max(rows, 1), self.tiles)
        have = [k[0] for k, v in self._graphs.entries.items() if v and k[0].holds(plan, rows)]
        if have:
            return min(have, key=lambda s: (s.tiles, s.rows))
        return Shape(bucket(n, self.graph_batch), _pow2(t), _pow2(p, 16), _pow2(rows, 1 << 16), self.tiles)

    def _load(self, inp: Inputs, images, plan: Plan) -> None:
        """The batch's integral images (made in the cascade's buffer) and tables; nothing here waits for
        the device (a queued call before this one may still run)."""
        off = integral_offsets(tuple(plan.sizes))
        self._integrate(images, inp.ii, off, use=self.kernels and self._compiled)
        inp.load(plan, off)

    def _capture(self, key, images, plan: Plan):
        shape, (cfg, _), caps, iters = key
        cascade = TiledCascade(self, cfg, shape, caps, iters)
        inp = Inputs(shape, self.device)
        self._load(inp, images, plan)  # the warm-ups run on real images: representative autotune
        try:
            with self._kernels_on():
                graph, result = capture(lambda _: cascade.packed(inp), inp.ii, self.device)
        except Exception as e:  # noqa: BLE001 - an op that cannot be captured here: say so, run eagerly
            warnings.warn(f"fastmtcnn: CUDA graphs off for {shape}: {e}", RuntimeWarning)
            return False
        self.graph_stats["captures"] += 1
        return cascade, graph, inp, result

    def _keep_captured(self, key, make):
        """make() (a capture), kept at the cost of the GPU memory torch reserved meanwhile: about what the
        graph keeps."""
        before = torch.cuda.memory_reserved(self.device)
        value = make()
        self._graphs.put(key, value, max(0, torch.cuda.memory_reserved(self.device) - before))
        return value

    def _caps_key(self, cfg, n: int) -> tuple:
        return cfg, self.caps or default_caps(n)

    def capacities(self, cfg, n: int) -> tuple[tuple[int, ...], int]:
        """(capacities, NMS steps) a call of n images runs with: its size class's start (`default_caps`:
        a single photo's differ from a folder window's), grown where a call found them short.

        Why per size class: kept per config alone, a process's first call chose for every later one, so
        a script that detected one photo and then a folder ran each window with the single photo's RNet
        pool (1536 crops an image, against 1024)."""
        ck = self._caps_key(cfg, n)
        return self._caps.get(ck, (ck[1], DEFAULT_ITERS))

    def _grow(self, key, flags: np.ndarray) -> bool:
        """Double the capacities a chunk found short (up to `MAX_CAPS`), and the NMS steps if one did not
        converge, for this and later calls of its size class; whether anything grew."""
        ck, caps, iters = key[1], key[2], key[3]
        grown = tuple(min(2 * c, hi) if not ok else c for c, ok, hi in zip(caps, flags[:-1], MAX_CAPS))
        more = iters if flags[-1] else iters + 4
        self._graphs.pop(key)
        if (grown, more) == (caps, iters):
            return False
        self._caps[ck] = (grown, more)
        return True

    def _chunk_result(self, cascade, rows, flags, m: int, replayed: bool) -> list:
        """Per-image results of a chunk; None for every image when a flag is still down (the shared
        pipeline then does them)."""
        if flags.all():
            self.graph_stats["replays" if replayed else "eager"] += 1
            return cascade.unpack(rows[:m])
        self.graph_stats["fallbacks"] += 1
        return [None] * m

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


def compile_main(argv: list[str]) -> int:
    """The kernels' compile process (`TorchBackend._compile_aside`): DEVICE FP16 FUSE_NETS CHANNELS_LAST LOCK
    -> compile them into Triton's cache (which writes the cache note), drop the lock; exit status 0 if done."""
    *opts, lock = argv

    def run() -> bool:
        device, fp16, fuse, last = opts
        be = TorchBackend(device, fp16=fp16 == "1", fuse_nets=fuse == "1", channels_last=last == "1", graphs=False)
        be._compile_kernels(aside=False)
        return be._compiled

    return torch_warmup.holding(lock, run)


def _check_tensor(t: torch.Tensor) -> None:
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"image tensors must be uint8 (N, H, W, 3) RGB, got {t.dtype} {tuple(t.shape)}")


def _image_table(ii: Integrals) -> torch.Tensor:
    """(n, 3) int64: each image's row offset in the integrals' buffer, H, W (what the kernels read)."""
    return torch.stack([ii.offset, ii.height, ii.width], dim=1).contiguous()


def _tiles_torch(images: torch.Tensor, ii: torch.Tensor, pieces: torch.Tensor, x: torch.Tensor, mf: torch.Tensor,
                 cf: torch.Tensor, host: np.ndarray, chunk: int = 1 << 23) -> None:
    """`torch_kernels.tiles` in torch ops (the CPU, or a GPU before its Triton kernels are ready).

    The area bins are separable: a pixel's rows of the integral depend on its
    piece row only and its columns on its piece column only. So the bins are
    worked out once per piece row and once per piece column (tables the size
    of the plan), and each pixel costs two table gathers, four integral
    gathers and no division. Per-pixel arithmetic is int32: the integral's
    row indices of a call stay below 2**31 (`MAX_PIXELS`). Pixels go `chunk`
    at a time, in whole piece rows, no host sync: the row and pixel counts
    come from `host`, the pieces' table on the host (the plan made it).

    x: (n, T, T, 3); mf, cf: the flat mask (n * (T-2)**2) and cells (n * K**2)
    plus one spare element at the end, which takes the writes of pixels that
    write nothing there.
    """
    hh, ww = host[:, 3].astype(np.int64), host[:, 4].astype(np.int64)
    widths = np.repeat(ww, hh)  # every piece row's width: plan-sized, not pixel-sized
    if not widths.sum():
        return
    dev, i32 = x.device, torch.int32
    t = x.shape[1]
    tm, k = t - 2, pnet_out(t)
    p = pieces.to(torch.int64)  # the tables' maths in int64 (r * H may pass 2**31); per pixel int32
    slot, y0, x0, h, w, sy, sx, lh, lw, img, index = p.unbind(1)
    off, big_h, big_w = images[img].unbind(1)
    npieces = len(host)
    # one row per piece row: integral rows of its bins (as flat row offsets), bin height, where it lands
    row0, col0 = torch.cumsum(h, 0) - h, torch.cumsum(w, 0) - w  # each piece's first row and column
    pr = torch.repeat_interleave(torch.arange(npieces, device=dev), h, output_size=len(widths))
    i = torch.arange(len(widths), device=dev) - row0[pr]
    r, bh, lhr = sy[pr] + i, big_h[pr], lh[pr]
    ys, ye = (r * bh) // lhr, ((r + 1) * bh + lhr - 1) // lhr
    w1 = big_w[pr] + 1
    ty, wr = y0[pr] + i, w[pr]
    starts = torch.cumsum(wr, 0) - wr  # each row's first pixel
    rows = torch.stack([
        off[pr] + ye * w1, off[pr] + ys * w1, ye - ys,           # integral rows, bin height
        col0[pr] - starts,                                        # + pixel index: the column table's row
        (slot[pr] * t + ty) * t + x0[pr] - starts,                # + pixel index: the tile pixel
        torch.where(i < h[pr] - 2, wr - 2, 0),                    # mask: columns j below this
        (slot[pr] * tm + ty) * tm + x0[pr] - starts,              # + pixel index: the mask element
        torch.where((i % 2 == 0) & (i // 2 < (h[pr] - 1) // 2 - 4), (wr - 1) // 2 - 4, 0),  # cells: j // 2 below
        (slot[pr] * k + ty // 2) * k + x0[pr] // 2,               # + j // 2: the cell
        starts, index[pr]], dim=1).to(i32)
    # one row per piece column: integral columns of its bins, bin width
    pc = torch.repeat_interleave(torch.arange(npieces, device=dev), w, output_size=int(ww.sum()))
    c = sx[pc] + torch.arange(len(pc), device=dev) - col0[pc]
    bw, lwc = big_w[pc], lw[pc]
    xs, xe = (c * bw) // lwc, ((c + 1) * bw + lwc - 1) // lwc
    cols = torch.stack([xs, xe, xe - xs], dim=1).to(i32)
    xf = x.view(-1, 3)
    ends = np.cumsum(widths)
    r0 = 0
    while r0 < len(widths):  # whole rows, at most `chunk` pixels (a row is at most a tile wide)
        base = int(ends[r0 - 1]) if r0 else 0
        r1 = max(r0 + 1, int(np.searchsorted(ends, base + chunk, side="right")))
        n = int(ends[r1 - 1]) - base
        at = torch.repeat_interleave(torch.arange(r0, r1, device=dev, dtype=i32),
                                     wr[r0:r1], output_size=n)
        q = torch.arange(base, base + n, device=dev, dtype=i32)
        a, b, dy, cshift, oshift, mlim, mshift, clim, cbase, start, idx = rows.index_select(0, at).unbind(1)
        j = q - start
        xs_, xe_, dx = cols.index_select(0, q + cshift).unbind(1)
        g = [ii.index_select(0, yy + xx) for yy, xx in ((a, xe_), (a, xs_), (b, xe_), (b, xs_))]
        v = ((g[0] - g[1]) - (g[2] - g[3])).to(torch.float32)
        v /= (dy * dx).to(torch.float32)[:, None]
        v -= MEAN
        v *= SCALE
        xf[q + oshift] = v.to(x.dtype)
        mf[torch.where(j < mlim, q + mshift, mf.numel() - 1)] = 0
        cf[torch.where(((j & 1) == 0) & ((j >> 1) < clim), cbase + (j >> 1), cf.numel() - 1)] = idx
        r0 = r1
