"""`fastmtcnn export-onnx --size WxH DIR`: ONNX graphs and a plan for one frame size (for TensorRT users)."""
from __future__ import annotations

import argparse

from . import plural
from .plan import parse_size


def register(sub) -> None:
    p = sub.add_parser("export-onnx",
                       description="Write pnet.onnx with the packed canvas of one frame size fixed (mask baked in), "
                                   "rnet.onnx and onet.onnx with a dynamic batch, and plan.json (levels, offsets, "
                                   "valid cells, trtexec commands). TensorRT itself is not tested here.")
    p.add_argument("out_dir", metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--size", type=parse_size, required=True, metavar="WxH", help="frame size, e.g. 1280x720")
    p.add_argument("--minsize", type=float, default=20.0, help="smallest face side in pixels (default 20)")
    p.add_argument("--factor", type=float, default=0.709, help="pyramid scale step (default 0.709)")
    p.add_argument("--thresholds", type=float, nargs=3, metavar=("P", "R", "O"), default=(0.6, 0.7, 0.7),
                   help="recorded in plan.json (default 0.6 0.7 0.7)")
    p.add_argument("--max-batch", type=int, default=256, metavar="B",
                   help="largest RNet/ONet batch of the engine profiles (default 256)")
    p.add_argument("--frames", type=int, default=1, metavar="F", help="largest PNet batch (frames per call, default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import Config
    from ..export import export_onnx

    w, h = args.size
    cfg = Config(minsize=args.minsize, factor=args.factor, thresholds=tuple(args.thresholds),
                 max_batch=args.max_batch)
    info = export_onnx(args.out_dir, w, h, cfg, frames=args.frames)
    c = info["canvas"]
    levels = plural(len(info["levels"]), "level")
    print(f"wrote {args.out_dir}/pnet.onnx (canvas {c['width']}x{c['height']}, {levels}), "
          f"rnet.onnx, onet.onnx, plan.json")
    for cmd in info["trtexec"]:
        print("  " + cmd)
    return 0
