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

import os
import tempfile
import threading
from collections import OrderedDict, deque
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import openvino as ov

from ..nets import onnx_path
from ..pipeline import NO_TIMER
from .host import HostBackend

#: RNet/ONet batch sizes compiled: OpenVINO's kernels for batches of 8 to 64
#: give every crop bit for bit the same outputs whatever the batch (checked for
#: each output), while 128 and up take another path (differences of 3e-7); so a
#: photo's faces never depend on what else is in its batch, at most 4 shapes per
#: net are compiled, and the cost is small (RNet 512 crops: 73 ms in parts of 64
#: vs 63 ms in one batch; ONet the same).
BATCH_PARTS = (64, 32, 16, 8)

#: compiled (net, input shapes, settings) kept per process, least recently used dropped
CACHE_SIZE = 24

#: OpenVINO streams, each on its share of the cores: the host keeps as many requests in flight (PNet
#: tiles, RNet/ONet parts) and makes the next tile meanwhile. Measured on 2 cores (PNet on 256 tiles):
#: two 1-thread streams 40-48 ns per pixel on a loaded machine where one 2-thread request took 56-74,
#: and making the tiles overlaps with the nets instead of waiting for them (12 MP: 627-964 vs 1062-1118
#: ms for the tiles and PNet), with the same outputs bit for bit
STREAMS = 2


def batch_parts(n: int) -> list[int]:
    """Sizes (from `BATCH_PARTS`, largest first) whose sum is n rounded up to a multiple of 8."""
    rest = -(-n // 8) * 8
    parts = [64] * (rest // 64)
    rest %= 64
    for size in BATCH_PARTS[1:]:
        if rest >= size:
            parts.append(size)
            rest -= size
    return parts


# pybind11 sets up its numpy bridge on the first tensor read; when two threads do that
# first read at once, OpenVINO 2026.4 deadlocks (one holds the GIL waiting for the
# other's static initialization, which waits for the GIL). Do it once here: module
# imports run one at a time.
ov.Tensor(np.zeros(1, np.float32)).data


OFF = ("", "0", "off", "none", "false")


@lru_cache(maxsize=None)
def default_cache_dir() -> str | None:
    """Where compiled nets are kept between processes, or None when that folder cannot be written."""
    env = os.environ.get("FASTMTCNN_CACHE_DIR")
    if env is not None and env.strip().lower() in OFF:
        return None
    if env:
        root = Path(env)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastmtcnn"
    folder = root / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return None
    return str(folder)


@lru_cache(maxsize=None)
def _core(cache_dir: str | None) -> ov.Core:
    core = ov.Core()
    if cache_dir:
        core.set_property({"CACHE_DIR": cache_dir})
    return core


@lru_cache(maxsize=None)
def _model(net: str) -> ov.Model:
    """The shipped graph as read by OpenVINO (cloned before each reshape)."""
    return _core(None).read_model(str(onnx_path(net)))


class _Compiled:
    """A net compiled for one set of input shapes, and its idle infer requests (one per concurrent caller)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.model = None
        self.idle: list[ov.InferRequest] = []


_compiled: OrderedDict[tuple, _Compiled] = OrderedDict()
_compiled_lock = threading.Lock()


def _entry(net: str, shapes: tuple, config: tuple, cache_dir: str | None) -> _Compiled:
    """`net` compiled for these input shapes and settings: from the cache, or compiled now."""
    key = (net, shapes, config, cache_dir)
    with _compiled_lock:
        entry = _compiled.get(key)
        if entry is None:
            entry = _compiled[key] = _Compiled()
            while len(_compiled) > CACHE_SIZE:
                _compiled.popitem(last=False)
        else:
            _compiled.move_to_end(key)
    with entry.lock:  # one compile per shape, even when two threads ask at once
        if entry.model is None:
            model = _model(net).clone()
            model.reshape({p.get_any_name(): list(s) for p, s in zip(model.inputs, shapes)})
            entry.model = _core(cache_dir).compile_model(model, "CPU", dict(config))
    return entry


class OpenVinoBackend(HostBackend):
    name = "openvino"

    def __init__(self, threads: int | None = None, cache_dir: str | bool | None = None) -> None:
        """cache_dir: a folder for compiled nets, False for none, None for `default_cache_dir`."""
        super().__init__()
        streams = STREAMS if threads is None else max(1, min(STREAMS, int(threads)))
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.config = tuple(sorted(config.items()))
        config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=streams)
        self.pnet_config = tuple(sorted(config.items()))
        self.streams = {"pnet": streams, "rnet": 1, "onet": 1}
        if cache_dir is None:
            cache_dir = default_cache_dir()
        self.cache_dir = str(cache_dir) if cache_dir else None
        self._inputs = {k: [p.get_any_name() for p in _model(k).inputs] for k in ("pnet", "rnet", "onet")}

    def compiled(self) -> list:
        """The compiled nets this backend's settings have in the process cache (for tests and reports)."""
        with _compiled_lock:
            return [e.model for k, e in _compiled.items() if k[2] in (self.config, self.pnet_config)
                    and e.model is not None]

    def _stream(self, net: str, inputs: Iterable[tuple[np.ndarray, ...]], timer=NO_TIMER,
                ) -> Iterator[tuple[np.ndarray, ...]]:
        """`net`'s outputs for each input tuple, in order, with up to `streams` requests in flight: while
        they run (each on its OpenVINO stream), the caller makes the next input (`HostBackend.front`)."""
        flight: deque[tuple[_Compiled, ov.InferRequest]] = deque()

        def done():
            entry, req = flight.popleft()
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
                if len(flight) == self.streams[net]:
                    yield done()
                entry = _entry(net, tuple(a.shape for a in arrays), self.pnet_config if net == "pnet" else self.config,
                               self.cache_dir)
                with entry.lock:
                    req = entry.idle.pop() if entry.idle else entry.model.create_infer_request()
                flight.append((entry, req))
                # inputs are copied into the request: the caller may reuse its buffers at once
                req.start_async(dict(zip(self._inputs[net], arrays)), share_inputs=False)
            while flight:
                yield done()
        finally:
            while flight:  # the caller stopped early (an error): let the requests finish, keep them
                entry, req = flight.popleft()
                req.wait()
                with entry.lock:
                    entry.idle.append(req)

    def _infer(self, net: str, *arrays: np.ndarray) -> tuple:
        if net == "pnet":
            return next(self._stream(net, [arrays]))
        (x,) = arrays
        n = x.shape[0]
        parts = batch_parts(max(n, 1))
        if sum(parts) != n:  # zeros for the padding (and for n = 0: outputs of the right shapes)
            x = np.concatenate([x, np.zeros((sum(parts) - n,) + x.shape[1:], np.float32)])
        starts = np.cumsum([0] + parts)
        outs = list(self._stream(net, ((x[a:b],) for a, b in zip(starts[:-1], starts[1:]))))
        return tuple(np.concatenate(o)[:n] for o in zip(*outs))
