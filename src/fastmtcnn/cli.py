"""`fastmtcnn` command line: a thin layer over the library API.

Each subcommand lives in fastmtcnn/commands/<name>.py with `register(sub)`,
which adds its parser and sets `func(args) -> int`. `fastmtcnn COMMAND` imports
that command's module only (so it pays for nothing the API would not, for the
same job); `fastmtcnn --help` lists the commands from `COMMANDS` alone.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from typing import Iterable

from .backends import BACKENDS, DEFAULT
from .config import PRESETS
from .detector_spec import DetectorSpec

#: subcommand -> (module, one-line help); a module that is not installed (optional extra) is skipped
COMMANDS = {
    "detect": ("fastmtcnn.commands.detect", "detect faces in images (files, folders, globs)"),
    "video": ("fastmtcnn.commands.video",
              "detect faces in video files, cameras, RTSP/HTTP streams or GStreamer pipelines"),
    "align": ("fastmtcnn.commands.align",
              "write aligned face crops (5-point template) and margin crops, one file per face"),
    "profile": ("fastmtcnn.commands.profile",
                "time per stage (decode, pyramid, PNet, NMS, crops, RNet, ONet, draw), packed vs per-scale"),
    "batch": ("fastmtcnn.commands.batch", "detect faces in a large collection into Parquet (resumable; local or Ray)"),
    "eval": ("fastmtcnn.commands.evaluate", "accuracy against labelled faces (WIDER FACE or JSON ground truth)"),
    "tune": ("fastmtcnn.commands.tune", "sweep minsize/factor/thresholds: speed vs recall, Pareto front, plot"),
    "export-onnx": ("fastmtcnn.commands.export",
                    "write PNet (fixed tile size: one engine for every image size), RNet, ONet as ONNX + plan.json"),
    "plan": ("fastmtcnn.commands.plan", "show the PNet tiles of images of given sizes, piece by piece"),
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
                        "or torch (implied by --device cuda)")
    g.add_argument("--device", help="cuda (or cuda:N): run on the GPU (the torch backend); cpu: the CPU default "
                                    "(with --backend torch: torch on the CPU)")
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


#: library argument = value -> the flag the user typed, where it is not `--NAME VALUE`
_FLAG_VALUES = {("fp16", "True"): "--fp16", ("fp16", "False"): "--fp32", ("graphs", "True"): "--graphs on",
                ("graphs", "False"): "--graphs off", ("packed", "True"): "--packed", ("packed", "False"): "--per-scale"}
#: the library's argument names that are command-line flags (max_batch is --max-batch)
_FLAG_WORDS = ("minsize", "factor", "thresholds", "max_batch", "packed", "preset", "backend", "threads", "device",
               "providers", "fp16", "graphs", "decoder", "width", "height", "actors", "num_cpus", "object_store_mb",
               "column", "chunk", "max_frames", "nvdec_sessions", "retries", "retry_delay", "timeout_s",
               "track_every", "out", "json", "show", "out_fps", "fourcc")
#: library names whose flag is another word
_RENAMED = {"timeout_s": "timeout"}
_WORDS = "|".join(_FLAG_WORDS)
QUOTES = "'\""
# `name=` with an optional Python value ('cuda', True, 3, ['A', 'B']), at the start of the message or after
# a space or bracket (never inside a path or URL)
_ARGUMENT = re.compile(rf"(?<![^\s(\[])({_WORDS})=('[^']*'|\"[^\"]*\"|\[[^\]]*\]|[\w.:+-]+)?")


def in_flag_terms(message: str) -> str:
    """A library error in the command line's terms: the one translator of the CLI (`main` applies it).

    The library names its arguments (`device='cuda'`, `fp16=True`, `minsize must ...`); the user
    typed flags, so they read `--device cuda`, `--fp16`, `--minsize must ...`.
    """
    def flag(m: re.Match) -> str:
        name, value = m[1], m[2]
        if (name, value) in _FLAG_VALUES:
            return _FLAG_VALUES[name, value]
        text = "--" + _RENAMED.get(name, name).replace("_", "-")
        if value is None or value == "True":
            return text
        if value.startswith("["):
            return " ".join([text, *(a or b for a, b in re.findall(r"'([^']*)'|\"([^\"]*)\"", value))])
        return f"{text} {value.strip(QUOTES)}"

    message = _ARGUMENT.sub(flag, message)
    return re.sub(rf"^({_WORDS}) must\b", lambda m: f"--{_RENAMED.get(m[1], m[1]).replace('_', '-')} must", message)


def detector_spec(args: argparse.Namespace) -> DetectorSpec:
    """The detector flags as a DetectorSpec: what the library (and its worker processes) builds from.

    Which flags go together is the library's rule (`options.check`, run by DetectorSpec); its
    errors reach the user through `main`, in flag terms."""
    mb = args.max_batch
    if mb and len(mb) > 2:
        raise ValueError(f"--max-batch takes one number (both nets) or two (RNet ONet), got {len(mb)}")
    options = {k: getattr(args, k) for k in ("providers", "threads", "device") if getattr(args, k) is not None}
    if getattr(args, "fp16", None) is not None:
        options["fp16"] = args.fp16
    graphs = getattr(args, "graphs", "auto") or "auto"
    if graphs != "auto":
        options["graphs"] = graphs == "on"
    return DetectorSpec(preset=args.preset, minsize=args.minsize, factor=args.factor,
                        thresholds=tuple(args.thresholds) if args.thresholds else None,
                        max_batch=(tuple(mb) if mb and len(mb) == 2 else (mb[0] if mb else None)),
                        packed=False if args.per_scale else (True if getattr(args, "packed", False) else None),
                        backend=args.backend, exif=bool(getattr(args, "exif", False)), options=options)


def detector_from_args(args: argparse.Namespace):
    return detector_spec(args).build()


def _command_in(argv: list[str]) -> str | None:
    """The subcommand argv names: its first word that is not an option (the top level takes no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(load: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser; `load` names the commands whose modules are imported and parsers built (None: all).
    The others are listed with their one-line help, so `fastmtcnn --help` imports no command."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="fastmtcnn", description="Fast, faithful MTCNN face detection.")
    parser.add_argument("--version", action="version", version=f"fastmtcnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = set(COMMANDS if load is None else load)
    for name, (module, summary) in COMMANDS.items():
        if name not in wanted:
            sub.add_parser(name, help=summary, add_help=False)
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("fastmtcnn"):
                continue  # not part of this build
            raise
        mod.register(_Subcommand(sub, name, summary))
    return parser


class _Subcommand:
    """What a command module's `register` adds its parser to: its one-line help comes from COMMANDS."""

    def __init__(self, sub, name: str, summary: str) -> None:
        self.sub, self.name, self.summary = sub, name, summary

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        assert name == self.name, f"{self.name}'s module registers {name!r}"
        return self.sub.add_parser(name, help=self.summary, **kwargs)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    parser = build_parser(load=[command] if command in COMMANDS else [])
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
        print(f"fastmtcnn {args.command}: error: {in_flag_terms(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
