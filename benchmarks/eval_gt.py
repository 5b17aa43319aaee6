"""Accuracy and the speed/recall trade-off on the hand-labelled photos (../shared/data/gt.json).

Prints recall and false positives of the default settings and the Jetson
preset under each matching rule, then the tune table (factor 0.709/0.68/0.6
x minsize 20/40/80, plus the Jetson preset's thresholds), speeds as ratios
to the default setting measured interleaved in this run. With --docs it
writes docs/pr_curve.png and docs/tune.png (needs matplotlib).

    python benchmarks/eval_gt.py [--data ../shared/data] [--repeat 10] [--docs]
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import onnxruntime

from fastmtcnn import MTCNN
from fastmtcnn.evaluate import MatchRule, format_report, load_images, plot_pr, read_annotations, run_detector
from fastmtcnn.tune import Setting, format_front, format_table, grid, plot_tradeoff, sweep

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--docs", action="store_true", help="write docs/pr_curve.png and docs/tune.png")
    args = ap.parse_args()
    ann = read_annotations(args.data / "gt.json")
    print(f"machine: {platform.processor() or platform.machine()}, onnxruntime {onnxruntime.__version__}, "
          f"{len(ann)} images, {sum(len(g.boxes) for g in ann.values())} faces\n")

    curves = []
    for label, det in [("default (reference)", MTCNN()), ("jetson preset", MTCNN(preset="jetson")),
                       ("default, thresholds 0.5/0.5/0.05", MTCNN(thresholds=(0.5, 0.5, 0.05)))]:
        for rule in (MatchRule("iou", 0.3), MatchRule("centre"), MatchRule("iou", 0.5)):
            ev, _ = run_detector(det, ann, args.data, rule=rule)
            print(f"{label:<34} {rule.describe():<26} found {ev.hits}/{ev.faces}, false positives "
                  f"{ev.false_positives} ({ev.fp_per_image:.2f}/image), AP {ev.average_precision:.3f}")
            if rule == MatchRule("iou", 0.3):
                curves.append((label, ev))
    print()
    print(format_report(curves[0][1], "default settings, IoU >= 0.3:"))

    images = {k: img for k, img, err in load_images(ann, args.data)}
    settings = grid(minsizes=(20, 40, 80), factors=(0.709, 0.68, 0.6))
    settings.append(Setting(40, 0.709, (0.7, 0.6, 0.7)))  # the Jetson preset's minsize and thresholds
    settings.append(Setting(20, 0.709, packed=False))  # per-scale PNet, same detections

    def make(s: Setting):
        return MTCNN(minsize=s.minsize, factor=s.factor, thresholds=s.thresholds, packed=s.packed, backend=s.backend)

    rule = MatchRule("iou", 0.3)
    res = sweep(settings, images, ann, make, rule, repeat=args.repeat)
    print(f"\ntune: {len(images)} images x {args.repeat} rounds, speed = default time / setting time "
          f"(median of per-round ratios, interleaved)")
    print(format_table(res))
    print("\nPareto front:")
    print(format_front(res))
    if args.docs:
        docs = ROOT / "docs"
        plot_pr(curves, docs / "pr_curve.png", title="gt.json (18 hand-labelled faces), IoU >= 0.3")
        plot_tradeoff(res, docs / "tune.png", title=f"gt.json: speed vs recall, {rule.describe()} "
                                                     f"({platform.machine()}, ONNX Runtime CPU)")
        print(f"\nwrote {docs / 'pr_curve.png'} and {docs / 'tune.png'}")


if __name__ == "__main__":
    main()
