"""Backends: where arrays live and how the three nets run.

onnxruntime (default, CPU; CUDA/TensorRT execution providers pass through)
and torch (CPU or CUDA, optional extra). Both run the same pipeline.
"""
from __future__ import annotations

BACKENDS = ("onnxruntime", "torch")


def create(name: str, **options):
    """Build a backend by name; options go to its constructor."""
    if name in ("onnxruntime", "ort"):
        from .onnxruntime import OrtBackend

        return OrtBackend(**options)
    if name == "torch":
        try:
            from .torch import TorchBackend
        except ImportError as e:
            raise RuntimeError(f"the torch backend needs PyTorch: pip install 'fastmtcnn[gpu]' ({e})") from None
        return TorchBackend(**options)
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
