"""`fastmtcnn tune ANNOTATIONS IMAGES_DIR`: speed against recall for each setting, in one run."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..backends import BACKENDS
from . import open_output, plural
from .evaluate import add_matching_args, load_ground_truth


class _ThresholdTriples(argparse.Action):
    """--thresholds P R O [P R O ...]: numbers in threes, one triple per setting, as detect's
    --thresholds takes one (P,R,O with commas is accepted too)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            numbers = [float(v) for text in values for v in text.replace("/", ",").split(",") if v]
        except ValueError:
            parser.error(f"argument --thresholds: expected numbers, got {' '.join(values)!r}")
        if not numbers or len(numbers) % 3:
            parser.error(f"argument --thresholds: expected three numbers per setting (P R O, as in detect "
                         f"--thresholds, e.g. 0.6 0.7 0.7), got {len(numbers)}")
        setattr(namespace, self.dest, [tuple(numbers[i:i + 3]) for i in range(0, len(numbers), 3)])


def register(sub) -> None:
    p = sub.add_parser("tune",
                       description="Measure speed and accuracy of every combination of the given settings on a "
                                   "labelled set, in one run: speed is each setting's time per image relative to "
                                   "the default setting (minsize 20, factor 0.709, thresholds 0.6/0.7/0.7, packed, "
                                   "onnxruntime), timed interleaved so machine noise hits all alike. Prints the "
                                   "table and the Pareto front (nothing both faster and with higher recall).")
    add_matching_args(p)
    p.set_defaults(limit=100)
    g = p.add_argument_group("grid (every combination is run; the default setting is always added)")
    g.add_argument("--minsize", type=float, nargs="+", default=[20, 40, 80], metavar="PX",
                   help="smallest face sizes to try (default: 20 40 80)")
    g.add_argument("--factor", type=float, nargs="+", default=[0.709, 0.68, 0.6], metavar="F",
                   help="pyramid scale steps to try (default: 0.709 0.68 0.6)")
    g.add_argument("--thresholds", action=_ThresholdTriples, nargs="+", default=[(0.6, 0.7, 0.7)], metavar="P R O",
                   help="PNet/RNet/ONet thresholds to try, three numbers per setting as in detect "
                        "(default: 0.6 0.7 0.7; two settings: 0.6 0.7 0.7 0.7 0.6 0.7)")
    g.add_argument("--pyramid", choices=["packed", "per-scale"], nargs="+", default=["packed"],
                   help="one PNet call on a packed canvas, or one per pyramid level (default: packed)")
    g.add_argument("--backend", choices=list(BACKENDS), nargs="+", default=["onnxruntime"],
                   help="backends to try (default: onnxruntime)")
    r = p.add_argument_group("run")
    r.add_argument("--repeat", type=int, metavar="N",
                   help="timing rounds over the images (default: enough for ~40 timed images per setting, at most 10)")
    r.add_argument("--device", help="torch backend device (cpu, cuda)")
    r.add_argument("--providers", nargs="+", help="ONNX Runtime execution providers")
    r.add_argument("--threads", type=int, help="CPU threads for the networks")
    r.add_argument("--json", metavar="FILE", help="write every setting's figures as JSON")
    r.add_argument("--plot", metavar="PNG", help="write the speed-vs-recall plot (needs fastmtcnn[plot])")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..detector import MTCNN
    from ..evaluate import json_ready, load_images, new_figure
    from ..tune import BASELINE, auto_repeat, format_front, format_table, grid, plot_tradeoff, sweep

    if args.plot:
        new_figure()  # fail before the run when matplotlib is missing
    if args.repeat is not None and args.repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
    ann, keys, rule, edges = load_ground_truth(args)
    settings = grid(args.minsize, args.factor, args.thresholds, [p == "packed" for p in args.pyramid], args.backend)
    jf = open_output(args.json, "--json") if args.json else None  # fail now, not after the sweep

    images, failed = {}, {}
    for key, img, err in tqdm(load_images(ann, args.images_dir, keys), total=len(keys), unit="img",
                              desc="reading", file=sys.stderr, leave=False, disable=None):
        if err is None:
            images[key] = img
        else:
            failed[key] = err
            print(f"error: {err}", file=sys.stderr)
    if not images:
        raise ValueError(f"none of the {len(keys)} annotated images could be read from {args.images_dir}")

    def make(s):
        be = dict(providers=args.providers) if s.backend == "onnxruntime" else dict(device=args.device)
        return MTCNN(minsize=s.minsize, factor=s.factor, thresholds=s.thresholds, packed=s.packed,
                     backend=s.backend, threads=args.threads, **be)

    repeat = args.repeat or auto_repeat(len(images))
    print(f"{plural(len(settings), 'setting')} x {plural(len(images), 'image')} x {plural(repeat, 'round')}; "
          f"match: {rule.describe()}", file=sys.stderr)
    results = sweep(settings, images, {k: ann[k] for k in images}, make, rule, edges, repeat,
                    progress=lambda total: tqdm(total=total, unit="img", file=sys.stderr, leave=False, disable=None))
    print(f"speed: time per image of '{BASELINE.label()}' / the setting's, interleaved in this run "
          f"(median of {plural(repeat, 'round')}); {plural(len(images), 'image')} of {args.annotations}")
    print(format_table(results))
    print("\nPareto front (nothing else is both faster and finds more faces):")
    print(format_front(results))
    if jf:
        doc = {"annotations": str(args.annotations), "images": len(images), "images_failed": failed,
               "match": rule.describe(), "repeat": repeat, "baseline": BASELINE.to_dict(),
               "results": [r.to_dict() for r in results]}
        jf.write(json.dumps(json_ready(doc), indent=1) + "\n")
        if jf is not sys.stdout:
            jf.close()
        print(f"results: {args.json}")
    if args.plot:
        plot_tradeoff(results, args.plot, title=f"{Path(args.annotations).name}, {plural(len(images), 'image')}: "
                                                 f"speed vs recall ({rule.describe()})")
        print(f"plot: {args.plot}")
    return 1 if failed or any(r.error for r in results) else 0
