"""ONNX Runtime backend: numpy arrays on the host, the three nets as ONNX graphs.

The graphs are the shipped ones (pnet with dynamic N x H x W, rnet/onet with
a dynamic batch). `providers` passes straight to ONNX Runtime, so the CUDA
and TensorRT execution providers work where a user has onnxruntime-gpu and
TensorRT; only the CPU provider is tested in this project. Everything but
the nets is the host pipeline the CPU backends share (`host.HostBackend`).

Memory: ONNX Runtime's CPU arena keeps the largest blocks it ever allocated,
so whole 12 MP canvases grew the process by gigabytes over a few calls. PNet
now runs on bands of bounded size, so the arena is bounded by one band's
activations and stays on: without it every band allocated and page-faulted
its ~100 MB afresh (measured: 700k page faults and twice the CPU time per
12 MP photo). Memory patterns are per input shape, and shapes vary here, so
they are off.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..nets import onnx_path
from .host import HostBackend


class OrtBackend(HostBackend):
    name = "onnxruntime"

    def __init__(self, providers: list | None = None, threads: int | None = None,
                 provider_options: list | None = None) -> None:
        super().__init__()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # three sessions run one after another: spinning threads of one would steal the cores of the next
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # shapes vary (bands, batches, photo sizes): no per-shape memory patterns
        so.enable_mem_pattern = False
        if threads:
            so.intra_op_num_threads = int(threads)
        providers = providers or ["CPUExecutionProvider"]
        _check_providers(providers)
        self.sessions = {
            k: ort.InferenceSession(str(onnx_path(k)), sess_options=so, providers=providers,
                                    provider_options=provider_options)
            for k in ("pnet", "rnet", "onet")
        }
        # read names from the graphs rather than assuming them
        self._inputs = {k: [i.name for i in s.get_inputs()] for k, s in self.sessions.items()}
        self._outputs = {k: [o.name for o in s.get_outputs()] for k, s in self.sessions.items()}
        self.providers = self.sessions["pnet"].get_providers()
        # ONNX Runtime falls back to the CPU with only a warning when a provider fails to load
        lost = [n for n in _names(providers) if n not in self.providers]
        if lost:
            raise RuntimeError(f"ONNX Runtime could not start the execution provider {', '.join(lost)} "
                               "(its libraries, e.g. CUDA/cuDNN or TensorRT, are missing or do not match)")

    def _infer(self, net: str, *arrays):
        feed = {name: np.ascontiguousarray(a, np.float32) for name, a in zip(self._inputs[net], arrays)}
        return tuple(self.sessions[net].run(self._outputs[net], feed))


def _names(providers: list) -> list[str]:
    """Provider names of a providers list, whose entries may be (name, options) pairs."""
    return [p if isinstance(p, str) else p[0] for p in providers]


def _check_providers(providers: list) -> None:
    """Unknown or unavailable providers are an error, not a silent run on the CPU."""
    available = ort.get_available_providers()
    missing = [n for n in _names(providers) if n not in available]
    if missing:
        gpu = any("CUDA" in n or "Tensorrt" in n for n in missing)
        hint = " (pip install onnxruntime-gpu for CUDA/TensorRT)" if gpu else ""
        raise ValueError(f"execution provider {', '.join(missing)} is not available in this ONNX Runtime; "
                         f"available: {', '.join(available)}{hint}")
