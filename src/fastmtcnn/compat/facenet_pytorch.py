"""facenet-pytorch 2.6.0's `MTCNN`, on fastmtcnn's detector: change the import, keep the code.

    from fastmtcnn.compat.facenet_pytorch import MTCNN   # was: from facenet_pytorch import MTCNN

    mtcnn = MTCNN(image_size=160, margin=0, keep_all=True)
    boxes, probs, points = mtcnn.detect(img, landmarks=True)
    faces = mtcnn(img, save_path="face.png")              # (n, 3, 160, 160) float tensor

Same arguments and defaults, same detections (fastmtcnn reproduces
facenet-pytorch's cascade), same return types, shapes and None conventions
for PIL images, RGB numpy arrays, torch tensors and lists or batches of them,
and the same face crops (`extract_face`: the margin, OpenCV area resize for
arrays, torch area interpolation for tensors, PIL bilinear for PIL images).
torch is imported only where tensors are returned (forward, extract,
extract_face). Where facenet-pytorch fails we do not (see docs/compat.md):
lists of images of different sizes, grayscale/RGBA PIL images, save_path with
tensor input; and "largest_over_threshold" returns the probability and
landmarks of the box it picks.
"""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

from . import engine, is_pil, is_tensor, rgb_array

__all__ = ["MTCNN", "extract_face", "fixed_image_standardization"]

SELECTION_METHODS = ("probability", "largest", "largest_over_threshold", "center_weighted_size")


def _torch():
    try:
        import torch
    except ModuleNotFoundError:
        raise ModuleNotFoundError("face crops are torch tensors, as in facenet-pytorch: pip install torch "
                                  "(detect() works without it)", name="torch") from None
    return torch


def _is_batch(img) -> bool:
    """facenet-pytorch's rule: a list/tuple, or a 4-D array or tensor, is a batch."""
    return isinstance(img, (list, tuple)) or ((isinstance(img, np.ndarray) or is_tensor(img)) and img.ndim == 4)


def _size(img) -> tuple[int, int]:
    """(width, height) of a PIL image, an (H, W, C) array or tensor."""
    return tuple(img.size) if is_pil(img) else (int(img.shape[1]), int(img.shape[0]))


def _as_rgb_pil(img):
    """PIL images in other modes as RGB (facenet-pytorch fails on them); everything else unchanged."""
    if isinstance(img, (list, tuple)):
        return type(img)(_as_rgb_pil(im) for im in img)
    return img.convert("RGB") if is_pil(img) and img.mode != "RGB" else img


def _stack(items: list) -> np.ndarray:
    """np.array of per-image results; an object array where they are ragged (facenet-pytorch raises there)."""
    try:
        return np.array(items)
    except ValueError:
        out = np.empty(len(items), dtype=object)
        for i, v in enumerate(items):
            out[i] = v
        return out


class MTCNN:
    """facenet-pytorch's MTCNN interface; see the module docstring and facenet-pytorch's own docs.

    device: a CUDA device ("cuda", "cuda:1", torch.device) runs fastmtcnn's
    torch backend there; anything else, fastmtcnn's default CPU backend.
    """

    def __init__(self, image_size: int = 160, margin: int = 0, min_face_size: float = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709, post_process: bool = True,
                 select_largest: bool = True, selection_method: str | None = None, keep_all: bool = False,
                 device=None) -> None:
        self.image_size = image_size
        self.margin = margin
        self.min_face_size = min_face_size
        self.thresholds = list(thresholds)
        self.factor = factor
        self.post_process = post_process
        self.select_largest = select_largest
        self.keep_all = keep_all
        self.selection_method = selection_method or ("largest" if select_largest else "probability")
        if self.selection_method not in SELECTION_METHODS:
            raise ValueError(f"selection_method must be one of {SELECTION_METHODS}, got {selection_method!r}")
        self.to(device)

    def to(self, device) -> "MTCNN":
        """Move to a device, as nn.Module.to does: a CUDA device means fastmtcnn's torch backend."""
        name = "cpu" if device is None else str(device)
        self.device = device if device is not None else "cpu"
        self.detector = engine(name if name.startswith("cuda") else None)
        return self

    def eval(self) -> "MTCNN":
        return self  # inference only: there is no training mode

    def __repr__(self) -> str:
        return (f"MTCNN(image_size={self.image_size}, margin={self.margin}, min_face_size={self.min_face_size}, "
                f"thresholds={self.thresholds}, factor={self.factor}, keep_all={self.keep_all}, "
                f"selection_method={self.selection_method!r}, engine={self.detector!r})")

    # ------------------------------------------------------------ detection

    def _detections(self, img) -> list:
        """Our Detections for each image of img (one image or a batch)."""
        det = self.detector
        # attributes are read at each call, as facenet-pytorch does (users change thresholds in place)
        det.config = det.config.replace(minsize=float(self.min_face_size), factor=float(self.factor),
                                        thresholds=tuple(float(t) for t in self.thresholds))
        if is_tensor(img) and det.backend.name == "torch":  # frames stay on the GPU
            t = img if img.ndim == 4 else img.unsqueeze(0)
            if t.dtype.is_floating_point:
                t = t.clamp(0, 255).round()
            return det.detect_batch(t.to(det.backend.device).byte())
        if not _is_batch(img):
            return det.detect_batch([rgb_array(img)])
        if is_tensor(img) or (isinstance(img, np.ndarray) and img.dtype != np.uint8):
            img = rgb_array(img)
        return det.detect_batch(img if isinstance(img, np.ndarray) else [rgb_array(im) for im in img])

    def detect(self, img, landmarks: bool = False):
        """(boxes, probs[, points]) as facenet-pytorch returns them.

        One image: boxes (n, 4), probs (n,), points (n, 5, 2) as object arrays,
        or (None, array([None]), None) without a face. A batch: one entry per
        image. Largest face first when select_largest, else most probable first.
        """
        boxes, probs, points = [], [], []
        for d in self._detections(img):
            if not len(d):
                boxes.append(None)
                probs.append([None])
                points.append(None)
                continue
            b = d.boxes
            if self.select_largest:
                order = np.argsort((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[::-1]
            else:  # facenet-pytorch's last NMS keeps the faces most probable first
                order = np.argsort(-d.scores, kind="stable")
            boxes.append(b[order])
            probs.append(d.scores[order])
            points.append(d.landmarks[order])
        boxes, probs, points = (np.array(v, dtype=object) for v in (boxes, probs, points))
        if not _is_batch(img):
            boxes, probs, points = boxes[0], probs[0], points[0]
        return (boxes, probs, points) if landmarks else (boxes, probs)

    def select_boxes(self, all_boxes, all_probs, all_points, imgs, method: str = "probability",
                     threshold: float = 0.9, center_weight: float = 2.0):
        """One face per image by a heuristic: "probability", "largest", "largest_over_threshold"
        (largest with prob > threshold) or "center_weighted_size" (area - center_weight x squared
        distance of the box centre from the image centre)."""
        batch = _is_batch(imgs)
        if not batch:
            imgs, all_boxes, all_probs, all_points = [imgs], [all_boxes], [all_probs], [all_points]
        sel_boxes, sel_probs, sel_points = [], [], []
        for boxes, points, probs, img in zip(all_boxes, all_points, all_probs, imgs):
            if boxes is not None:
                boxes, probs, points = np.array(boxes), np.array(probs), np.array(points)
                if method == "largest_over_threshold":
                    keep = probs > threshold
                    boxes, probs, points = boxes[keep], probs[keep], points[keep]
            if boxes is None or not len(boxes):
                sel_boxes.append(None)
                sel_probs.append([None])
                sel_points.append(None)
                continue
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            if method in ("largest", "largest_over_threshold"):
                order = np.argsort(area)[::-1]
            elif method == "probability":
                order = np.argsort(probs)[::-1]
            elif method == "center_weighted_size":
                w, h = _size(img)
                centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
                offset2 = ((centres - np.array([w / 2, h / 2])) ** 2.0).sum(axis=1)
                order = np.argsort(area - offset2 * center_weight)[::-1]
            else:
                raise ValueError(f"method must be one of {SELECTION_METHODS}, got {method!r}")
            sel_boxes.append(boxes[order][[0]])
            sel_probs.append(probs[order][[0]])
            sel_points.append(points[order][[0]])
        if batch:
            return _stack(sel_boxes), _stack(sel_probs), _stack(sel_points)
        return sel_boxes[0], sel_probs[0][0], sel_points[0]

    # ------------------------------------------------------------ face crops

    def forward(self, img, save_path: str | list | None = None, return_prob: bool = False):
        """Face crops as tensors: (3, S, S) for the selected face, (n, 3, S, S) with keep_all,
        None without a face; a list of those for a batch. With return_prob, also the probabilities."""
        img = _as_rgb_pil(img)
        boxes, probs, points = self.detect(img, landmarks=True)
        if not self.keep_all:
            boxes, probs, points = self.select_boxes(boxes, probs, points, img, method=self.selection_method)
        faces = self.extract(img, boxes, save_path)
        return (faces, probs) if return_prob else faces

    __call__ = forward

    def extract(self, img, batch_boxes, save_path):
        """Crop the given boxes (detect()'s layout) from img; see forward()."""
        batch = _is_batch(img)
        if not batch:
            img, batch_boxes = [img], [batch_boxes]
        if save_path is None:
            save_path = [None] * len(img)
        elif isinstance(save_path, str):
            save_path = [save_path]
        faces = []
        for im, boxes, path in zip(img, batch_boxes, save_path):
            if boxes is None:
                faces.append(None)
                continue
            if not self.keep_all:
                boxes = boxes[[0]]
            crops = []
            for i, box in enumerate(boxes):
                face_path = path
                if path is not None and i > 0:  # face.png, face_2.png, face_3.png...
                    stem, ext = os.path.splitext(path)
                    face_path = f"{stem}_{i + 1}{ext}"
                face = extract_face(im, box, self.image_size, self.margin, face_path)
                crops.append(fixed_image_standardization(face) if self.post_process else face)
            faces.append(_torch().stack(crops) if self.keep_all else crops[0])
        return faces if batch else faces[0]


# ------------------------------------------------------------------ functions


def fixed_image_standardization(image_tensor):
    """Pixel values 0..255 -> about -1..1, as facenet-pytorch's InceptionResnetV1 expects."""
    return (image_tensor - 127.5) / 128.0


def extract_face(img, box, image_size: int = 160, margin: int = 0, save_path: str | None = None):
    """The face in box, grown by margin (in pixels of the output), as a (3, S, S) float tensor of 0..255.

    Resized as facenet-pytorch does for each input type: OpenCV area
    interpolation for numpy arrays, torch area interpolation (truncated to
    uint8) for tensors, PIL bilinear for PIL images. save_path writes the crop.
    """
    torch = _torch()
    mx = margin * (box[2] - box[0]) / (image_size - margin)
    my = margin * (box[3] - box[1]) / (image_size - margin)
    w, h = _size(img)
    x1, y1 = int(max(box[0] - mx / 2, 0)), int(max(box[1] - my / 2, 0))
    x2, y2 = int(min(box[2] + mx / 2, w)), int(min(box[3] + my / 2, h))
    if is_pil(img):
        from PIL import Image

        face = img.crop((x1, y1, x2, y2)).resize((image_size, image_size), Image.BILINEAR)
    elif is_tensor(img):
        patch = img[y1:y2, x1:x2].permute(2, 0, 1).unsqueeze(0).float()
        size = (image_size, image_size)
        face = torch.nn.functional.interpolate(patch, size=size, mode="area").byte()[0].permute(1, 2, 0).cpu().numpy()
    else:
        face = cv2.resize(img[y1:y2, x1:x2], (image_size, image_size), interpolation=cv2.INTER_AREA)
    if save_path is not None:
        _save(face, save_path)
    a = np.asarray(face, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray((a[:, :, None] if a.ndim == 2 else a).transpose(2, 0, 1)))


def _save(face, path: str) -> None:
    from ..draw import save_rgb

    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    if is_pil(face):
        face.save(path)
    else:
        save_rgb(path, np.asarray(face))
