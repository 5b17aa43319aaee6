"""Accuracy against labelled faces: annotation readers, matching, PR curve, AP.

The protocol is WIDER FACE's (and PASCAL VOC's): pool every detection of the
set, sort by score, count hits and false positives down the list, and take
average precision as the area under the precision envelope. Ground truth
comes as the WIDER FACE text format (`wider_face_val_bbx_gt.txt`) or a JSON
object `{"image": [[x1, y1, x2, y2], ...]}`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from .images import IMAGE_SUFFIXES, ImageError, read_image
from .photos import detect_photos
from .metrics import centres_inside, iou_matrix, match_in_order

#: Face size buckets (pixels, the longer side of the labelled box): <20, 20-40, 40-80, 80-160, >=160.
SIZE_EDGES = (20.0, 40.0, 80.0, 160.0)
MATCH_RULES = ("iou", "centre")


class AnnotationError(ValueError):
    """An annotation file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class GroundTruth:
    """Labelled faces of one image. ignore: faces that count neither as hits nor misses
    (WIDER's `invalid` flag, degenerate boxes, faces below --ignore-below)."""

    boxes: np.ndarray
    ignore: np.ndarray

    def __post_init__(self) -> None:
        b = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        ign = np.zeros(len(b), bool) if self.ignore is None else np.asarray(self.ignore, bool).reshape(-1)
        if len(ign) != len(b):
            raise ValueError(f"{len(b)} boxes but {len(ign)} ignore flags")
        object.__setattr__(self, "boxes", b)
        object.__setattr__(self, "ignore", ign)

    @classmethod
    def of(cls, boxes, ignore=None) -> "GroundTruth":
        return cls(np.asarray(boxes, np.float64).reshape(-1, 4), ignore)

    @property
    def sizes(self) -> np.ndarray:
        """Face size: the longer side of each box (MTCNN's boxes, and minsize, are square)."""
        return np.maximum(self.boxes[:, 2] - self.boxes[:, 0], self.boxes[:, 3] - self.boxes[:, 1])


Annotations = dict[str, GroundTruth]


# ---------------------------------------------------------------- readers

def read_annotations(path: str | Path) -> Annotations:
    """WIDER FACE text or JSON ground truth (told apart by content), in file order."""
    p = Path(path)
    if not p.exists():
        raise AnnotationError(f"{p}: no such file")
    if p.is_dir():
        raise AnnotationError(f"{p}: is a directory, expected an annotation file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{p}: not a text file ({e.reason} at byte {e.start})") from None
    if text.lstrip().startswith("{"):
        return parse_json(text, str(p))
    return parse_wider(text, str(p))


def parse_json(text: str, name: str = "<json>") -> Annotations:
    """`{"image": [[x1, y1, x2, y2], ...]}` -> annotations; errors name the line."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{name}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{name}:1: expected an object {{\"image\": [[x1, y1, x2, y2], ...]}}")
    out: Annotations = {}
    for key, boxes in data.items():
        def fail(msg: str) -> AnnotationError:
            pos = text.find(json.dumps(key))
            line = text.count("\n", 0, pos) + 1 if pos >= 0 else 1
            return AnnotationError(f"{name}:{line}: image {key!r}: {msg}")

        if not isinstance(boxes, list):
            raise fail(f"expected a list of boxes, got {type(boxes).__name__}")
        rows = []
        for k, b in enumerate(boxes):
            if (not isinstance(b, list) or len(b) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                               for v in b)):
                raise fail(f"box {k}: expected [x1, y1, x2, y2] numbers, got {json.dumps(b)}")
            if b[2] <= b[0] or b[3] <= b[1]:
                raise fail(f"box {k}: x2 <= x1 or y2 <= y1 in {json.dumps(b)} (boxes are x1, y1, x2, y2)")
            rows.append(b)
        out[key] = GroundTruth.of(rows)
    return out


def _numbers(line: str) -> list[float] | None:
    try:
        return [float(v) for v in line.split()]
    except ValueError:
        return None


def parse_wider(text: str, name: str = "<wider>") -> Annotations:
    """WIDER FACE ground truth text -> annotations.

    Per image: its path (relative to the images folder), the number of faces,
    then one line per face `x y w h [blur expression illumination invalid
    occlusion pose]`. An image with 0 faces is followed by one line of zeros.
    Faces with invalid=1 or no area are kept as ignored.
    """
    lines = text.splitlines()
    out: Annotations = {}
    i, n = 0, len(lines)
    while i < n:
        path = lines[i].strip()
        i += 1
        if not path:
            continue
        if _numbers(path) is not None or Path(path).suffix.lower() not in IMAGE_SUFFIXES:
            raise AnnotationError(f"{name}:{i}: expected an image path (e.g. 0--Parade/0_Parade_1.jpg), got {path!r}")
        if i >= n:
            raise AnnotationError(f"{name}:{i}: image {path!r} has no face count after it")
        count = lines[i].strip()
        i += 1
        if not count.isdigit():
            raise AnnotationError(f"{name}:{i}: expected the number of faces in {path!r}, got {count!r}")
        boxes, ignore = [], []
        for k in range(int(count)):
            if i >= n:
                raise AnnotationError(f"{name}:{i}: file ends after {k} of {count} faces of {path!r}")
            vals = _numbers(lines[i])
            i += 1
            if vals is None or len(vals) < 4 or not all(math.isfinite(v) for v in vals):
                raise AnnotationError(f"{name}:{i}: expected 'x y w h [blur expression illumination invalid "
                                      f"occlusion pose]' for face {k + 1} of {path!r}, got {lines[i - 1].strip()!r}")
            x, y, w, h = vals[:4]
            if w < 0 or h < 0:
                raise AnnotationError(f"{name}:{i}: negative width or height in {lines[i - 1].strip()!r}")
            boxes.append([x, y, x + w, y + h])
            ignore.append(w <= 0 or h <= 0 or (len(vals) >= 8 and vals[7] != 0))
        if int(count) == 0 and i < n and (vals := _numbers(lines[i])) and len(vals) >= 4:
            i += 1  # WIDER writes a line of zeros for an image without faces
        if path in out:
            raise AnnotationError(f"{name}:{i}: image {path!r} is listed twice")
        out[path] = GroundTruth.of(boxes, ignore)
    if not out:
        raise AnnotationError(f"{name}: no images in the file")
    return out


def to_wider(annotations: Mapping[str, GroundTruth]) -> str:
    """Annotations as WIDER FACE ground truth text (x y w h, attributes 0, invalid from ignore)."""
    rows: list[str] = []
    for path, gt in annotations.items():
        rows += [path, str(len(gt.boxes))]
        for (x1, y1, x2, y2), ign in zip(gt.boxes, gt.ignore):
            rows.append(f"{x1:g} {y1:g} {x2 - x1:g} {y2 - y1:g} 0 0 0 {int(ign)} 0 0")
        if len(gt.boxes) == 0:
            rows.append("0 0 0 0 0 0 0 0 0 0")
    return "\n".join(rows) + "\n"


def ignore_smaller(annotations: Mapping[str, GroundTruth], min_size: float) -> Annotations:
    """Mark faces smaller than min_size pixels as ignored (e.g. below what minsize can find)."""
    return {k: GroundTruth(g.boxes, g.ignore | (g.sizes < min_size)) for k, g in annotations.items()}


def spread(keys: list[str], limit: int | None) -> list[str]:
    """At most `limit` keys spread evenly over the list (WIDER is sorted by event)."""
    if not limit or limit >= len(keys):
        return list(keys)
    idx = np.unique(np.linspace(0, len(keys) - 1, limit).round().astype(int))
    return [keys[i] for i in idx]


# ---------------------------------------------------------------- matching

@dataclass(frozen=True)
class MatchRule:
    """When a detection counts as finding a face.

    iou: IoU >= `iou` (WIDER FACE uses 0.5; use 0.3 for tight brow-to-chin labels).
    centre: each box's centre lies inside the other, whatever the IoU.
    Either way one detection finds at most one face, best score first.
    """

    kind: str = "iou"
    iou: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in MATCH_RULES:
            raise ValueError(f"unknown matching rule {self.kind!r}; choose one of {MATCH_RULES}")
        if not 0 < self.iou <= 1:
            raise ValueError(f"IoU threshold must be in (0, 1], got {self.iou}")

    def similarity(self, dets: np.ndarray, gts: np.ndarray) -> tuple[np.ndarray, float]:
        """(len(dets), len(gts)) similarity and the least value that matches."""
        iou = iou_matrix(dets, gts)
        if self.kind == "centre":
            return np.where(centres_inside(dets, gts), iou, -1.0), 0.0
        return iou, self.iou

    def describe(self) -> str:
        return f"IoU >= {self.iou:g}" if self.kind == "iou" else "centre inside (both ways)"


@dataclass(frozen=True)
class ImageMatch:
    """One image's detections and faces after matching.

    det_status: 1 hit, 0 false positive, -1 on an ignored face (not counted).
    found: per face, whether a detection found it.
    """

    scores: np.ndarray
    det_status: np.ndarray
    found: np.ndarray
    gt: GroundTruth


def match_image(gt: GroundTruth, boxes, scores, rule: MatchRule = MatchRule()) -> ImageMatch:
    """Match one image's detections to its faces, highest score first."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    sim, least = rule.similarity(boxes, gt.boxes)
    col = match_in_order(sim, least, gt.ignore) if len(gt.boxes) else np.full(len(boxes), -1)
    status = np.zeros(len(boxes), np.int8)
    found = np.zeros(len(gt.boxes), bool)
    for i, j in enumerate(col):
        if j < 0:
            continue
        if gt.ignore[j]:
            status[i] = -1
        else:
            status[i] = 1
            found[j] = True
    return ImageMatch(scores, status, found, gt)


# ---------------------------------------------------------------- PR curve and AP

def pr_curve(scores: np.ndarray, hits: np.ndarray, n_faces: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recall, precision and score threshold at each distinct score, best first.

    Detections with equal scores enter together (so the curve does not depend
    on their order), which is what WIDER's evaluation does with its
    1000-step score grid, without the quantisation.
    """
    scores = np.asarray(scores, np.float64)
    hits = np.asarray(hits, bool)
    order = np.argsort(-scores, kind="stable")
    s, h = scores[order], hits[order]
    tp = np.cumsum(h)
    fp = np.cumsum(~h)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
    tp, fp, s = tp[last], fp[last], s[last]
    recall = tp / n_faces if n_faces else np.zeros(len(tp))
    precision = tp / np.maximum(tp + fp, 1)
    return recall, precision, s


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (VOC all-point, as WIDER FACE's voc_ap)."""
    mrec = np.r_[0.0, recall, 1.0]
    mpre = np.r_[0.0, precision, 0.0]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


# ---------------------------------------------------------------- the evaluation

@dataclass
class Evaluation:
    """Accuracy of one detector setting over one labelled set."""

    rule: MatchRule
    images: int
    faces: int
    ignored: int
    detections: int
    hits: int
    false_positives: int
    average_precision: float
    curve: tuple[np.ndarray, np.ndarray, np.ndarray]  # recall, precision, score
    buckets: list[dict]
    per_image: list[dict] = field(default_factory=list)
    failed: int = 0

    @property
    def missed(self) -> int:
        return self.faces - self.hits

    @property
    def recall(self) -> float:
        return self.hits / self.faces if self.faces else float("nan")

    @property
    def precision(self) -> float:
        n = self.hits + self.false_positives
        return self.hits / n if n else float("nan")

    @property
    def fp_per_image(self) -> float:
        return self.false_positives / self.images if self.images else float("nan")

    def summary(self) -> dict:
        """The headline numbers, JSON-ready (NaN as null)."""
        return json_ready({
            "match": self.rule.describe(), "images": self.images, "images_failed": self.failed,
            "faces": self.faces, "ignored_faces": self.ignored, "detections": self.detections,
            "hits": self.hits, "missed": self.missed, "false_positives": self.false_positives,
            "precision": self.precision, "recall": self.recall, "average_precision": self.average_precision,
            "false_positives_per_image": self.fp_per_image,
        })

    def to_dict(self) -> dict:
        r, p, s = self.curve
        return {**self.summary(), "size_buckets": json_ready(self.buckets),
                "pr_curve": {"recall": r.tolist(), "precision": p.tolist(), "score": s.tolist()},
                "per_image": self.per_image}


def json_ready(x):
    """NaN and infinity as null (JSON has neither), in nested dicts and lists."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_ready(v) for v in x]
    return x


def size_buckets(sizes: np.ndarray, found: np.ndarray, edges: Iterable[float] = SIZE_EDGES) -> list[dict]:
    """Faces and misses per size range [lo, hi) in pixels."""
    e = [0.0, *sorted(float(v) for v in edges), math.inf]
    out = []
    for lo, hi in zip(e[:-1], e[1:]):
        sel = (sizes >= lo) & (sizes < hi)
        n, miss = int(sel.sum()), int((sel & ~found).sum())
        out.append({"min": lo, "max": hi, "faces": n, "missed": miss,
                    "miss_rate": miss / n if n else float("nan")})
    return out


def evaluate(matches: Mapping[str, ImageMatch], rule: MatchRule = MatchRule(),
             edges: Iterable[float] = SIZE_EDGES, failed: Mapping[str, str] | None = None) -> Evaluation:
    """Pool per-image matches into precision, recall, AP, FP/image and size buckets.

    failed: images that could not be used (name -> error), listed in per_image.
    """
    failed = dict(failed or {})
    ms = list(matches.values())
    status = np.concatenate([m.det_status for m in ms]) if ms else np.zeros(0, np.int8)
    scores = np.concatenate([m.scores for m in ms]) if ms else np.zeros(0)
    counted = status >= 0
    faces = int(sum((~m.gt.ignore).sum() for m in ms))
    recall, precision, thr = pr_curve(scores[counted], status[counted] == 1, faces)
    sizes = np.concatenate([m.gt.sizes[~m.gt.ignore] for m in ms]) if ms else np.zeros(0)
    found = np.concatenate([m.found[~m.gt.ignore] for m in ms]) if ms else np.zeros(0, bool)
    per_image = []
    for name, m in matches.items():
        valid = ~m.gt.ignore
        per_image.append({"image": name, "faces": int(valid.sum()), "detections": len(m.scores),
                          "hits": int((m.det_status == 1).sum()), "false_positives": int((m.det_status == 0).sum()),
                          "missed_boxes": m.gt.boxes[valid & ~m.found].tolist()})
    per_image += [{"image": name, "error": err} for name, err in failed.items()]
    return Evaluation(rule=rule, images=len(ms), faces=faces, ignored=int(sum(m.gt.ignore.sum() for m in ms)),
                      detections=int(counted.sum()), hits=int((status == 1).sum()),
                      false_positives=int((status == 0).sum()),
                      average_precision=average_precision(recall, precision) if faces else float("nan"),
                      curve=(recall, precision, thr), buckets=size_buckets(sizes, found, edges),
                      per_image=per_image, failed=len(failed))


def load_images(annotations: Mapping[str, GroundTruth], images_dir: str | Path,
                keys: Iterable[str] | None = None) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """(key, RGB image or None, error or None) for each annotated image, in order."""
    root = Path(images_dir)
    for key in (annotations if keys is None else keys):
        try:
            yield key, read_image(root / key), None
        except ImageError as e:
            yield key, None, str(e)


def check_images_dir(images_dir: str | Path) -> Path:
    root = Path(images_dir)
    if not root.is_dir():
        raise OSError(f"{root}: images folder not found" if not root.exists() else f"{root}: not a folder")
    return root


def run_detector(detector, annotations: Mapping[str, GroundTruth], images_dir: str | Path,
                 keys: list[str] | None = None, rule: MatchRule = MatchRule(),
                 edges: Iterable[float] = SIZE_EDGES, progress=None) -> tuple[Evaluation, float]:
    """Detect faces in each annotated image with an MTCNN and evaluate; returns (evaluation, seconds).

    The images go through `photos.detect_photos` (read ahead, nvJPEG on a
    CUDA detector, size groups), so the seconds are decoding and detection
    together. Images that cannot be read are reported in per_image with their
    error and left out of the figures (Evaluation.failed counts them).
    """
    root = check_images_dir(images_dir)
    keys = list(annotations) if keys is None else keys
    matches: dict[str, ImageMatch] = {}
    failed: dict[str, str] = {}
    t = time.perf_counter()
    results = detect_photos(detector, [str(root / key) for key in keys])
    for key, r in zip(keys, progress(results, total=len(keys)) if progress else results):
        if not r.ok:
            failed[key] = str(r.error)
            continue
        matches[key] = match_image(annotations[key], r.faces.boxes, r.faces.scores, rule)
    return evaluate(matches, rule, edges, failed), time.perf_counter() - t


# ---------------------------------------------------------------- reports

def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.1f}%"


def format_report(ev: Evaluation, title: str = "") -> str:
    """The terminal table: headline figures, then miss rate per face size."""
    lines = [title] if title else []
    lines += [
        f"match: {ev.rule.describe()}; {ev.images} images"
        + (f" ({ev.failed} unreadable, left out)" if ev.failed else ""),
        f"{'faces':<26}{ev.faces}" + (f" (+{ev.ignored} ignored)" if ev.ignored else ""),
        f"{'detections':<26}{ev.detections}",
        f"{'found (recall)':<26}{ev.hits} ({_pct(ev.recall)})",
        f"{'precision':<26}{_pct(ev.precision)}",
        f"{'average precision':<26}{_pct(ev.average_precision)}",
        f"{'false positives':<26}{ev.false_positives} ({ev.fp_per_image:.3f} per image)",
        "",
        f"{'face size (px)':<16}{'faces':>8}{'missed':>8}{'miss rate':>11}",
    ]
    for b in ev.buckets:
        hi = "" if math.isinf(b["max"]) else f"{b['max']:g}"
        rng = f"< {hi}" if b["min"] == 0 else (f">= {b['min']:g}" if not hi else f"{b['min']:g}-{hi}")
        lines.append(f"{rng:<16}{b['faces']:>8}{b['missed']:>8}{_pct(b['miss_rate']):>11}")
    return "\n".join(lines)


def new_figure(width: float = 6.0, height: float = 4.5):
    """A matplotlib Figure (no pyplot state, no display needed), or a one-line error."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install 'fastmtcnn[plot]'") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_pr(curves: list[tuple[str, Evaluation]], path: str | Path, title: str = "") -> Path:
    """Precision-recall curves (one per labelled evaluation) as a PNG."""
    fig = new_figure()
    ax = fig.add_subplot()
    styles = [("-", 4.5), ("--", 2.5), (":", 1.5)]
    for k, (label, ev) in enumerate(curves):
        r, p, _ = ev.curve
        ls, lw = styles[k % len(styles)]  # identical curves stay visible on top of each other
        (line,) = ax.plot(r, p, ls=ls, lw=lw, marker=".", alpha=0.85,
                          label=f"{label}: AP {_pct(ev.average_precision)}, recall {_pct(ev.recall)}")
        if len(r):  # the operating point: every detection the detector returned
            ax.plot(r[-1], p[-1], "o", ms=8, mfc="none", color=line.get_color())
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=title or "Precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
