"""Drop-in classes for code written against other MTCNN packages: change one import line.

    from fastmtcnn.compat.facenet_pytorch import MTCNN   # was: from facenet_pytorch import MTCNN
    from fastmtcnn.compat.mtcnn import MTCNN             # was: from mtcnn import MTCNN

Each speaks its package's API (arguments, return types, None conventions) and
runs fastmtcnn's detector underneath. The helpers here are what both share:
which engine a device name maps to, and how foreign image objects become the
RGB uint8 arrays the detector takes.
"""
from __future__ import annotations

import numpy as np

from ..images import ImageError, is_tensor

__all__ = ["engine", "rgb_array", "is_tensor", "is_pil"]


def engine(cuda_device: str | None = None):
    """Our detector on that CUDA device (the torch backend), or the default CPU backend when None."""
    from ..detector import MTCNN

    return MTCNN(device=cuda_device)


def is_pil(x) -> bool:
    return type(x).__module__.startswith("PIL.")


def rgb_array(x) -> np.ndarray:
    """A PIL image, torch/TensorFlow tensor or array -> numpy array the detector takes.

    PIL images in other modes (L, RGBA, P) are converted to RGB. Float pixels
    are read on the 0..255 scale, as both facenet-pytorch and mtcnn read them
    (our own API reads floats <= 1 as 0..1), and rounded to uint8.
    """
    if is_pil(x):
        return np.asarray(x if x.mode == "RGB" else x.convert("RGB"))
    if is_tensor(x):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ImageError("image has NaN or infinite values")
        a = np.clip(a, 0, 255).round().astype(np.uint8)
    return a
