"""Drawing results on images: boxes, scores, landmarks, an FPS line."""
from __future__ import annotations

import cv2
import numpy as np

from .detections import Detections

# one colour per landmark: eyes, nose, mouth corners
_LM_COLOURS = [(255, 64, 64), (255, 64, 64), (64, 255, 64), (64, 128, 255), (64, 128, 255)]


def draw(image: np.ndarray, faces: Detections, fps: float | None = None, *,
         colour: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
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
    if fps is not None:
        cv2.putText(out, f"{fps:.1f} FPS", (8, 12 + 14 * t), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * t,
                    (255, 255, 0), t, cv2.LINE_AA)
    return out


def save_rgb(path, image: np.ndarray) -> None:
    """Write an RGB image with OpenCV (which wants BGR); raise OSError when it cannot."""
    ok = cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot write {path}")
