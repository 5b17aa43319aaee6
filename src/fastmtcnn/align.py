"""Face crops for recognition models: 5-point aligned crops and plain margin crops.

Aligned crops map the five landmarks onto the standard 112x112 template
(the one ArcFace/InsightFace models are trained on) with the least-squares
similarity transform (rotation, uniform scale, shift: no shear, so faces are
not distorted). Margin crops are the detector box squared, widened by a
margin and resized, for models trained on MTCNN crops (e.g. FaceNet).
"""
from __future__ import annotations

import cv2
import numpy as np

#: Landmarks (left eye, right eye, nose, mouth left, mouth right) in a 112x112 crop.
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def template(size: int = 112) -> np.ndarray:
    """The 5-point template for a size x size crop (the 112 template scaled)."""
    if int(size) < 8:
        raise ValueError(f"crop size must be >= 8 pixels, got {size}")
    return TEMPLATE_112 * np.float32(int(size) / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (2x3) taking points src (k, 2) onto dst (k, 2).

    OpenCV's estimator with every point an inlier, refined by Levenberg-Marquardt,
    is the plain least-squares (Umeyama) fit.
    """
    src = np.asarray(src, np.float32).reshape(-1, 2)
    dst = np.asarray(dst, np.float32).reshape(-1, 2)
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks must be finite")
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1e9,
                                       maxIters=1, refineIters=50)
    if m is None:
        raise ValueError("landmarks are degenerate (all in one place)")
    return m.astype(np.float32)


def align_faces(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Aligned crops (n, size, size, 3) of an RGB image and their transforms (n, 2, 3).

    landmarks: (n, 5, 2) as `Detections.landmarks`. Parts of a crop outside the
    image are black.
    """
    lms = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
    dst = template(size)
    mats = np.zeros((len(lms), 2, 3), np.float32)
    crops = np.zeros((len(lms), int(size), int(size), 3), np.uint8)
    for i, lm in enumerate(lms):
        mats[i] = similarity_transform(lm, dst)
        crops[i] = cv2.warpAffine(image, mats[i], (int(size), int(size)), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return crops, mats


def margin_windows(boxes: np.ndarray, margin: float = 0.2) -> np.ndarray:
    """Integer square windows (n, 4) [x0, y0, x1, y1] around boxes, side grown by `margin` (fraction)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * (1 + margin)
    side = np.maximum(np.round(side), 1)
    x0, y0 = np.round(cx - side / 2), np.round(cy - side / 2)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int64)


def margin_crops(image: np.ndarray, boxes: np.ndarray, size: int = 160, margin: float = 0.2) -> np.ndarray:
    """Square crops (n, size, size, 3) around boxes, widened by margin; outside the image is black."""
    if int(size) < 8:
        raise ValueError(f"crop size must be >= 8 pixels, got {size}")
    H, W = image.shape[:2]
    wins = margin_windows(boxes, margin)
    out = np.zeros((len(wins), int(size), int(size), 3), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(wins):
        crop = image[max(y0, 0):min(y1, H), max(x0, 0):min(x1, W)]
        if crop.size == 0:
            continue  # box entirely outside the image: leave black
        crop = cv2.copyMakeBorder(crop, int(max(0, -y0)), int(max(0, y1 - H)), int(max(0, -x0)),
                                  int(max(0, x1 - W)), cv2.BORDER_CONSTANT, value=0)
        interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(crop, (int(size), int(size)), interpolation=interp)
    return out
