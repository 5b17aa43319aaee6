"""fastmtcnn: the MTCNN face detector (original weights, faithful results), fast.

    >>> from fastmtcnn import MTCNN                     # doctest: +SKIP
    >>> faces = MTCNN().detect("photo.jpg")              # RGB arrays or paths
    >>> faces.boxes, faces.scores, faces.landmarks       # doctest: +SKIP
"""
from .config import PRESETS, Config
from .detections import Detections
from .detector import MTCNN
from .images import ImageError, read_image
from .streams import StreamDetector

__all__ = ["MTCNN", "Detections", "Config", "PRESETS", "ImageError", "read_image", "StreamDetector"]
__version__ = "0.1.0"
