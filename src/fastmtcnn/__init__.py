"""fastmtcnn: the MTCNN face detector (original weights, faithful results), fast.

    >>> from fastmtcnn import MTCNN                     # doctest: +SKIP
    >>> faces = MTCNN().detect("photo.jpg")              # RGB arrays or paths
    >>> faces.boxes, faces.scores, faces.landmarks       # doctest: +SKIP

Video: `StreamDetector` gives the faces of every frame of many sources at
once (optionally tracked); `VideoJob` runs such a job with its outputs
(annotated videos, JSON Lines, a window), as `fastmtcnn video` does.

The names below are imported on first use (PEP 562): `import fastmtcnn` and
the command line's start cost nothing of OpenCV's import (~110 ms on 2
cores), so `fastmtcnn detect` can start loading its engine meanwhile.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: public name -> the module that defines it
_EXPORTS = {"MTCNN": "detector", "Detections": "detections", "Config": "config", "PRESETS": "config",
            "ImageError": "images", "read_image": "images", "StreamDetector": "streams", "VideoJob": "video"}

__all__ = ["MTCNN", "Detections", "Config", "PRESETS", "ImageError", "read_image", "StreamDetector", "VideoJob"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .config import PRESETS, Config
    from .detections import Detections
    from .detector import MTCNN
    from .images import ImageError, read_image
    from .streams import StreamDetector
    from .video import VideoJob


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastmtcnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
