"""The result type: parallel arrays of boxes, scores and landmarks."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Detections:
    """Faces found in one image, in input pixel coordinates.

    boxes: (n, 4) float32 x1, y1, x2, y2; scores: (n,) float32 ONet
    probabilities; landmarks: (n, 5, 2) float32 (x, y) of the left eye,
    right eye, nose, left and right mouth corners as seen in the image.

    >>> d = Detections.empty()
    >>> len(d), d.boxes.shape
    (0, (0, 4))
    >>> d2 = Detections(np.array([[0, 0, 10, 10]]), np.array([0.9]), np.zeros((1, 5, 2)))
    >>> len(d2[d2.scores > 0.5])
    1
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        b = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        s = np.asarray(self.scores, np.float32).reshape(-1)
        lm = np.asarray(self.landmarks, np.float32).reshape(-1, 5, 2)
        if not (len(b) == len(s) == len(lm)):
            raise ValueError(f"boxes ({len(b)}), scores ({len(s)}) and landmarks ({len(lm)}) differ in length")
        object.__setattr__(self, "boxes", b)
        object.__setattr__(self, "scores", s)
        object.__setattr__(self, "landmarks", lm)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: Any) -> "Detections":
        """Select faces with a boolean mask, an index array or a slice."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        return Detections(self.boxes[index], self.scores[index], self.landmarks[index])

    def __iter__(self):
        for i in range(len(self)):
            yield self.boxes[i], float(self.scores[i]), self.landmarks[i]

    def to_list(self) -> list[dict]:
        """JSON-ready faces: [{"box": [x1, y1, x2, y2], "score": s, "landmarks": [[x, y] x 5]}]."""
        return [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 6),
                 "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in lm]}
                for b, s, lm in self]

    def to_json(self) -> str:
        return json.dumps(self.to_list())

    @classmethod
    def from_list(cls, faces: list[dict]) -> "Detections":
        if not faces:
            return cls.empty()
        return cls(np.array([f["box"] for f in faces]), np.array([f["score"] for f in faces]),
                   np.array([f["landmarks"] for f in faces]))

    def to_supervision(self):
        """As a `supervision.Detections` (needs `pip install 'fastmtcnn[supervision]'`); landmarks go to `data`."""
        try:
            import supervision as sv
        except ModuleNotFoundError as e:
            if e.name != "supervision":
                raise  # installed, but one of its own imports failed: show that
            raise ModuleNotFoundError("to_supervision() needs supervision: pip install 'fastmtcnn[supervision]'",
                                      name="supervision") from None

        return sv.Detections(xyxy=self.boxes.astype(np.float32), confidence=self.scores,
                             class_id=np.zeros(len(self), int), data={"landmarks": self.landmarks})
