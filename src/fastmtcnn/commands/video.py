"""`fastmtcnn video SOURCE`: faces in a video file, camera, RTSP/HTTP stream or GStreamer pipeline.

Decoding runs in its own thread (`sources.FrameReader`) and encoding of the
annotated output in another, so both overlap detection; queues are bounded,
so memory stays flat on hours-long streams.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from ..cli import add_detector_args, detector_from_args

#: FourCC per output extension (what pip's OpenCV FFmpeg build can write)
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


def register(sub) -> None:
    p = sub.add_parser(
        "video", help="detect faces in a video file, camera, RTSP/HTTP stream or GStreamer pipeline",
        description="Detect faces frame by frame in SOURCE: a video file, a camera index (0), an "
                    "RTSP/HTTP URL, or a GStreamer pipeline ending in appsink. Draws boxes, scores, "
                    "landmarks and the current FPS. Files are processed frame by frame; live sources "
                    "drop frames that arrive while the detector is busy, rather than lag.")
    p.add_argument("source", metavar="SOURCE", help="video file, camera index, URL or GStreamer pipeline")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="FILE", help="write the annotated video here (.mp4, .avi, .mkv)")
    out.add_argument("--show", action="store_true", help="show the annotated video in a window (q or Esc quits)")
    out.add_argument("--json", metavar="FILE", help="write JSON Lines: one record per frame, then an end record "
                                                     "('-' for stdout)")
    out.add_argument("--out-fps", type=float, help="frame rate of --out (default: the source's, else 25)")
    out.add_argument("--fourcc", help="codec of --out as a FourCC, e.g. mp4v, MJPG, XVID (default by extension)")
    out.add_argument("-q", "--quiet", action="store_true", help="no per-frame lines, only the summary")
    src = p.add_argument_group("source")
    src.add_argument("--width", type=int, help="frame width to detect on (frames are resized; cameras are asked "
                                               "for it); with only one of --width/--height the aspect is kept")
    src.add_argument("--height", type=int, help="frame height to detect on")
    src.add_argument("--max-frames", type=int, help="stop after this many frames")
    src.add_argument("--no-drop", action="store_true",
                     help="live sources: queue every frame instead of dropping stale ones (output lags)")
    src.add_argument("--retries", type=int, default=5,
                     help="live sources: reconnect attempts when opening fails or the source is lost (default 5)")
    src.add_argument("--retry-delay", type=float, default=0.5,
                     help="first reconnect delay in seconds, doubled per attempt up to 8 s (default 0.5)")
    src.add_argument("--timeout", type=float, default=5.0, help="stream open/read timeout in seconds (default 5)")
    src.add_argument("--verbose", action="store_true", help="show OpenCV/FFmpeg's own log messages")
    trk = p.add_argument_group("tracking")
    trk.add_argument("--track", action="store_true",
                     help="tracking mode: between full detections run only RNet/ONet around the previous "
                          "frame's faces (much faster; new faces appear at the next full detection)")
    trk.add_argument("--track-every", type=int, default=10, metavar="K",
                     help="tracking mode: full detection every K frames (default 10), and whenever a face is lost")
    add_detector_args(p)
    p.set_defaults(func=run)


class FpsMeter:
    """Frames per second over the last second or so (an exponential average of frame intervals)."""

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha, self.last, self.dt = alpha, None, None

    def tick(self) -> float | None:
        now = time.perf_counter()
        if self.last is not None:
            d = now - self.last
            self.dt = d if self.dt is None else (1 - self.alpha) * self.dt + self.alpha * d
        self.last = now
        return 1.0 / self.dt if self.dt else None


def annotate(image: np.ndarray, faces, fps: float | None, mode: str | None = None) -> np.ndarray:
    """The overlay of the live view and --out: boxes, scores, landmarks, and a status panel (FPS, mode)."""
    from ..draw import draw

    out = draw(image, faces)
    text = "  ".join(t for t in (f"{fps:.1f} FPS" if fps else None, mode) if t)
    if text:
        t = max(1, round(max(out.shape[:2]) / 500))
        font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.5 * t
        (tw, th), base = cv2.getTextSize(text, font, scale, t)
        pad = 4 * t
        x1, y1 = min(out.shape[1], tw + 2 * pad), min(out.shape[0], th + base + 2 * pad)
        out[:y1, :x1] = (out[:y1, :x1] * 0.4).astype(np.uint8)  # darkened panel: readable on any frame
        cv2.putText(out, text, (pad, pad + th), font, scale, (255, 255, 0), t, cv2.LINE_AA)
    return out


class VideoSink:
    """Encode RGB frames to a file in a background thread (bounded queue: waits rather than grows)."""

    def __init__(self, path: str, fps: float, size: tuple[int, int], fourcc: str | None = None) -> None:
        ext = Path(path).suffix.lower()
        code = fourcc or FOURCC.get(ext, "mp4v")
        if len(code) != 4:
            raise ValueError(f"--fourcc must be 4 characters, got {code!r}")
        self.path = path
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*code), fps, size)
        if not self.writer.isOpened():
            raise OSError(f"cannot write {path}: no {code} encoder for '{ext or 'no extension'}' here "
                          f"(try .mp4 or .avi, or --fourcc)")
        self.frames = 0
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="fastmtcnn-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            rgb = self._queue.get()
            if rgb is None:
                break
            self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            self.frames += 1
        self.writer.release()

    def write(self, rgb: np.ndarray) -> None:
        self._queue.put(rgb)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class Window:
    """An OpenCV window, or a one-line error when there is no display or no GUI support."""

    name = "fastmtcnn"

    def __init__(self) -> None:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise RuntimeError("--show needs a display (DISPLAY is not set); use --out FILE or --json instead")
        try:
            cv2.namedWindow(self.name, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise RuntimeError("--show needs OpenCV with GUI support: pip install opencv-python "
                               "(opencv-python-headless has no windows); or use --out FILE") from None

    def show(self, rgb: np.ndarray) -> bool:
        """Show a frame; False when the user pressed q or Esc, or closed the window."""
        cv2.imshow(self.name, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        try:
            visible = cv2.getWindowProperty(self.name, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            visible = True
        return key not in (ord("q"), 27) and visible

    def close(self) -> None:
        cv2.destroyWindow(self.name)


def quiet_video_logs() -> None:
    """Our messages say what went wrong in one line; FFmpeg's and OpenCV's own logs only add noise."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read when the FFmpeg backend loads
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # an OpenCV without the utils.logging binding: keep its default
        pass


def _check(args: argparse.Namespace) -> None:
    for name in ("width", "height", "max_frames", "track_every"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.retries < 0 or args.retry_delay < 0 or args.timeout <= 0:
        raise ValueError("--retries and --retry-delay must be >= 0 and --timeout > 0")
    if args.out_fps is not None and args.out_fps <= 0:
        raise ValueError(f"--out-fps must be > 0, got {args.out_fps}")
    for name in ("out", "json"):
        path = getattr(args, name)
        if path and path != "-" and not Path(path).resolve().parent.is_dir():
            raise OSError(f"cannot write {path}: folder {Path(path).parent} does not exist")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..sources import FrameReader, SourceError, parse_source
    from ..track import Tracker

    _check(args)
    if not args.verbose:
        quiet_video_logs()
    spec = parse_source(args.source)
    text = sys.stderr if args.json == "-" else sys.stdout
    window = Window() if args.show else None  # fail before opening anything
    det = detector_from_args(args)
    tracker = Tracker(det, every=args.track_every) if args.track else None
    reader = FrameReader(spec, width=args.width, height=args.height, drop_stale=None if not args.no_drop else False,
                         retries=args.retries if spec.live else 0, retry_delay=args.retry_delay,
                         timeout_s=args.timeout, max_frames=args.max_frames,
                         on_event=lambda m: print(m, file=sys.stderr, flush=True))
    if spec.live and reader.drop_stale:
        print(f"{spec}: live source: frames that arrive while the detector is busy are dropped, "
              f"not queued (--no-drop to keep them)", file=text)
    jf = None
    sink = None
    frames = faces_total = 0
    error = None
    status = 0
    meter = FpsMeter()
    show_lines = not args.quiet and not (args.out or args.show or args.json)
    bar = tqdm(total=reader.expected_frames, unit="frame", file=sys.stderr, leave=False,
               disable=True if show_lines else None)
    t0 = time.perf_counter()
    try:
        if args.json:
            jf = sys.stdout if args.json == "-" else open(args.json, "w", encoding="utf-8")
        for frame in reader:
            if tracker:
                faces, tracked = tracker.detect(frame.image)
                mode = "track" if tracked else "full"
            else:
                faces, mode = det.detect(frame.image), None
            fps = meter.tick()
            frames += 1
            faces_total += len(faces)
            h, w = frame.image.shape[:2]
            if args.out or window:
                shown = annotate(frame.image, faces, fps, mode)
                if args.out:
                    if sink is None:
                        sink = VideoSink(args.out, args.out_fps or reader.fps or 25.0, (w, h), args.fourcc)
                    sink.write(shown)
                if window and not window.show(shown):
                    break
            if jf:
                rec = {"frame": frame.index, "time": round(frame.time, 4), "width": w, "height": h}
                if mode:
                    rec["mode"] = mode
                rec["faces"] = faces.to_list()
                jf.write(json.dumps(rec) + "\n")
            if show_lines:
                print(f"frame {frame.index} ({frame.time:.2f}s): {len(faces)} face{'s' if len(faces) != 1 else ''}"
                      + (f" [{mode}]" if mode else ""), file=text, flush=True)
            bar.update(1)
    except SourceError as e:
        if not frames:
            raise
        error, status = str(e), 1
    except KeyboardInterrupt:
        error, status = "interrupted", 130
    finally:
        bar.close()
        reader.close()
        if sink:
            sink.close()
        if window:
            window.close()
    dt = time.perf_counter() - t0
    mean_fps = frames / dt if dt > 0 else 0.0
    end = error or reader.stats.end or "end"
    if reader.truncated:
        end = f"file ended after {reader.stats.frames} of {reader.expected_frames} frames (truncated or corrupt)"
        print(f"warning: {spec}: {end}", file=sys.stderr)
    if jf:
        rec = {"end": end, "frames": frames, "faces": faces_total, "mean_fps": round(mean_fps, 3),
               "dropped": reader.stats.dropped, "reconnects": reader.stats.reconnects}
        if error:
            rec["error"] = error
        jf.write(json.dumps(rec) + "\n")
        if jf is not sys.stdout:
            jf.close()
    if error and status == 1:
        print(f"error: {error}", file=sys.stderr)
    line = f"{spec}: {frames} frames, {faces_total} faces, mean {mean_fps:.2f} FPS ({dt:.1f}s)"
    if spec.live:
        line += f", {reader.stats.dropped} stale frames dropped"
        if reader.stats.reconnects:
            line += f", {reader.stats.reconnects} reconnects"
    if tracker:
        s = tracker.stats
        line += f"; tracking: {s.full} full, {s.tracked} tracked, {s.redetect} re-detected"
    if sink:
        line += f" -> {args.out}"
    print(line, file=text)
    return status
