"""`fastmtcnn plan --size WxH`: the pyramid and packed canvas of a frame size."""
from __future__ import annotations

import argparse

from ..pyramid import make_plan, stacked_efficiency


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720), with a clear error."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1280x720, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def register(sub) -> None:
    p = sub.add_parser("plan")
    p.add_argument("--size", type=parse_size, required=True, metavar="WxH")
    p.add_argument("--minsize", type=float, default=20.0)
    p.add_argument("--factor", type=float, default=0.709)
    p.add_argument("--per-scale", action="store_true", help="one canvas per level instead of one packed canvas")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    w, h = args.size
    from ..config import Config

    Config(minsize=args.minsize, factor=args.factor)  # validate
    plan = make_plan(h, w, args.minsize, args.factor, not args.per_scale)
    print(plan.describe())
    print(f"{'level':>5} {'scale':>8} {'size':>10} {'at (x, y)':>12} {'cells':>9}")
    for canvas in plan.canvases:
        for k, lv in zip(canvas.level_ids, canvas.levels):
            print(f"{k:>5} {lv.scale:8.4f} {lv.w:>4}x{lv.h:<5} {f'({lv.x}, {lv.y})':>12} {lv.out_w:>4}x{lv.out_h:<4}")
    if plan.canvases:
        print(f"PNet input pixels: {plan.pnet_pixels}; vertical stacking (original post) would be "
              f"{stacked_efficiency(h, w, args.minsize, args.factor):.3f} efficient")
    return 0
