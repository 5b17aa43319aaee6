"""Comparing two detection sets face by face: the one check behind "the same detections".

Faces are paired one to one by IoU (the two sets may list them in another
order: the reference sorts by box area); then the counts must agree, every
face must have its pair, and paired boxes, landmarks (pixels) and scores must
agree within the given tolerances.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastmtcnn import Detections
from fastmtcnn.metrics import greedy_match

PAIR_IOU = 0.5  # only to pair faces up; the tolerances below are what is checked


@dataclass
class Difference:
    """How far two detection sets of one image are apart (largest over paired faces)."""

    n_expected: int
    n_actual: int
    n_paired: int
    box_px: float = 0.0        # largest |difference| of a box coordinate, pixels
    landmark_px: float = 0.0   # largest |difference| of a landmark coordinate, pixels
    score: float = 0.0         # largest |difference| of a score


def difference(expected: Detections, actual: Detections) -> Difference:
    pairs = greedy_match(expected.boxes, actual.boxes, PAIR_IOU)
    d = Difference(len(expected), len(actual), len(pairs))
    if pairs:
        i, j = np.array(pairs).T

        def gap(x: np.ndarray, y: np.ndarray) -> float:
            return float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())

        d.box_px = gap(expected.boxes[i], actual.boxes[j])
        d.landmark_px = gap(expected.landmarks[i], actual.landmarks[j])
        d.score = gap(expected.scores[i], actual.scores[j])
    return d


def assert_same_detections(expected: Detections, actual: Detections, *, px: float, score: float,
                           name: str = "") -> Difference:
    """The same faces: equal counts, all paired, coordinates within `px` pixels, scores within `score`."""
    d = difference(expected, actual)
    assert d.n_expected == d.n_actual == d.n_paired, (
        f"{name}: {d.n_expected} faces expected, {d.n_actual} found, {d.n_paired} paired")
    assert d.box_px <= px, f"{name}: boxes differ by {d.box_px:.3g} px (tolerance {px:g})"
    assert d.landmark_px <= px, f"{name}: landmarks differ by {d.landmark_px:.3g} px (tolerance {px:g})"
    assert d.score <= score, f"{name}: scores differ by {d.score:.3g} (tolerance {score:g})"
    return d
