"""`fastmtcnn eval ANNOTATIONS IMAGES_DIR`: precision, recall, AP and misses by face size."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import add_detector_args, detector_from_args
from . import open_output, progress


def add_matching_args(p: argparse.ArgumentParser) -> None:
    """Ground-truth options shared by eval and tune."""
    p.add_argument("annotations", metavar="ANNOTATIONS",
                   help="WIDER FACE ground truth text (wider_face_val_bbx_gt.txt) "
                        "or JSON {\"image\": [[x1,y1,x2,y2], ...]}")
    p.add_argument("images_dir", metavar="IMAGES_DIR", help="folder the annotation's image paths are relative to")
    g = p.add_argument_group("matching")
    g.add_argument("--match", choices=["iou", "centre"], default="iou",
                   help="a detection finds a face at IoU >= --iou (default), "
                        "or when each box's centre lies in the other")
    g.add_argument("--iou", type=float, default=0.5,
                   help="IoU threshold for --match iou (default 0.5, WIDER FACE's; 0.3 for tight brow-to-chin labels)")
    g.add_argument("--ignore-below", type=float, default=0, metavar="PX",
                   help="ignore faces smaller than PX pixels "
                        "(neither found nor missed; detections on them not counted)")
    g.add_argument("--size-buckets", type=float, nargs="+", default=None, metavar="PX",
                   help="face size bucket edges in pixels (default 20 40 80 160)")
    g.add_argument("--limit", type=int, metavar="N", help="use N images spread evenly over the set (tune: default 100)")


def load_ground_truth(args: argparse.Namespace):
    """Annotations (with --ignore-below applied), the image keys to use, the match rule and bucket edges."""
    from ..evaluate import SIZE_EDGES, MatchRule, check_images_dir, ignore_smaller, read_annotations, spread

    rule = MatchRule(args.match, args.iou)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    ann = read_annotations(args.annotations)
    if args.ignore_below:
        ann = ignore_smaller(ann, args.ignore_below)
    check_images_dir(args.images_dir)
    return ann, spread(list(ann), args.limit), rule, tuple(args.size_buckets or SIZE_EDGES)


def register(sub) -> None:
    p = sub.add_parser("eval",
                       description="Run the detector on labelled images and report precision/recall, average "
                                   "precision (WIDER FACE protocol), miss rate by face size and false positives "
                                   "per image. Exit code 1 if an image could not be read (it is left out).")
    add_matching_args(p)
    p.add_argument("--json", metavar="FILE",
                   help="write the results (summary, size buckets, PR curve, per image) as JSON")
    p.add_argument("--plot", metavar="PNG", help="write the precision-recall curve (needs fastmtcnn[plot])")
    add_detector_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate import format_report, new_figure, plot_pr, run_detector

    if args.plot:
        new_figure()  # fail before the run, not after it, when matplotlib is missing
    ann, keys, rule, edges = load_ground_truth(args)
    det = detector_from_args(args)
    jf = open_output(args.json, "--json") if args.json else None  # fail now, not after the run

    ev, seconds = run_detector(det, ann, args.images_dir, keys, rule, edges, progress)
    for rec in ev.per_image:
        if "error" in rec:
            print(f"error: {rec['error']}", file=sys.stderr)
    c = det.config
    title = (f"{args.annotations}: minsize {c.minsize:g}, factor {c.factor:g}, thresholds "
             f"{'/'.join(f'{t:g}' for t in c.thresholds)}{'' if c.packed else ', per-scale'}, {det.backend.name}")
    print(format_report(ev, title))
    if ev.images:
        print(f"\ndecoding + detection: {seconds:.2f}s, {1000 * seconds / ev.images:.1f} ms per image")
    if jf:
        doc = {"annotations": str(args.annotations), "images_dir": str(args.images_dir), "detector": c.to_dict(),
               "backend": det.backend.name, "detection_seconds": seconds, **ev.to_dict()}
        jf.write(json.dumps(doc, indent=1) + "\n")
        if jf is not sys.stdout:
            jf.close()
        print(f"results: {args.json}")
    if args.plot:
        plot_pr([(f"minsize {c.minsize:g}, factor {c.factor:g}", ev)], args.plot,
                title=f"{Path(args.annotations).name}: {rule.describe()}")
        print(f"PR curve: {args.plot}")
    return 1 if ev.failed else 0
