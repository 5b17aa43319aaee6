"""fastmtcnn: the MTCNN face detector (original weights, faithful results), fast.

    >>> from fastmtcnn import MTCNN                     # doctest: +SKIP
    >>> faces = MTCNN().detect("photo.jpg")              # RGB arrays or paths
    >>> faces.boxes, faces.scores, faces.landmarks       # doctest: +SKIP

Video: `StreamDetector` gives the faces of every frame of many sources at
once (optionally tracked); `VideoJob` runs such a job with its outputs
(annotated videos, JSON Lines, a window), as `fastmtcnn video` does.
"""
from .config import PRESETS, Config
from .detections import Detections
from .detector import MTCNN
from .images import ImageError, read_image
from .streams import StreamDetector
from .video import VideoJob

__all__ = ["MTCNN", "Detections", "Config", "PRESETS", "ImageError", "read_image", "StreamDetector", "VideoJob"]
__version__ = "0.1.0"
