"""Backends: where arrays live and how the three nets run.

openvino (CPU), onnxruntime (CPU; CUDA/TensorRT execution providers pass
through) and torch (CPU or CUDA, optional extra). All run the same pipeline;
the two CPU engines share the host code of `host.HostBackend`.
"""
from __future__ import annotations

import importlib.util

BACKENDS = ("openvino", "onnxruntime", "torch")

#: The CPU default, chosen by a side-by-side measurement (README, "Benchmarks").
DEFAULT = "openvino"


def cpu_default() -> str:
    """`DEFAULT` where OpenVINO is installed, else ONNX Runtime (the same graphs, the same faces).

    Why: OpenVINO is a core dependency, but some platforms and images (our
    GPU test machine among them) have no OpenVINO, and a user who did not
    name an engine should get faces rather than an error. Looked up without
    importing it (an import costs 70-160 ms; `create` pays it once).
    """
    try:
        return DEFAULT if importlib.util.find_spec("openvino") is not None else "onnxruntime"
    except (ImportError, ValueError):
        return "onnxruntime"


def create(name: str, **options):
    """Build a backend by name; options go to its constructor."""
    if name in ("onnxruntime", "ort"):
        try:
            from .onnxruntime import OrtBackend
        except ImportError as e:
            raise RuntimeError(f"the onnxruntime backend needs ONNX Runtime: pip install onnxruntime ({e})") from None
        return OrtBackend(**options)
    if name in ("openvino", "ov"):
        try:
            from .openvino import OpenVinoBackend
        except ImportError as e:
            raise RuntimeError(f"the openvino backend needs OpenVINO: pip install openvino, or use the onnxruntime "
                               f"backend ({e})") from None
        return OpenVinoBackend(**options)
    if name == "torch":
        try:
            from .torch import TorchBackend
        except ImportError as e:
            raise RuntimeError(f"the torch backend needs PyTorch: pip install 'fastmtcnn[gpu]' ({e})") from None
        return TorchBackend(**options)
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
