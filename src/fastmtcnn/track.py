"""Tracking mode: re-find last frame's faces with RNet/ONet only, skipping PNet.

PNet over the whole pyramid is most of a frame's cost. Between two frames
of a video the faces barely move, so the previous frame's boxes, squared and
widened a little (and jittered by a fraction of their side to cover motion),
go straight into the RNet stage as candidates: RNet's and ONet's box
regression pull them back onto the faces. The full detector still runs every
`every` frames (to pick up faces that enter) and at once whenever a tracked
face is lost, so a face is missed only while it is new and the next full
frame has not come yet.

Several videos are tracked together by `track_many`: each video keeps its own
`Tracker`, and the frames of different videos that need the full detector at
the same step share one detector call (`streams.StreamDetector(track_every=K)`).
"""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import boxes as bx
from .detections import Detections
from .images import as_image, is_tensor
from .pipeline import rnet_onet

#: candidate windows per previous face: (scale of the squared box, x shift, y shift in units of its side).
#: The squared box alone tracks slow motion; the wider and shifted ones keep fast pans and zooms
#: tracked (measured in docs/video.md); each costs one RNet crop, and RNet's NMS merges them.
DEFAULT_JITTER: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0), (1.25, 0.0, 0.0), (1.0, -0.15, 0.0), (1.0, 0.15, 0.0), (1.0, 0.0, -0.15), (1.0, 0.0, 0.15))


def candidate_boxes(prev_boxes: np.ndarray, jitter=DEFAULT_JITTER) -> np.ndarray:
    """RNet candidates (n * len(jitter), 5) [x1, y1, x2, y2, score] around previous face boxes."""
    prev = np.asarray(prev_boxes, np.float32).reshape(-1, 4)
    if not len(prev):
        return np.zeros((0, 5), np.float32)
    sq = bx.square(np.concatenate([prev, np.ones((len(prev), 1), np.float32)], axis=1))
    side = (sq[:, 2] - sq[:, 0])[:, None]
    cx = ((sq[:, 0] + sq[:, 2]) / 2)[:, None]
    cy = ((sq[:, 1] + sq[:, 3]) / 2)[:, None]
    j = np.asarray(jitter, np.float32).reshape(-1, 3)
    half = side * j[None, :, 0] / 2
    x = cx + side * j[None, :, 1]
    y = cy + side * j[None, :, 2]
    out = np.stack([x - half, y - half, x + half, y + half, np.ones_like(x)], axis=2)
    return out.reshape(-1, 5).astype(np.float32)


def refine_candidates(detector, image, candidates: np.ndarray) -> Detections:
    """The cascade from the RNet stage on: given (m, 5) candidate boxes on one RGB frame, the faces.

    The same RNet/ONet stages as the full detector (`pipeline.rnet_onet`), timed
    under the same stage names. The frame is an RGB array, or an (H, W, 3) uint8
    tensor on the torch backend's device (an NVDEC frame).
    """
    be, cfg, timer = detector.backend, detector.config, detector.timer
    with timer("integral"):
        ii = be.integrals(be.images([image]))
    b = be.asarray(np.ascontiguousarray(candidates, np.float32))
    f = be.asarray(np.zeros(len(candidates), np.int64))
    b, _, lm = rnet_onet(be, ii, b, f, cfg, timer)
    with timer("to_host"):
        b, lm = be.to_numpy(b), be.to_numpy(lm)
    return Detections(b[:, :4], b[:, 4], lm)


@dataclass
class TrackStats:
    full: int = 0  # frames run through the full detector on schedule (every K, or nothing to track)
    tracked: int = 0  # frames answered by RNet/ONet only
    redetect: int = 0  # tracked frames that lost a face and were re-run with the full detector

    @property
    def frames(self) -> int:
        return self.full + self.tracked + self.redetect


class Tracker:
    """Faces in consecutive video frames, with the full detector only every `every` frames.

    >>> tracker = Tracker(MTCNN(), every=10)           # doctest: +SKIP
    >>> for frame in frames:                           # doctest: +SKIP
    ...     faces, tracked = tracker.detect(frame)

    Call `reset()` at a scene cut or when switching sources.
    """

    def __init__(self, detector, every: int = 10, jitter=DEFAULT_JITTER) -> None:
        if int(every) < 1:
            raise ValueError(f"track interval must be >= 1 frame, got {every}")
        self.detector = detector
        self.every = int(every)
        self.jitter = jitter
        self.stats = TrackStats()
        self._prev: Detections | None = None
        self._since_full = 0

    def reset(self) -> None:
        self._prev = None
        self._since_full = 0

    def detect(self, image) -> tuple[Detections, bool]:
        """Faces in the next frame, and whether they came from tracking (True) or a full detection."""
        image = _frame(image)
        faces = self.track(image)
        if faces is not None:
            return faces, True
        return self.update(self.detector.detect(image)), False

    def track(self, image) -> Detections | None:
        """The next frame's faces from RNet/ONet around the last ones; None when the frame needs the full
        detector (on schedule, nothing to track, or a face was lost): then pass its faces to `update`."""
        prev = self._prev
        if prev is not None and len(prev) and self._since_full < self.every - 1:
            faces = refine_candidates(self.detector, _frame(image), candidate_boxes(prev.boxes, self.jitter))
            if len(faces) >= len(prev):
                self.stats.tracked += 1
                self._since_full += 1
                self._prev = faces
                return faces
            self.stats.redetect += 1  # a face was lost: look again properly, now
        else:
            self.stats.full += 1
        return None

    def update(self, faces: Detections) -> Detections:
        """The full detector's faces for the frame `track` passed on: what the next frames track."""
        self._prev = faces
        self._since_full = 0
        return faces


def _frame(image):
    """An RGB array (paths are read), or a frame tensor as it is (it stays on its device)."""
    return image if is_tensor(image) else as_image(image)


def track_many(items: Sequence[tuple[Tracker, object]],
               detect: Callable[[list[int]], list[Detections]]) -> list[tuple[Detections, bool]]:
    """Faces in frames of several videos, each video with its own Tracker: (faces, tracked) per item.

    items are (tracker, frame), each video's frames in order. A video's frames go one after another
    (a frame's faces are the next frame's candidates); at each step, the frames of different videos
    that need the full detector go to `detect(positions in items)` together, as one call. So each
    video gets the faces it would get alone, and many videos share the full detections' cost.
    """
    out: list[tuple[Detections, bool] | None] = [None] * len(items)
    queues: dict[int, deque[int]] = defaultdict(deque)
    for p, (tracker, _) in enumerate(items):
        queues[id(tracker)].append(p)
    while queues:
        step = [q.popleft() for q in queues.values()]
        queues = {k: q for k, q in queues.items() if q}
        full = []
        for p in step:
            faces = items[p][0].track(items[p][1])
            if faces is None:
                full.append(p)
            else:
                out[p] = (faces, True)
        if full:
            for p, faces in zip(full, detect(full)):
                out[p] = (items[p][0].update(faces), False)
    return out  # type: ignore[return-value]
