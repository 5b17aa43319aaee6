"""`fastmtcnn` command line: a thin layer over the library API.

Each subcommand lives in fastmtcnn/commands/<name>.py with
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys

from .backends import BACKENDS, DEFAULT
from .config import PRESETS
from .detector_spec import DetectorSpec

# subcommand -> module; a module that is not installed (optional extra) is skipped
COMMANDS = {
    "detect": "fastmtcnn.commands.detect",
    "video": "fastmtcnn.commands.video",
    "align": "fastmtcnn.commands.align",
    "profile": "fastmtcnn.commands.profile",
    "batch": "fastmtcnn.commands.batch",
    "eval": "fastmtcnn.commands.evaluate",
    "tune": "fastmtcnn.commands.tune",
    "export-onnx": "fastmtcnn.commands.export",
    "plan": "fastmtcnn.commands.plan",
}


def add_detector_args(p: argparse.ArgumentParser) -> None:
    """The detector's knobs, shared by every subcommand that detects."""
    g = p.add_argument_group("detector")
    g.add_argument("--preset", choices=sorted(PRESETS), default="reference",
                   help="starting settings: 'reference' (facenet-pytorch defaults) or 'jetson' "
                        "(the original post: minsize 40, thresholds 0.7 0.6 0.7, batches 256/64)")
    g.add_argument("--minsize", type=float,
                   help="smallest face side in pixels (default 20; larger = faster, misses small faces)")
    g.add_argument("--factor", type=float, help="pyramid scale step (default 0.709; smaller = faster, lower recall)")
    g.add_argument("--thresholds", type=float, nargs=3, metavar=("P", "R", "O"),
                   help="PNet/RNet/ONet score thresholds (default 0.6 0.7 0.7)")
    g.add_argument("--max-batch", type=int, nargs="+", metavar="N", help="RNet/ONet batch limit (one number or two)")
    pk = g.add_mutually_exclusive_group()
    pk.add_argument("--per-scale", action="store_true",
                    help="run PNet once per pyramid level instead of one packed canvas")
    pk.add_argument("--packed", action="store_true",
                    help="always one packed canvas (default: whichever is faster for the backend and frame size)")
    g.add_argument("--backend", choices=list(BACKENDS), default=None,
                   help=f"network engine: {DEFAULT} (default on the CPU), onnxruntime (implied by --providers), "
                        "or torch (--device cuda)")
    g.add_argument("--device", help="torch backend device, e.g. cuda or cpu")
    g.add_argument("--providers", nargs="+", help="ONNX Runtime execution providers, e.g. CUDAExecutionProvider "
                                                   "(only CPUExecutionProvider is tested here)")
    g.add_argument("--threads", type=int, help="CPU threads for the networks")
    prec = g.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_const", const=True, dest="fp16",
                      help="torch: nets in half precision (the default on CUDA)")
    prec.add_argument("--fp32", action="store_const", const=False, dest="fp16",
                      help="torch on CUDA: nets in float32 without TF32, the CPU backends' numbers (slower)")
    g.add_argument("--graphs", nargs="?", choices=["auto", "on", "off"], const="on", default="auto",
                   help="torch on CUDA: run the cascade with fixed shapes as CUDA graph replays. auto (default): "
                        "a batch shape runs eagerly the first time, as a graph from its second time on (video, "
                        "same-size photos); on: capture at once; off: never")


#: the library's argument names that are command-line flags (max_batch is --max-batch)
_FLAG_WORDS = ("minsize", "factor", "thresholds", "max_batch", "threads", "device", "providers", "fp16", "graphs",
               "backend", "chunk", "decoder", "width", "height", "max_frames", "nvdec_sessions", "retries",
               "retry_delay", "timeout_s", "track_every", "out", "json", "show", "out_fps", "fourcc")
#: library names whose flag is another word
_RENAMED = {"timeout_s": "timeout"}


def in_flag_terms(message: str) -> str:
    """A library error in the command line's terms: `device=` and a leading `minsize ...` become
    `--device` and `--minsize`, so the user reads the flag they typed."""
    def flag(m: re.Match) -> str:
        return "--" + _RENAMED.get(m[1], m[1]).replace("_", "-")

    words = "|".join(_FLAG_WORDS)
    return re.sub(rf"^({words})\b", flag, re.sub(rf"\b({words})=", flag, message))


def detector_spec(args: argparse.Namespace) -> DetectorSpec:
    """The detector flags as a DetectorSpec: what the library (and its worker processes) builds from."""
    mb = args.max_batch
    if mb and len(mb) > 2:
        raise ValueError(f"--max-batch takes one number (both nets) or two (RNet ONet), got {len(mb)}")
    gpu = {} if getattr(args, "fp16", None) is None else {"fp16": args.fp16}
    graphs = getattr(args, "graphs", "auto") or "auto"
    if graphs != "auto":
        gpu["graphs"] = graphs == "on"
    backend = args.backend or ("onnxruntime" if args.providers else DEFAULT)
    if gpu and backend != "torch":
        flags = ["--fp16" if gpu.get("fp16") else "--fp32" if "fp16" in gpu else None,
                 "--graphs" if "graphs" in gpu else None]
        named = [f for f in flags if f]
        raise ValueError(f"{' and '.join(named)} need{'s' if len(named) == 1 else ''} the torch backend: "
                         "add --backend torch --device cuda")
    if args.device is not None and backend != "torch":
        raise ValueError("--device is for the torch backend: add --backend torch (ONNX Runtime takes --providers)")
    if args.providers and backend != "onnxruntime":
        raise ValueError(f"--providers is for the onnxruntime backend; the {backend} backend takes "
                         f"{'--device' if backend == 'torch' else 'none'}")
    options = {k: getattr(args, k) for k in ("providers", "threads", "device") if getattr(args, k) is not None}
    if getattr(args, "exif", False):
        options["exif"] = True
    try:
        return DetectorSpec(preset=args.preset, minsize=args.minsize, factor=args.factor,
                            thresholds=tuple(args.thresholds) if args.thresholds else None,
                            max_batch=(tuple(mb) if mb and len(mb) == 2 else (mb[0] if mb else None)),
                            packed=False if args.per_scale else (True if getattr(args, "packed", False) else None),
                            backend=backend,
                            options={**options, **gpu})
    except ValueError as e:
        raise ValueError(in_flag_terms(str(e))) from None


def detector_from_args(args: argparse.Namespace):
    try:
        return detector_spec(args).build()
    except (ValueError, RuntimeError) as e:
        raise type(e)(in_flag_terms(str(e))) from None


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="fastmtcnn", description="Fast, faithful MTCNN face detection.")
    parser.add_argument("--version", action="version", version=f"fastmtcnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("fastmtcnn"):
                continue  # not part of this build
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:  # bad settings or environment: one line, no traceback
        print(f"fastmtcnn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
