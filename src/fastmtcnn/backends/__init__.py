"""Backends: where arrays live and how the three nets run.

openvino (CPU), onnxruntime (CPU; CUDA/TensorRT execution providers pass
through) and torch (CPU or CUDA, optional extra). All run the same pipeline;
the two CPU engines share the host code of `host.HostBackend`.
"""
from __future__ import annotations

BACKENDS = ("openvino", "onnxruntime", "torch")

#: The CPU default, chosen by a side-by-side measurement (README, "Benchmarks").
DEFAULT = "openvino"


def create(name: str, **options):
    """Build a backend by name; options go to its constructor."""
    if name in ("onnxruntime", "ort"):
        from .onnxruntime import OrtBackend

        return OrtBackend(**options)
    if name in ("openvino", "ov"):
        from .openvino import OpenVinoBackend

        return OpenVinoBackend(**options)
    if name == "torch":
        try:
            from .torch import TorchBackend
        except ImportError as e:
            raise RuntimeError(f"the torch backend needs PyTorch: pip install 'fastmtcnn[gpu]' ({e})") from None
        return TorchBackend(**options)
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
