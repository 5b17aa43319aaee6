"""The `mtcnn` package's (v1) `MTCNN.detect_faces`, on fastmtcnn's detector; no TensorFlow needed.

    from fastmtcnn.compat.mtcnn import MTCNN             # was: from mtcnn import MTCNN

    detector = MTCNN()
    faces = detector.detect_faces(rgb_image)             # or a path, encoded bytes, or a list of these
    # [{"box": [x, y, w, h], "confidence": 0.99..., "keypoints": {"nose": [x, y], ...}}]

The output has mtcnn's layout and types: boxes rounded to Python ints,
confidence a numpy float64, keypoints numpy ints in mtcnn's key order, faces
best first; output_type="numpy" gives its (n, 16) float rows. Its knobs map to
ours: min_face_size and min_size set our minsize (min_face_size x 12 /
min_size), scale_factor our factor, threshold_pnet/rnet/onet our thresholds
(mtcnn's defaults: 0.6, 0.7, 0.8). The detections are the original MTCNN's
(facenet-pytorch's), which mtcnn's own TensorFlow port does not reproduce
exactly: docs/compat.md says where they differ.
"""
from __future__ import annotations

import numpy as np

from ..images import ImageError, decode_image, read_image
from . import engine, rgb_array

__all__ = ["MTCNN"]

STAGES = ("face_and_landmarks_detection", "face_detection_only")
#: mtcnn's stage keyword arguments and their defaults
DEFAULTS = {"min_face_size": 20, "min_size": 12, "scale_factor": 0.709,
            "threshold_pnet": 0.6, "threshold_rnet": 0.7, "threshold_onet": 0.8}
#: NMS overlaps of the original release; mtcnn lets them be changed, our cascade does not
FIXED_NMS = {"nms_pnet1": 0.5, "nms_pnet2": 0.7, "nms_rnet": 0.7, "nms_onet": 0.7}
JUSTIFICATIONS = ("center", "top", "topleft", "topright", "bottom", "bottomleft", "bottomright", "left", "right")
#: mtcnn's keypoint names -> index of the landmark (ours: left eye, right eye, nose, mouth left, mouth right)
KEYPOINTS = {"nose": 2, "mouth_right": 4, "right_eye": 1, "left_eye": 0, "mouth_left": 3}


class MTCNN:
    """mtcnn's detector interface.

    stages: "face_and_landmarks_detection" (default) or "face_detection_only"
    (the same detections, without keypoints: fastmtcnn always runs the whole
    cascade). device: "CPU:0" (default: fastmtcnn's CPU backend) or "GPU:n"
    (fastmtcnn's torch backend on cuda:n).
    """

    def __init__(self, stages: str = "face_and_landmarks_detection", device: str = "CPU:0") -> None:
        if not isinstance(stages, str) or stages not in STAGES:
            raise ValueError(f"stages must be one of {STAGES} (custom stage objects are mtcnn's own), got {stages!r}")
        kind, _, index = str(device).upper().partition(":")
        if kind not in ("CPU", "GPU"):
            raise ValueError(f"device must look like 'CPU:0' or 'GPU:0', got {device!r}")
        self._stages = stages
        self._device = device
        self._detector = engine(f"cuda:{index or 0}" if kind == "GPU" else None)
        self._config = self._detector.config

    @property
    def device(self) -> str:
        return self._device

    def predict(self, image, fit_to_image: bool = True, limit_boundaries_landmarks: bool = False,
                box_format: str = "xywh", output_type: str = "json", postprocess: bool = True, **kwargs):
        """Alias of detect_faces()."""
        return self.detect_faces(image, fit_to_image=fit_to_image,
                                 limit_boundaries_landmarks=limit_boundaries_landmarks, box_format=box_format,
                                 output_type=output_type, postprocess=postprocess, **kwargs)

    def detect_faces(self, image, fit_to_image: bool = True, limit_boundaries_landmarks: bool = False,
                     box_format: str = "xywh", output_type: str = "json", postprocess: bool = True,
                     batch_stack_justification: str = "center", **kwargs):
        """Faces in an image (RGB array, file path, encoded bytes, tensor) or a list of them.

        json: a list of {"box", "confidence", "keypoints"} per image (a list of
        such lists for a list input). numpy: one (n, 16) float array for all
        images, rows [image index, box (4), confidence, 5 keypoint x, 5 keypoint y].
        fit_to_image (with postprocess) clips boxes, and with
        limit_boundaries_landmarks keypoints, to the image. Images of different
        sizes are not padded here, so batch_stack_justification changes nothing.
        """
        if box_format not in ("xywh", "xyxy"):
            raise ValueError(f"box_format must be 'xywh' or 'xyxy', got {box_format!r}")
        if output_type not in ("json", "numpy"):
            raise ValueError(f"output_type must be 'json' or 'numpy', got {output_type!r}")
        if batch_stack_justification not in JUSTIFICATIONS:
            raise ValueError(f"batch_stack_justification must be one of {JUSTIFICATIONS}, "
                             f"got {batch_stack_justification!r}")
        self._detector.config = self._settings(kwargs)
        batch = isinstance(image, list)
        images = [_load(im) for im in (image if batch else [image])]
        if not images:
            raise ValueError("detect_faces() got an empty list of images")
        rows = [_rows(i, d, im.shape[:2], postprocess and fit_to_image,
                      postprocess and fit_to_image and limit_boundaries_landmarks)
                for i, (im, d) in enumerate(zip(images, self._detector.detect_batch(images)))]
        if self._stages == "face_detection_only":
            rows = [r[:, :6] for r in rows]
        if output_type == "numpy":
            out = np.concatenate(rows, axis=0)
            if box_format == "xywh":
                out[:, 3:5] -= out[:, 1:3]
            return out
        faces = [[_face_dict(r, box_format == "xywh") for r in image_rows] for image_rows in rows]
        return faces if batch else faces[0]

    def _settings(self, kwargs: dict):
        """mtcnn's stage keyword arguments -> our Config (unknown names are an error, not ignored)."""
        unknown = sorted(set(kwargs) - set(DEFAULTS) - set(FIXED_NMS))
        if unknown:
            raise TypeError(f"detect_faces() got unexpected keyword arguments {unknown}; "
                            f"it takes {sorted(DEFAULTS)} (and the NMS overlaps {sorted(FIXED_NMS)})")
        for name, value in FIXED_NMS.items():
            if name in kwargs and float(kwargs[name]) != value:
                raise ValueError(f"{name}={kwargs[name]}: fastmtcnn runs the original MTCNN's NMS overlaps "
                                 f"({', '.join(f'{k} {v}' for k, v in FIXED_NMS.items())}), which cannot be changed")
        o = {**DEFAULTS, **kwargs}
        if float(o["min_size"]) <= 0:
            raise ValueError(f"min_size must be > 0, got {o['min_size']}")
        # mtcnn scales the image by min_size / min_face_size first; ours by 12 / minsize
        return self._config.replace(minsize=float(o["min_face_size"]) * 12.0 / float(o["min_size"]),
                                    factor=float(o["scale_factor"]),
                                    thresholds=(float(o["threshold_pnet"]), float(o["threshold_rnet"]),
                                                float(o["threshold_onet"])))


def _load(image) -> np.ndarray:
    """mtcnn's inputs -> RGB uint8: a path, encoded image bytes, or an array/tensor (taken as RGB)."""
    if isinstance(image, str):
        return read_image(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(image)
    a = rgb_array(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ImageError(f"expected an H x W x 3 RGB image, got shape {a.shape}")
    return a


def _rows(index: int, faces, hw: tuple[int, int], fit: bool, fit_landmarks: bool) -> np.ndarray:
    """One image's faces as mtcnn's float rows, best first, clipped to [0, size - 1] as it clips."""
    order = np.argsort(-faces.scores, kind="stable")
    lm = faces.landmarks[order].astype(np.float64)
    rows = np.column_stack([np.full(len(order), float(index)), faces.boxes[order].astype(np.float64),
                            faces.scores[order].astype(np.float64), lm[:, :, 0], lm[:, :, 1]]).reshape(-1, 16)
    h, w = hw
    if fit:
        rows[:, [1, 3]] = np.clip(rows[:, [1, 3]], 0, w - 1)
        rows[:, [2, 4]] = np.clip(rows[:, [2, 4]], 0, h - 1)
    if fit_landmarks:
        rows[:, 6:11] = np.clip(rows[:, 6:11], 0, w - 1)
        rows[:, 11:16] = np.clip(rows[:, 11:16], 0, h - 1)
    return rows


def _face_dict(row: np.ndarray, xywh: bool) -> dict:
    """One row as mtcnn's dict: the box's corner and size rounded after subtracting, as mtcnn does."""
    x1, y1, x2, y2 = row[1:5]
    w, h = x2 - x1, y2 - y1
    box = [x1, y1, w, h] if xywh else [x1, y1, x1 + w, y1 + h]
    face = {"box": np.asarray(box).round().astype(int).tolist(), "confidence": row[5]}
    if len(row) > 6:
        k = row.round().astype(int)
        face["keypoints"] = {name: [k[6 + i], k[11 + i]] for name, i in KEYPOINTS.items()}
    return face
