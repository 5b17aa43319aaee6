"""OpenVINO backend: the shipped ONNX graphs compiled by OpenVINO for the CPU.

Same graphs, same host pipeline as the ONNX Runtime backend (`host.HostBackend`);
only the engine differs. OpenVINO runs a convolution net fastest with static
shapes (measured on a 2-core AMD EPYC, AVX2: PNet 53 ns per input pixel
static, 85-95 with dynamic shapes, ONNX Runtime's 95), so every net is
compiled per input shape, and the shapes are kept few, whatever the photos:

* PNet runs on tiles of a few fixed sides (`host.HOST_TILES`);
* RNet/ONet batches are split into parts of 64, 32, 16 and 8 crops (the last
  padded with zeros): four shapes per net (`BATCH_PARTS`);
* compiled nets are shared by every detector of the process (same settings)
  in one least-recently-used cache of `CACHE_SIZE` shapes, which bounds
  their memory; compiling one takes 50-100 ms on that machine.

Precision is pinned to float32: on CPUs with bf16 or AMX units OpenVINO would
otherwise pick bf16, which is not the reference's arithmetic. Threads: one
stream over the physical cores (OpenVINO's latency hint), or `threads`.

Compiled nets are kept on disk (OpenVINO's model cache), so a new process
loads them instead of compiling: in the user's cache folder
(``$XDG_CACHE_HOME/fastmtcnn/openvino``, else ``~/.cache/fastmtcnn/openvino``),
or ``$FASTMTCNN_CACHE_DIR/openvino``; ``FASTMTCNN_CACHE_DIR=off`` (or an
unwritable folder) turns it off, quietly. `cache_dir` overrides both.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import OrderedDict, deque
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .. import cache
from ..nets import onnx_path
from ..pipeline import NO_TIMER
from ..pyramid import Plan
from .host import HostBackend


def _import_openvino():
    """`import openvino`, without importing its model converter (`openvino.tools.ovc`) until asked for.

    Why: OpenVINO's package imports its converter eagerly, and that looks up
    installed packages' metadata and starts telemetry: 110-160 ms of every
    process (measured on 2 cores; `import openvino` 170-230 ms, 64-88 without
    it), more than ONNX Runtime's whole import, for a tool this backend never
    uses. `openvino.convert_model` still works: it is imported on first use.
    """
    if sys.modules.get("openvino") is not None:
        return sys.modules["openvino"]
    name = "openvino.tools.ovc"
    sys.modules[name] = None  # its import raises ImportError, which openvino's __init__ tolerates
    try:
        import openvino
    except ImportError:  # an OpenVINO that needs it at import: the plain import
        del sys.modules[name]
        import openvino
    else:
        del sys.modules[name]
        if "convert_model" not in vars(openvino):
            def __getattr__(attr: str):
                if attr == "convert_model":
                    from openvino.tools.ovc import convert_model

                    openvino.convert_model = convert_model
                    return convert_model
                raise AttributeError(f"module 'openvino' has no attribute {attr!r}")

            openvino.__getattr__ = __getattr__
    return openvino


ov = _import_openvino()

#: the one batch size RNet and ONet are compiled for: a batch runs as parts of that size, the last one
#: padded with zeros, so a process compiles one shape per net (each compile, or load from the model
#: cache, costs 30-150 ms on 2 cores, which a fresh process pays on its first photo) and a crop's outputs
#: never depend on what else is in its batch. Parts run on the streams side by side. Measured per crop
#: (2 cores, OpenVINO 2026.4): RNet 39-59 us at 32-64 crops, 52-74 at 8; ONet 238-290 us at 8-16, 283-317
#: at 64, 368-425 at 128; ONet parts of 8 let a photo's few faces use both streams (640x480: 3 vs 5 ms)
PART = {"rnet": 64, "onet": 8}

#: compiled (net, input shapes, settings) kept per process, least recently used dropped
CACHE_SIZE = 24

#: OpenVINO streams, each on its share of the cores: the host keeps as many requests in flight (PNet
#: tiles, RNet/ONet parts) and makes the next tile meanwhile. Measured on 2 cores (PNet on 256 tiles):
#: two 1-thread streams 40-48 ns per pixel on a loaded machine where one 2-thread request took 56-74,
#: and making the tiles overlaps with the nets instead of waiting for them (12 MP: 627-964 vs 1062-1118
#: ms for the tiles and PNet), with the same outputs bit for bit
STREAMS = 2


# pybind11 sets up its numpy bridge on the first tensor read; when two threads do that
# first read at once, OpenVINO 2026.4 deadlocks (one holds the GIL waiting for the
# other's static initialization, which waits for the GIL). Do it once here: module
# imports run one at a time.
ov.Tensor(np.zeros(1, np.float32)).data


def default_cache_dir() -> str | None:
    """Where compiled nets are kept between processes, or None when that folder cannot be written."""
    return cache.folder("openvino")


@lru_cache(maxsize=None)
def _core() -> ov.Core:
    return ov.Core()


@lru_cache(maxsize=None)
def _model(net: str) -> ov.Model:
    """The shipped graph as read by OpenVINO (cloned before each reshape)."""
    return _core().read_model(str(onnx_path(net)))


@lru_cache(maxsize=None)
def _identity(net: str) -> str:
    """What a compiled net depends on besides its shapes and settings: the graph's bytes, OpenVINO, the CPU."""
    import hashlib  # here, not at the top: 4-6 ms, paid on the loading thread rather than in the constructor

    h = hashlib.sha256(onnx_path(net).read_bytes())
    h.update(ov.get_version().encode())
    h.update(str(_core().get_property("CPU", "FULL_DEVICE_NAME")).encode())
    return h.hexdigest()


def _blob_path(cache_dir: str, net: str, shapes: tuple, config: tuple) -> Path:
    import hashlib

    key = hashlib.sha256(repr((_identity(net), shapes, config)).encode()).hexdigest()[:32]
    return Path(cache_dir) / f"{net}-{key}.blob"


def _compile(net: str, shapes: tuple, config: tuple, cache_dir: str | None) -> ov.CompiledModel:
    """`net` for these input shapes and settings: loaded from `cache_dir`, or compiled (and kept there).

    Why our own files rather than OpenVINO's CACHE_DIR: OpenVINO finds a cached
    net by hashing the model, so every process would read the ONNX graphs
    first (its ONNX frontend: 100-370 ms on 2 cores); a file named by the
    graph's bytes, OpenVINO's version, the CPU, the shapes and the settings
    is imported directly (measured: three nets ready in ~200 ms vs ~370-520).
    A file that cannot be read, written or imported is compiled afresh, quietly.
    """
    path = _blob_path(cache_dir, net, shapes, config) if cache_dir else None
    if path is not None and path.is_file():
        try:
            return _core().import_model(path.read_bytes(), "CPU", dict(config))
        except Exception:  # noqa: BLE001 - a stale or damaged file: compile again and replace it
            pass
    model = _model(net).clone()
    model.reshape({p.get_any_name(): list(s) for p, s in zip(model.inputs, shapes)})
    compiled = _core().compile_model(model, "CPU", dict(config))
    if path is not None:
        import tempfile  # only where a net is compiled: 5-8 ms of a process that loads them all

        tmp = None
        try:  # a whole file or none: written aside, then renamed (processes may share the folder)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as f:
                tmp = f.name
                blob = compiled.export_model()  # io.BytesIO (OpenVINO 2023.1 on), bytes before
                f.write(blob.getvalue() if hasattr(blob, "getvalue") else blob)
            os.replace(tmp, path)
        except (OSError, RuntimeError):
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    return compiled


class _Compiled:
    """A net compiled for one set of input shapes, and its idle infer requests (one per concurrent caller)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.model = None
        self.idle: list[ov.InferRequest] = []


_compiled: OrderedDict[tuple, _Compiled] = OrderedDict()
_compiled_lock = threading.Lock()


def _slot(key: tuple) -> tuple[_Compiled, bool]:
    """The cache's entry for `key`, most recently used; whether it is new (empty: nobody loads it yet)."""
    with _compiled_lock:
        entry = _compiled.get(key)
        if entry is not None:
            _compiled.move_to_end(key)
            return entry, False
        entry = _compiled[key] = _Compiled()
        while len(_compiled) > CACHE_SIZE:
            _compiled.popitem(last=False)
        return entry, True


def _entry(net: str, shapes: tuple, config: tuple, cache_dir: str | None) -> _Compiled:
    """`net` compiled for these input shapes and settings: from the cache, or compiled now."""
    entry, _ = _slot((net, shapes, config, cache_dir))
    with entry.lock:  # one compile per shape, even when two threads ask at once
        if entry.model is None:
            entry.model = _compile(net, shapes, config, cache_dir)
    return entry


class OpenVinoBackend(HostBackend):
    name = "openvino"

    def __init__(self, threads: int | None = None, cache_dir: str | bool | None = None) -> None:
        """cache_dir: a folder for compiled nets, False for none, None for `default_cache_dir`."""
        super().__init__()
        self.streams = STREAMS if threads is None else max(1, min(STREAMS, int(threads)))
        config = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.streams, "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.config = tuple(sorted(config.items()))
        self.held = self.streams
        if cache_dir is None:
            self.cache_dir = default_cache_dir()
        else:
            self.cache_dir = cache.writable(str(Path(cache_dir).expanduser())) if cache_dir else None
        # RNet and ONet have one shape each (`PART`): load or compile them now, aside, so that a fresh
        # process's first photo finds them ready (it reads and decodes its image, runs PNet meanwhile)
        self._aside([(net, ((PART[net], 3, size, size),)) for net, size in (("rnet", 24), ("onet", 48))])

    def _aside(self, jobs: list[tuple[str, tuple]]) -> None:
        """Load or compile these (net, input shapes) on a thread of their own, those the cache has no entry
        for (an entry is loaded, or being loaded: each photo's `front` asks again)."""
        jobs = [j for j in jobs if _slot((*j, self.config, self.cache_dir))[1]]
        if jobs:  # `_entry`'s lock makes a caller that asks for one of them meanwhile wait for it
            threading.Thread(target=self._prepare, args=(jobs,), name="fastmtcnn-openvino-prepare").start()

    def _prepare(self, jobs: list[tuple[str, tuple]]) -> None:
        for net, shapes in jobs:
            try:
                _entry(net, shapes, self.config, self.cache_dir)
            except Exception:  # noqa: BLE001 - the net's first call will compile it again and say what fails
                return

    def front(self, images: list[np.ndarray], plan: Plan, threshold: float, timer=NO_TIMER):
        """`HostBackend.front`, PNet loaded aside for the plan's tile shapes (known from here on, not sooner):
        a fresh process's first photo makes its integral image and first tile meanwhile."""
        tiles = {(c.h, c.w): c for c in plan.canvases}.values()
        self._aside([("pnet", ((1, 3, c.h, c.w), c.mask_shape)) for c in tiles])
        return super().front(images, plan, threshold, timer)

    def compiled(self) -> list:
        """The compiled nets this backend's settings have in the process cache (for tests and reports)."""
        with _compiled_lock:
            return [e.model for k, e in _compiled.items() if k[2] == self.config and e.model is not None]

    def _stream(self, net: str, inputs: Iterable[tuple[np.ndarray, ...]], timer=NO_TIMER,
                ) -> Iterator[tuple[np.ndarray, ...]]:
        """`net`'s outputs for each input tuple, in order, with up to `streams` requests in flight: while
        they run (each on its OpenVINO stream), the caller makes the next input (`HostBackend.front`)."""
        flight: deque[tuple[_Compiled, ov.InferRequest, tuple]] = deque()

        def done():
            entry, req, _ = flight.popleft()
            try:
                with timer(net):
                    req.wait()
                return tuple(t.data.copy() for t in req.output_tensors)
            finally:
                with entry.lock:
                    entry.idle.append(req)

        try:
            for arrays in inputs:
                arrays = tuple(np.ascontiguousarray(a, np.float32) for a in arrays)
                if len(flight) == self.streams:
                    yield done()
                entry = _entry(net, tuple(a.shape for a in arrays), self.config, self.cache_dir)
                with entry.lock:
                    req = entry.idle.pop() if entry.idle else entry.model.create_infer_request()
                # by position (image, then mask); the request reads the arrays themselves (no copy): the
                # caller leaves them alone until `held` more inputs were asked for (`HostBackend.front`)
                for i, a in enumerate(arrays):
                    req.set_input_tensor(i, ov.Tensor(a, shared_memory=True))
                req.start_async()
                flight.append((entry, req, arrays))
            while flight:
                yield done()
        finally:
            while flight:  # the caller stopped early (an error): let the requests finish, keep them
                entry, req, _ = flight.popleft()
                req.wait()
                with entry.lock:
                    entry.idle.append(req)

    def _infer(self, net: str, *arrays: np.ndarray) -> tuple:
        if net == "pnet":
            return next(self._stream(net, [arrays]))
        (x,) = arrays
        n, part = x.shape[0], PART[net]
        padded = max(1, -(-n // part)) * part
        if padded != n:  # zeros for the padding (and for n = 0: outputs of the right shapes)
            x = np.concatenate([x, np.zeros((padded - n,) + x.shape[1:], np.float32)])
        outs = list(self._stream(net, ((x[a:a + part],) for a in range(0, padded, part))))
        return tuple(np.concatenate(o)[:n] for o in zip(*outs))
