"""Drawing results on images: boxes, scores, landmarks, and a video's status panel (FPS, mode)."""
from __future__ import annotations

import cv2
import numpy as np

from .detections import Detections

# one colour per landmark: eyes, nose, mouth corners
_LM_COLOURS = [(255, 64, 64), (255, 64, 64), (64, 255, 64), (64, 128, 255), (64, 128, 255)]


def draw(image: np.ndarray, faces: Detections, *, colour: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """A copy of an RGB image with faces drawn (RGB colours; line width scales with image size)."""
    out = np.ascontiguousarray(image.copy())
    t = max(1, round(max(out.shape[:2]) / 500))
    for box, score, lm in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, t, cv2.LINE_AA)
        label = f"{score:.2f}"
        cv2.putText(out, label, (x1, max(0, y1 - 4 * t)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * t, colour, t, cv2.LINE_AA)
        for (x, y), c in zip(lm, _LM_COLOURS):
            cv2.circle(out, (int(round(x)), int(round(y))), t + 1, c, -1, cv2.LINE_AA)
    return out


def annotate(image: np.ndarray, faces: Detections, fps: float | None = None, mode: str | None = None) -> np.ndarray:
    """A video frame as the live view and annotated videos show it: `draw`'s faces, and a status panel
    with the current FPS and the mode ("track" / "full"), darkened so that it reads on any frame."""
    out = draw(image, faces)
    text = "  ".join(t for t in (f"{fps:.1f} FPS" if fps else None, mode) if t)
    if text:
        t = max(1, round(max(out.shape[:2]) / 500))
        font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.5 * t
        (tw, th), base = cv2.getTextSize(text, font, scale, t)
        pad = 4 * t
        x1, y1 = min(out.shape[1], tw + 2 * pad), min(out.shape[0], th + base + 2 * pad)
        out[:y1, :x1] = (out[:y1, :x1] * 0.4).astype(np.uint8)
        cv2.putText(out, text, (pad, pad + th), font, scale, (255, 255, 0), t, cv2.LINE_AA)
    return out


def save_rgb(path, image: np.ndarray) -> None:
    """Write an RGB image with OpenCV (which wants BGR); raise OSError when it cannot."""
    ok = cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot write {path}")
