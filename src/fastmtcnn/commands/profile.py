"""`fastmtcnn profile PATH`: where a frame's time goes, stage by stage, packed vs per-scale PNet.

The original post found its bottlenecks with cProfile; this is that study
built in. Each frame is decoded once, then run through two detectors with
the same settings, one with the packed single-pass PNet and one with the
per-scale loop (interleaved frame by frame, so machine load hits both
alike), and drawn. Stage times come from the pipeline's own timer
(`MTCNN.timer`); decoding and drawing are timed here.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from ..cli import add_detector_args, detector_from_args
from . import plural

#: rows of the table, in pipeline order (the middle ones are the pipeline timer's names)
PIPELINE_STAGES = ("integral", "pyramid", "pnet", "candidates", "crops", "rnet", "nms", "onet", "to_host")
ROWS = ("decoding",) + PIPELINE_STAGES + ("other", "drawing")


def register(sub) -> None:
    p = sub.add_parser(
        "profile",
        description="Run N frames of an image or video and print the time per stage with percentages, "
                    "for the packed single-pass PNet and the per-scale loop side by side. 'other' is "
                    "detector time outside the named stages (Python glue).")
    p.add_argument("path", metavar="PATH", help="an image (decoded again for every frame) or a video file")
    p.add_argument("-n", "--frames", type=int, default=20, help="frames to time (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed frames first (default 2)")
    p.add_argument("--width", type=int, help="resize frames to this width (keeps the aspect without --height)")
    p.add_argument("--height", type=int, help="resize frames to this height")
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON ('-' for stdout)")
    p.add_argument("--cprofile", type=int, metavar="N", nargs="?", const=25,
                   help="also run the packed detector under cProfile and print its top N functions (default 25)")
    add_detector_args(p)
    p.set_defaults(func=run)


class FrameSource:
    """Frames of an image (decoded from the file every time) or a video (rewound at its end), timed."""

    def __init__(self, path: str, width: int | None, height: int | None) -> None:
        from ..images import IMAGE_SUFFIXES, read_image
        from ..sources import open_capture, parse_source

        self.path, self.width, self.height = path, width, height
        self.is_image = Path(path).suffix.lower() in IMAGE_SUFFIXES
        if self.is_image:
            read_image(path)  # fail now, with the image's own message
            self.cap = None
        else:
            self.spec = parse_source(path)
            if self.spec.kind != "file":
                raise ValueError(f"{path}: profile reads image or video files, not live sources")
            self.cap = open_capture(self.spec)

    def read(self):
        """(RGB frame, seconds spent decoding it)."""
        import cv2

        from ..images import read_image
        from ..sources import SourceError, fit_size, open_capture, to_rgb_frame

        t = time.perf_counter()
        if self.is_image:
            img = read_image(self.path)
            size = fit_size(img.shape[1], img.shape[0], self.width, self.height)
            if size != (img.shape[1], img.shape[0]):
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            return img, time.perf_counter() - t
        for attempt in range(2):
            ok, bgr = self.cap.read()
            if ok:
                size = fit_size(bgr.shape[1], bgr.shape[0], self.width, self.height)
                return to_rgb_frame(bgr, size), time.perf_counter() - t
            self.cap.release()  # end of the video: start again
            self.cap = open_capture(self.spec)
        raise SourceError(f"{self.path}: no decodable frames")

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


def _detectors(args: argparse.Namespace):
    packed_args = copy.copy(args)
    packed_args.per_scale, packed_args.packed = False, True
    loop_args = copy.copy(args)
    loop_args.per_scale, loop_args.packed = True, False
    return detector_from_args(packed_args), detector_from_args(loop_args)


def profile_frames(source: FrameSource, dets: dict, frames: int, warmup: int) -> dict:
    """Seconds per row (decoding, pipeline stages, other, drawing) summed over frames, per detector."""
    from ..draw import draw

    totals = {name: dict.fromkeys(ROWS, 0.0) for name in dets}
    wall = dict.fromkeys(dets, 0.0)
    for i in range(warmup + frames):
        timed = i >= warmup
        img, t_dec = source.read()
        for name, det in dets.items():
            det.timer.enabled = timed
            t0 = time.perf_counter()
            faces = det.detect(img)
            t1 = time.perf_counter()
            draw(img, faces)
            t2 = time.perf_counter()
            if timed:
                totals[name]["decoding"] += t_dec
                totals[name]["drawing"] += t2 - t1
                wall[name] += t1 - t0
    for name, det in dets.items():
        det.timer.enabled = False
        for stage, s in det.timer.totals.items():
            totals[name][stage] = totals[name].get(stage, 0.0) + s
        named = sum(det.timer.totals.values())
        totals[name]["other"] = max(0.0, wall[name] - named)
        det.timer.totals.clear()
    return totals


def format_table(totals: dict, frames: int) -> str:
    names = list(totals)
    heads = "".join(f"{n + ' ms/frame':>20} {'%':>6}" for n in names)
    lines = [f"{'stage':<12}{heads}" + (f"{'ratio':>8}" if len(names) == 2 else "")]
    lines.append("-" * len(lines[0]))
    sums = {n: sum(totals[n].values()) for n in names}
    rows = [r for r in ROWS if any(totals[n].get(r, 0) for n in names)]
    rows += [r for n in names for r in totals[n] if r not in ROWS and r not in rows]  # stages we don't know yet
    for r in rows + ["total"]:
        line = f"{r:<12}"
        vals = []
        for n in names:
            v = sums[n] if r == "total" else totals[n].get(r, 0.0)
            vals.append(v)
            line += f"{1000 * v / frames:>20.2f} {100 * v / sums[n] if sums[n] else 0:>5.1f}%"
        if len(names) == 2:
            line += f"{vals[1] / vals[0]:>7.2f}x" if vals[0] > 0 else f"{'-':>8}"
        lines.append(line)
    lines.append(f"{'FPS':<12}" + "".join(f"{frames / sums[n]:>20.2f} {'':>6}" for n in names))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.warmup < 0:
        raise ValueError("--frames must be >= 1 and --warmup >= 0")
    source = FrameSource(args.path, args.width, args.height)
    try:
        packed, loop = _detectors(args)
        dets = {"packed": packed, "per-scale": loop}
        img, _ = source.read()
        h, w = img.shape[:2]
        totals = profile_frames(source, dets, args.frames, args.warmup)
        text = sys.stderr if args.json == "-" else sys.stdout
        print(f"{args.path}: {w}x{h}, {plural(args.frames, 'frame')} (after {args.warmup} warm-up), "
              f"backend {packed.backend.name}, minsize {packed.config.minsize:g}, factor {packed.config.factor:g}, "
              f"thresholds {'/'.join(f'{t:g}' for t in packed.config.thresholds)}", file=text)
        print(f"packed PNet:    {packed.plan(h, w).describe()}", file=text)
        print(f"per-scale PNet: {loop.plan(h, w).describe()}", file=text)
        print(format_table(totals, args.frames), file=text)
        print("ratio = per-scale / packed time. decoding is the same frames for both (decoded once).", file=text)
        if args.json:
            rec = {"path": args.path, "width": w, "height": h, "frames": args.frames, "backend": packed.backend.name,
                   "config": packed.config.to_dict(),
                   "ms_per_frame": {n: {k: round(1000 * v / args.frames, 3) for k, v in t.items()}
                                    for n, t in totals.items()}}
            if args.json == "-":
                print(json.dumps(rec))
            else:
                Path(args.json).write_text(json.dumps(rec, indent=1))
        if args.cprofile:
            _cprofile(source, packed, args.frames, args.cprofile, text)
    finally:
        source.close()
    return 0


def _cprofile(source: FrameSource, det, frames: int, top: int, out) -> None:
    """The original post's method: cProfile over the same work, top functions by own time."""
    import cProfile
    import io
    import pstats

    from ..draw import draw

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(frames):
        img, _ = source.read()
        draw(img, det.detect(img))
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    print(f"\ncProfile, packed, {plural(frames, 'frame')}, top {top} by own time:", file=out)
    print(buf.getvalue().rstrip(), file=out)
