"""`fastmtcnn plan --size WxH [--size ...]`: the pyramids of images of these sizes in PNet tiles, piece by piece."""
from __future__ import annotations

import argparse

from . import plural


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
    from ..backends.host import HOST_TILES
    from ..pyramid import TILE

    p = sub.add_parser("plan", description="Show where PNet sees the pyramid levels of images of these sizes: "
                                           "every tile and each piece of a level in it (image, level, scale, the "
                                           "rectangle of the level, where it sits in the tile, its PNet cells). "
                                           "Several --size make one batch, whose images share tiles.")
    p.add_argument("--size", type=parse_size, action="append", required=True, metavar="WxH",
                   help="image size, e.g. 1280x720; repeat for a batch of images")
    p.add_argument("--minsize", type=float, default=20.0, help="smallest face side in pixels (default 20)")
    p.add_argument("--factor", type=float, default=0.709, help="pyramid scale step (default 0.709)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tile", type=int, metavar="T",
                   help=f"PNet tile side (even). Default: the CPU engines' choice, whichever of "
                        f"{', '.join(map(str, HOST_TILES))} needs the fewest pixels; the GPU backend and "
                        f"export-onnx use {TILE}")
    g.add_argument("--per-scale", action="store_true", help="one PNet input per level instead of tiles")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..backends.host import HOST_TILES
    from ..config import Config
    from ..export import check_tile
    from ..pyramid import level_size, make_plan, stacked_efficiency

    cfg = Config(minsize=args.minsize, factor=args.factor)  # validates
    sizes = [(h, w) for w, h in args.size]
    tiles = None if args.per_scale else (check_tile(args.tile) if args.tile is not None else HOST_TILES)
    plan = make_plan(sizes, cfg.minsize, cfg.factor, tiles)
    if not plan.canvases:
        raise ValueError(f"{', '.join(f'{w}x{h}' for w, h in args.size)}: smaller than minsize {cfg.minsize:g} "
                         f"allows: no pyramid level")
    print(plan.describe())
    if plan.tile:
        how = "--tile" if args.tile is not None else f"the CPU engines' choice of {', '.join(map(str, HOST_TILES))}"
        print(f"tile side {plan.tile} ({how}); pieces overlap by 10 px where a level is cut")
    print(f"{'image':>7} {'level':>5} {'scale':>8} {'level WxH':>10} {'rect (x, y, w, h)':>22} "
          f"{'in tile at':>11} {'cells':>9}")
    cells = 0
    for n, c in enumerate(plan.canvases):
        n_cells = sum(p.out_h * p.out_w for p in c.pieces)
        cells += n_cells
        print(f"{'tile' if plan.tile else 'canvas'} {n} ({c.w}x{c.h}): {plural(len(c.pieces), 'piece')}, "
              f"{plural(n_cells, 'cell')}")
        for p in c.pieces:
            rect = f"({p.src_x}, {p.src_y}, {p.w}, {p.h})"
            print(f"{p.image:>7} {p.level:>5} {p.scale:8.4f} {f'{p.level_w}x{p.level_h}':>10} {rect:>22} "
                  f"{f'({p.x}, {p.y})':>11} {f'{p.out_w}x{p.out_h}':>9}")
    level_px = [sum(lh * lw for lh, lw in (level_size(h, w, s) for s in sc)) for (h, w), sc in zip(sizes, plan.scales)]
    stacked_px = sum(px / stacked_efficiency(h, w, cfg.minsize, cfg.factor)
                     for px, (h, w) in zip(level_px, sizes) if px)
    print(f"PNet input pixels: {plan.pnet_pixels} ({plural(len(plan.canvases), 'input')}) for {sum(level_px)} "
          f"level pixels and {cells} cells: {plan.efficiency:.3f} efficient; vertical stacking (the original "
          f"post, one canvas per image) would be {sum(level_px) / stacked_px:.3f}")
    return 0
