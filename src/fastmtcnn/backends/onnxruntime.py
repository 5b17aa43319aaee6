"""ONNX Runtime backend: numpy arrays on the host, the three nets as ONNX graphs.

The graphs are the shipped ones (pnet with dynamic N x H x W, rnet/onet with
a dynamic batch). `providers` passes straight to ONNX Runtime, so the CUDA
and TensorRT execution providers work where a user has onnxruntime-gpu and
TensorRT; only the CPU provider is tested in this project.
"""
from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort

from .. import boxes as bx
from ..nets import onnx_path


class OrtBackend:
    name = "onnxruntime"
    canvas = crops = front = detect_frames = None  # no fast paths: the pipeline's own steps

    def __init__(self, providers: list | None = None, threads: int | None = None,
                 provider_options: list | None = None) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # three sessions run one after another: spinning threads of one would steal the cores of the next
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
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

    def asarray(self, x) -> np.ndarray:
        return np.asarray(x)

    def frames(self, images) -> np.ndarray:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return np.ascontiguousarray(images)
        return np.stack(images)

    def integral(self, frames: np.ndarray) -> np.ndarray:
        # OpenCV's integral is one fast pass per frame; exact int32 sums
        n, h, w, _ = frames.shape
        out = np.empty((n, h + 1, w + 1, 3), np.int32)
        for i in range(n):
            out[i] = cv2.integral(frames[i], sdepth=cv2.CV_32S)
        return out

    def _run(self, key: str, *arrays):
        feed = {name: np.ascontiguousarray(a, np.float32) for name, a in zip(self._inputs[key], arrays)}
        return tuple(self.sessions[key].run(self._outputs[key], feed))

    def pnet(self, x, mask):
        return self._run("pnet", x, mask)

    def rnet(self, x):
        return self._run("rnet", x)

    def onet(self, x):
        return self._run("onet", x)

    def nms(self, boxes, scores, threshold, groups=None, mode="union", plus_one=False):
        return bx.nms(boxes, scores, threshold, groups, mode, plus_one)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def synchronize(self) -> None:
        pass


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
