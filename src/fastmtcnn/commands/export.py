"""`fastmtcnn export-onnx DIR`: the three nets as ONNX for engine builders (TensorRT), and plan.json."""
from __future__ import annotations

import argparse

from . import plural
from .plan import parse_size


def register(sub) -> None:
    from ..config import PRESETS
    from ..export import MAX_TILES
    from ..pyramid import TILE

    p = sub.add_parser("export-onnx",
                       description="Write pnet.onnx for PNet tiles of one fixed size (image [N,3,T,T], one mask per "
                                   "tile [N,1,T-2,T-2]): one engine serves images of every size. Also rnet.onnx and "
                                   "onet.onnx (dynamic batch) and plan.json: the tile, mask, resampling, cell-to-box "
                                   "and batch rules, the cascade's steps and trtexec commands. Checked with onnx's "
                                   "checker and ONNX Runtime; TensorRT itself is not tested here.")
    p.add_argument("out_dir", metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--tile", type=int, default=TILE, metavar="T",
                   help=f"PNet tile side, even (default {TILE}, the GPU backend's)")
    p.add_argument("--max-tiles", type=int, default=MAX_TILES, metavar="N",
                   help=f"most tiles per PNet call: the engine profile's max and opt batch (default {MAX_TILES})")
    p.add_argument("--max-batch", type=int, nargs="+", metavar="B",
                   help="largest RNet/ONet batch of the engine profiles, one number or two (RNet ONet); "
                        "default: the preset's (512)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="reference",
                   help="starting settings recorded in plan.json: 'reference' or 'jetson' (minsize 40, "
                        "thresholds 0.7 0.6 0.7, batches 256/64)")
    p.add_argument("--minsize", type=float, help="smallest face side in pixels (default 20)")
    p.add_argument("--factor", type=float, help="pyramid scale step (default 0.709)")
    p.add_argument("--thresholds", type=float, nargs=3, metavar=("P", "R", "O"),
                   help="recorded in plan.json (default 0.6 0.7 0.7)")
    p.add_argument("--size", type=parse_size, action="append", metavar="WxH",
                   help="add the tiles of an image of this size to plan.json as a worked example; "
                        "repeat for a batch whose images share tiles")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import resolve
    from ..export import export_onnx

    mb = args.max_batch
    if mb and len(mb) > 2:
        raise ValueError(f"--max-batch takes one number (both nets) or two (RNet ONet), got {len(mb)}")
    cfg = resolve(args.preset, minsize=args.minsize, factor=args.factor,
                  thresholds=tuple(args.thresholds) if args.thresholds else None,
                  max_batch=(tuple(mb) if mb and len(mb) == 2 else (mb[0] if mb else None)))
    sizes = [(h, w) for w, h in args.size or ()]
    info = export_onnx(args.out_dir, cfg, tile=args.tile, max_tiles=args.max_tiles, sizes=sizes)
    t, k = info["tile"]["side"], info["tile"]["cells"]
    rb, ob = info["batches"]["rnet"]["max_batch"], info["batches"]["onet"]["max_batch"]
    print(f"wrote {args.out_dir}/pnet.onnx (image [N,3,{t},{t}], mask [N,1,{t - 2},{t - 2}] -> {k}x{k} cells "
          f"per tile; 1 to {args.max_tiles} tiles per call), rnet.onnx and onet.onnx (batches up to {rb} and "
          f"{ob}), plan.json")
    if "example" in info:
        ex = info["example"]
        pieces = sum(len(tile["pieces"]) for tile in ex["tiles"])
        print(f"plan.json's example: {plural(len(ex['images']), 'image')} in {plural(len(ex['tiles']), 'tile')}, "
              f"{plural(pieces, 'piece')}")
    print("engines (TensorRT is untested here: the graphs pass onnx's checker and run under ONNX Runtime):")
    for cmd in info["trtexec"]:
        print("  " + cmd)
    return 0
