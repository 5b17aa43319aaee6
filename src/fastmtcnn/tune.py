"""Speed against recall for every knob: sweep settings over a labelled set.

Speed is a ratio measured in one run: each setting's time per image against
the default setting's, with the settings interleaved image by image (and
their order rotated) so that a noisy machine slows them all alike. Absolute
times are reported too, but only the ratios compare across runs.
"""
from __future__ import annotations

import itertools
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from .config import Config
from .evaluate import (SIZE_EDGES, Evaluation, GroundTruth, ImageMatch, MatchRule, _pct, evaluate, match_image,
                       new_figure)


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: the detector's knobs that trade speed for recall."""

    minsize: float = 20.0
    factor: float = 0.709
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    packed: bool = True
    backend: str = "onnxruntime"

    def __post_init__(self) -> None:
        Config(minsize=self.minsize, factor=self.factor, thresholds=tuple(self.thresholds))  # validate early
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "minsize", float(self.minsize))
        object.__setattr__(self, "factor", float(self.factor))

    def label(self) -> str:
        return (f"minsize {self.minsize:g} factor {self.factor:g} thr {'/'.join(f'{t:g}' for t in self.thresholds)}"
                f"{'' if self.packed else ' per-scale'}{'' if self.backend == 'onnxruntime' else ' ' + self.backend}")

    def to_dict(self) -> dict:
        return {**asdict(self), "thresholds": list(self.thresholds)}


#: The default setting every speed is relative to (the reference MTCNN's).
BASELINE = Setting()


def grid(minsizes: Iterable[float] = (20, 40, 80), factors: Iterable[float] = (0.709, 0.68, 0.6),
         thresholds: Iterable[Sequence[float]] = ((0.6, 0.7, 0.7),), packed: Iterable[bool] = (True,),
         backends: Iterable[str] = ("onnxruntime",), baseline: Setting = BASELINE) -> list[Setting]:
    """Every combination, baseline first (added when the grid lacks it), no duplicates."""
    out = [baseline]
    for be, pk, th, ms, f in itertools.product(backends, packed, thresholds, minsizes, factors):
        s = Setting(ms, f, tuple(th), pk, be)
        if s not in out:
            out.append(s)
    return out


@dataclass
class Result:
    """One setting's measured speed and accuracy (or why it could not run)."""

    setting: Setting
    ms_per_image: float = math.nan
    speed: float = math.nan  # baseline time / this setting's time, same run
    evaluation: Evaluation | None = None
    error: str | None = None
    pareto: bool = False

    @property
    def recall(self) -> float:
        return self.evaluation.recall if self.evaluation else math.nan

    def to_dict(self) -> dict:
        d = {"setting": self.setting.to_dict(), "label": self.setting.label(), "pareto": self.pareto}
        if self.error:
            return {**d, "error": self.error}
        ev = self.evaluation.summary() if self.evaluation else {}
        return {**d, "ms_per_image": self.ms_per_image, "speed": self.speed,
                **{k: ev[k] for k in ("recall", "precision", "average_precision", "false_positives",
                                      "false_positives_per_image", "hits", "faces")}}


def pareto_front(speed: Sequence[float], recall: Sequence[float]) -> list[bool]:
    """True for points no other point beats on both speed and recall (NaN never on it)."""
    pts = np.column_stack([np.asarray(speed, float), np.asarray(recall, float)])
    ok = np.isfinite(pts).all(1)
    out = []
    for i, p in enumerate(pts):
        ge = (pts >= p).all(1) & (pts > p).any(1) & ok
        out.append(bool(ok[i] and not ge.any()))
    return out


def auto_repeat(n_images: int, target: int = 40, most: int = 10) -> int:
    """Rounds so that each setting is timed on about `target` images (small sets need repeats)."""
    return max(1, min(most, math.ceil(target / max(n_images, 1))))


def sweep(settings: Sequence[Setting], images: Mapping[str, np.ndarray], annotations: Mapping[str, GroundTruth],
          make_detector: Callable[[Setting], object], rule: MatchRule = MatchRule(),
          edges: Iterable[float] = SIZE_EDGES, repeat: int | None = None, progress=None) -> list[Result]:
    """Time and evaluate every setting on the same decoded images, interleaved.

    settings[0] is the reference for speed. Round r times every image under
    every setting, rotating the setting order per image; a setting's speed is
    the median over rounds of (reference time / its time) in that round.
    A setting whose detector cannot be built or fails is reported with its
    error, never dropped.
    """
    repeat = repeat or auto_repeat(len(images))
    results = [Result(s) for s in settings]
    dets: list = [None] * len(settings)
    first = next(iter(images.values()), None)
    for k, res in enumerate(results):
        try:
            dets[k] = make_detector(res.setting)
            if first is not None:
                dets[k].detect(first)  # warm-up: sessions, plan cache, allocations
        except (ValueError, RuntimeError, OSError, ImportError) as e:
            res.error = str(e).splitlines()[0] if str(e) else type(e).__name__
    live = [k for k, r in enumerate(results) if r.error is None]
    times = np.zeros((len(settings), repeat))
    found: list[dict[str, ImageMatch]] = [{} for _ in settings]
    steps = repeat * len(images)
    bar = progress(total=steps) if progress else None
    for r in range(repeat):
        for i, (key, img) in enumerate(images.items()):
            shift = (i + r) % max(len(live), 1)
            for k in live[shift:] + live[:shift]:
                if results[k].error:
                    continue
                try:
                    t = time.perf_counter()
                    d = dets[k].detect(img)
                    times[k, r] += time.perf_counter() - t
                except (ValueError, RuntimeError, MemoryError) as e:
                    results[k].error = f"{key}: {e}"
                    continue
                if r == 0:
                    found[k][key] = match_image(annotations[key], d.boxes, d.scores, rule)
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    base_ok = results[0].error is None
    for k, res in enumerate(results):
        if res.error:
            continue
        res.ms_per_image = 1000 * statistics.median(times[k]) / max(len(images), 1)
        if base_ok:
            res.speed = statistics.median(times[0, r] / times[k, r] for r in range(repeat))
        res.evaluation = evaluate(found[k], rule, edges)
    for res, on in zip(results, pareto_front([r.speed for r in results], [r.recall for r in results])):
        res.pareto = on
    return results


def format_table(results: Sequence[Result]) -> str:
    """Settings with speed ratio, recall, AP and false positives; '*' marks the Pareto front."""
    w = max(len(r.setting.label()) for r in results)
    head = f"{'setting':<{w}}  {'speed':>7}  {'ms/img':>7}  {'recall':>7}  {'AP':>7}  {'FP/img':>7}  front"
    lines = [head, "-" * len(head)]
    for r in results:
        name = r.setting.label()
        if r.error:
            lines.append(f"{name:<{w}}  error: {r.error}")
            continue
        ev = r.evaluation
        lines.append(f"{name:<{w}}  {r.speed:>6.2f}x  {r.ms_per_image:>7.1f}  {_pct(ev.recall):>7}  "
                     f"{_pct(ev.average_precision):>7}  {ev.fp_per_image:>7.3f}  {'*' if r.pareto else ''}")
    return "\n".join(lines)


def format_front(results: Sequence[Result]) -> str:
    """The Pareto front, fastest first: the settings worth choosing between."""
    front = sorted((r for r in results if r.pareto), key=lambda r: -r.speed)
    return "\n".join(f"  {r.speed:5.2f}x  recall {_pct(r.recall):>6}  {r.setting.label()}" for r in front)


def plot_tradeoff(results: Sequence[Result], path: str | Path, title: str = "") -> Path:
    """Speed ratio against recall, one point per setting, the Pareto front as a line."""
    from matplotlib.ticker import LogLocator

    fig = new_figure(7.0, 4.8)
    ax = fig.add_subplot()
    ok = [r for r in results if not r.error and math.isfinite(r.speed)]
    for th in dict.fromkeys(r.setting.minsize for r in ok):
        sel = [r for r in ok if r.setting.minsize == th]
        ax.scatter([r.speed for r in sel], [r.recall for r in sel], s=36, zorder=3, label=f"minsize {th:g}")
    front = sorted((r for r in ok if r.pareto), key=lambda r: r.speed)
    if front:  # nothing lies above and to the right of this staircase
        ax.step([r.speed for r in front], [r.recall for r in front], where="pre", color="grey", lw=1, zorder=2,
                label="Pareto front")
    by_recall: dict[float, list[Result]] = {}
    for r in sorted(ok, key=lambda r: r.speed):
        by_recall.setdefault(r.recall, []).append(r)
    for group in by_recall.values():
        for k, r in enumerate(group):  # neighbours alternate above / below so their labels do not collide
            s, up = r.setting, k % 2 == 0
            extra = ("" if s.thresholds == BASELINE.thresholds else " t" + "/".join(f"{t:g}" for t in s.thresholds)) \
                + ("" if s.packed else " per-scale") + ("" if s.backend == "onnxruntime" else f" {s.backend}")
            ax.annotate(f"f {s.factor:g}{extra}", (r.speed, r.recall), textcoords="offset points",
                        xytext=(2, 5) if up else (2, -7), fontsize=7, rotation=50 if up else -50,
                        va="bottom" if up else "top")
    ax.axvline(1.0, color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter("{x:g}x")
    ax.xaxis.set_minor_formatter("")
    ax.set(xlabel="speed relative to the default setting (x, measured in one run)", ylabel="recall",
           title=title or "Speed vs recall")
    lo = min((r.recall for r in ok), default=0.0)
    ax.set_ylim(max(0.0, lo - 0.08), 1.06)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
