"""`fastmtcnn video SOURCE...`: faces in video files, cameras, RTSP/HTTP streams or GStreamer pipelines.

Full detection goes through `streams.StreamDetector`: every source decodes in
its own thread, frames of all sources share detector calls of up to `--chunk`
frames, and the annotated `--out` videos are drawn and encoded in a thread per
source; queues are bounded, so memory stays flat on hours-long streams.
`--track` (one source) runs the tracker frame by frame, as before.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from ..cli import add_detector_args, detector_from_args
from . import plural

#: FourCC per output extension (what pip's OpenCV FFmpeg build can write)
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


def register(sub) -> None:
    p = sub.add_parser(
        "video", help="detect faces in video files, cameras, RTSP/HTTP streams or GStreamer pipelines",
        description="Detect faces in every SOURCE: video files, camera indices (0), RTSP/HTTP URLs, or "
                    "GStreamer pipelines ending in appsink. Frames of all sources are detected together in "
                    "chunks; outputs are per source. Draws boxes, scores, landmarks and the current FPS. "
                    "Every frame of a file is processed, in order; live sources drop frames that arrive "
                    "while the detector is busy, rather than lag, and reconnect when lost.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="video file, camera index, URL or GStreamer pipeline (several: processed at once)")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="FILE|DIR",
                     help="write the annotated video here (.mp4, .avi, .mkv); with several sources a folder, "
                          "which gets NAME.mp4 per source (NAME: the file's stem, camera0, the URL's host/path)")
    out.add_argument("--show", action="store_true",
                     help="show the annotated video in a window (q or Esc quits; one source)")
    out.add_argument("--json", metavar="FILE|DIR", help="write JSON Lines: one record per frame, then an end record "
                                                         "('-' for stdout); with several sources a folder that "
                                                         "gets NAME.jsonl per source, or '-' (records carry 'source')")
    out.add_argument("--out-fps", type=float, help="frame rate of --out (default: the source's, else 25)")
    out.add_argument("--fourcc", help="codec of --out as a FourCC, e.g. mp4v, MJPG, XVID (default by extension)")
    out.add_argument("-q", "--quiet", action="store_true", help="no per-frame lines, only the summary")
    src = p.add_argument_group("source")
    src.add_argument("--width", type=int, help="frame width to detect on (frames are resized; cameras are asked "
                                               "for it); with only one of --width/--height the aspect is kept")
    src.add_argument("--height", type=int, help="frame height to detect on")
    src.add_argument("--max-frames", type=int, help="stop each source after this many frames")
    src.add_argument("--no-drop", action="store_true",
                     help="live sources: queue every frame instead of dropping stale ones (output lags)")
    src.add_argument("--retries", type=int, default=5,
                     help="live sources: reconnect attempts when opening fails or the source is lost (default 5)")
    src.add_argument("--retry-delay", type=float, default=0.5,
                     help="first reconnect delay in seconds, doubled per attempt up to 8 s (default 0.5)")
    src.add_argument("--timeout", type=float, default=5.0, help="stream open/read timeout in seconds (default 5)")
    src.add_argument("--verbose", action="store_true", help="show OpenCV/FFmpeg's own log messages")
    bat = p.add_argument_group("decoding and batching")
    bat.add_argument("--chunk", type=int, metavar="N",
                     help="most frames per detector call, from all sources (default 32 on a CUDA device, else 4); "
                          "results are the same for any N")
    bat.add_argument("--decoder", choices=["auto", "opencv", "nvdec"], default="auto",
                     help="auto (default): NVDEC on the GPU for files when --backend torch --device cuda and "
                          "PyNvVideoCodec is installed (pip install 'fastmtcnn[nvdec]'), else OpenCV")
    bat.add_argument("--nvdec-sessions", type=int, metavar="K",
                     help="NVDEC decoder sessions per file, each over every K-th keyframe segment "
                          "(default: 4 shared among the files)")
    trk = p.add_argument_group("tracking")
    trk.add_argument("--track", action="store_true",
                     help="tracking mode (one source, frame by frame): between full detections run only "
                          "RNet/ONet around the previous frame's faces (much faster; new faces appear at the "
                          "next full detection)")
    trk.add_argument("--track-every", type=int, default=10, metavar="K",
                     help="tracking mode: full detection every K frames (default 10), and whenever a face is lost")
    add_detector_args(p)
    p.set_defaults(func=run)


class FpsMeter:
    """Frames per second over the last `window` seconds: results come in chunks, so an average of frame
    intervals would jump between 0 and a chunk's duration."""

    def __init__(self, window: float = 1.0) -> None:
        self.window, self.times, self.start = window, deque(), None

    def tick(self) -> float | None:
        now = time.perf_counter()
        self.start = self.start if self.start is not None else now
        self.times.append(now)
        while self.times[0] < now - self.window:
            self.times.popleft()
        span = min(self.window, now - self.start)
        return len(self.times) / span if span > 0 else None


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
    """Draw and encode frames to a file in a background thread (bounded queue: waits rather than grows).

    Frames may be CUDA tensors (NVDEC): the copy to host memory happens here too, off the main thread.
    """

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
            item = self._queue.get()
            if item is None:
                break
            image, faces, fps, mode = item
            rgb = annotate(host_image(image), faces, fps, mode) if faces is not None else host_image(image)
            self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            self.frames += 1
        self.writer.release()

    def write(self, image, faces=None, fps: float | None = None, mode: str | None = None) -> None:
        """Queue a frame; with faces, it is annotated (boxes, landmarks, FPS, mode) before encoding."""
        self._queue.put((image, faces, fps, mode))

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def host_image(image) -> np.ndarray:
    """An RGB frame as a numpy array (NVDEC frames are CUDA tensors)."""
    return image if isinstance(image, np.ndarray) else image.cpu().numpy()


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
    for name in ("width", "height", "max_frames", "track_every", "chunk", "nvdec_sessions"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.retries < 0 or args.retry_delay < 0 or args.timeout <= 0:
        raise ValueError("--retries and --retry-delay must be >= 0 and --timeout > 0")
    if args.out_fps is not None and args.out_fps <= 0:
        raise ValueError(f"--out-fps must be > 0, got {args.out_fps}")
    several = len(args.sources) > 1
    if several:
        for flag in ("show", "track"):
            if getattr(args, flag):
                raise ValueError(f"--{flag} takes one source (got {len(args.sources)}); "
                                 f"use --out DIR / --json DIR for several")
        if args.out and Path(args.out).suffix.lower() in FOURCC:
            raise ValueError(f"with several sources --out is a folder (it gets NAME.mp4 per source), "
                             f"not a {Path(args.out).suffix} file")
    for name in ("out", "json"):
        path = getattr(args, name)
        if path and path != "-":
            if several and Path(path).exists() and not Path(path).is_dir():
                raise OSError(f"cannot write into {path}: with several sources --{name} is a folder")
            if not Path(path).resolve().parent.is_dir():
                raise OSError(f"cannot write {path}: folder {Path(path).parent} does not exist")


class SourceOutput:
    """Where one source's results go: its JSON Lines records, its annotated video, its lines of text."""

    def __init__(self, name: str, spec, args: argparse.Namespace, *, several: bool, text, lines: bool) -> None:
        self.spec, self.args, self.text, self.lines = spec, args, text, lines
        self.tag = {"source": name} if several else {}
        self.video = (str(Path(args.out) / f"{name}.mp4") if several else args.out) if args.out else None
        self.sink: VideoSink | None = None
        self.meter = FpsMeter()
        self.prefix = f"{name} " if several else ""
        self.own_json = None
        self.jf = sys.stdout if args.json == "-" else None
        if args.json and args.json != "-":
            self.jf = self.own_json = open(Path(args.json) / f"{name}.jsonl" if several else args.json, "w",
                                           encoding="utf-8")

    def frame(self, index: int, t: float, image, faces, mode: str | None, fps_source: float) -> np.ndarray | None:
        """Record one frame's faces; returns the annotated frame when a window needs it."""
        fps = self.meter.tick()
        h, w = (int(v) for v in image.shape[:2])
        shown = None
        if self.video:
            if self.sink is None:
                self.sink = VideoSink(self.video, self.args.out_fps or fps_source or 25.0, (w, h), self.args.fourcc)
            self.sink.write(image, faces, fps, mode)
        if self.args.show:
            shown = annotate(host_image(image), faces, fps, mode)
        if self.jf:
            rec = {**self.tag, "frame": index, "time": round(t, 4), "width": w, "height": h}
            if mode:
                rec["mode"] = mode
            rec["faces"] = faces.to_list()
            self.jf.write(json.dumps(rec) + "\n")
        if self.lines:
            print(f"{self.prefix}frame {index} ({t:.2f}s): {plural(len(faces), 'face')}"
                  + (f" [{mode}]" if mode else ""), file=self.text, flush=True)
        return shown

    def end(self, *, end: str, frames: int, faces: int, fps: float, wall_s: float, dropped: int, reconnects: int,
            error: str | None, decoder: str = "", extra: str = "", read: int = 0) -> None:
        """The end record, the closed outputs and the summary line of this source."""
        if self.jf and not self.jf.closed:
            rec = {**self.tag, "end": end, "frames": frames, "faces": faces, "mean_fps": round(fps, 3),
                   "read": read, "dropped": dropped, "reconnects": reconnects}
            if decoder:
                rec["decoder"] = decoder
            if error:
                rec["error"] = error
            self.jf.write(json.dumps(rec) + "\n")
            self.jf.flush()
        self.close()
        line = f"{self.spec}: {frames} frames, {faces} faces, mean {fps:.2f} FPS ({wall_s:.1f}s)"
        if self.spec.live:
            line += f", {dropped} stale frames dropped"
            if reconnects:
                line += f", {reconnects} reconnects"
        line += extra
        if self.sink:
            line += f" -> {self.video}"
        print(line, file=self.text, flush=True)

    def close(self) -> None:
        """Finish the video file and close the JSON file (also when the run breaks off)."""
        if self.sink:
            self.sink.close()
        if self.own_json:
            self.own_json.close()


def _frame_lines(args: argparse.Namespace) -> bool:
    """A text line per frame: only when nothing else (a video, a window, JSON) shows the results."""
    return not args.quiet and not (args.out or args.show or args.json)


def _truncated(spec, frames: int, expected: int | None) -> str:
    """The end of a file that stopped short of its header's frame count, also warned about on stderr."""
    end = f"file ended after {frames} of {expected} frames (truncated or corrupt)"
    print(f"warning: {spec}: {end}", file=sys.stderr)
    return end


def _announce_live(specs, args, text) -> None:
    for spec in specs:
        if spec.live and not args.no_drop:
            print(f"{spec}: live source: frames that arrive while the detector is busy are dropped, "
                  f"not queued (--no-drop to keep them)", file=text)


def run(args: argparse.Namespace) -> int:
    from ..sources import parse_source

    _check(args)
    if not args.verbose:
        quiet_video_logs()
    specs = [parse_source(s) for s in args.sources]
    text = sys.stderr if args.json == "-" else sys.stdout
    window = Window() if args.show else None  # fail before opening anything
    try:
        det = detector_from_args(args)
        if args.track:
            return _run_tracking(args, det, specs[0], text, window)
        return _run_streams(args, det, specs, text, window)
    finally:
        if window:
            window.close()


def _run_tracking(args, det, spec, text, window) -> int:
    """--track: one source, frame by frame (the tracker needs each frame's faces before the next)."""
    from tqdm import tqdm

    from ..sources import FrameReader, SourceError
    from ..track import Tracker

    tracker = Tracker(det, every=args.track_every)
    reader = FrameReader(spec, width=args.width, height=args.height, drop_stale=None if not args.no_drop else False,
                         retries=args.retries if spec.live else 0, retry_delay=args.retry_delay,
                         timeout_s=args.timeout, max_frames=args.max_frames)
    _announce_live([spec], args, text)
    lines = _frame_lines(args)
    output = SourceOutput(spec.text, spec, args, several=False, text=text, lines=lines)
    frames = faces_total = 0
    error, status = None, 0
    bar = tqdm(total=reader.expected_frames, unit="frame", file=sys.stderr, leave=False,
               disable=True if lines else None)
    t0 = time.perf_counter()
    try:
        for frame in reader:
            faces, tracked = tracker.detect(frame.image)
            frames += 1
            faces_total += len(faces)
            shown = output.frame(frame.index, frame.time, frame.image, faces, "track" if tracked else "full",
                                 reader.fps)
            if window and not window.show(shown):
                break
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
    dt = time.perf_counter() - t0
    end = error or reader.stats.end or "end"
    if reader.truncated:
        end = _truncated(spec, reader.stats.frames, reader.expected_frames)
    if error and status == 1:
        print(f"error: {error}", file=sys.stderr)
    s = tracker.stats
    output.end(end=end, frames=frames, faces=faces_total, fps=frames / dt if dt > 0 else 0.0, wall_s=dt,
               dropped=reader.stats.dropped, reconnects=reader.stats.reconnects, error=error, read=reader.stats.frames,
               extra=f"; tracking: {s.full} full, {s.tracked} tracked, {s.redetect} re-detected")
    return status


def _run_streams(args, det, specs, text, window) -> int:
    """Full detection of every source, frames of all sources batched into shared detector calls."""
    from tqdm import tqdm

    from ..sources import SourceError
    from ..streams import StreamDetector

    several = len(specs) > 1
    for name in ("out", "json"):
        path = getattr(args, name)
        if several and path and path != "-":
            Path(path).mkdir(exist_ok=True)
    lines = _frame_lines(args)
    outputs = {}
    status = 0
    ended = set()

    def finish(st) -> None:
        nonlocal status
        ended.add(st.name)
        if not several and st.error and not st.frames:
            if st.name in outputs:
                outputs[st.name].close()
            return  # nothing came through: raised below as the one-line error of a source that cannot open
        out = outputs.get(st.name)
        if out is None:  # could not be opened: no outputs were made for it
            out = outputs[st.name] = SourceOutput(st.name, st.spec, args, several=several, text=text, lines=False)
        end = st.error or st.end or "end"
        if st.truncated:
            end = _truncated(st.spec, st.frames, st.expected_frames)
        if st.error:
            status = max(status, 1)
            print(f"error: {st.error}", file=sys.stderr)
        out.end(end=end, frames=st.frames, faces=st.faces, fps=st.fps, wall_s=st.wall_s, dropped=st.dropped,
                reconnects=st.reconnects, error=st.error, decoder=st.decoder, read=st.read)

    streams = StreamDetector(det, specs, chunk=args.chunk, decoder=args.decoder,
                             max_frames=args.max_frames, width=args.width, height=args.height,
                             drop_stale=False if args.no_drop else None, retries=args.retries,
                             retry_delay=args.retry_delay, timeout_s=args.timeout,
                             nvdec_sessions=args.nvdec_sessions, skip_failed=several, on_end=finish)
    _announce_live([r.spec for r in streams.readers.values()], args, text)
    for name, st in streams.stats.items():
        if not st.error:
            outputs[name] = SourceOutput(name, st.spec, args, several=several, text=text, lines=lines)
    fps_of = {streams.names[i]: r.fps for i, r in streams.readers.items()}
    known = [st.expected_frames for st in streams.stats.values()]
    total = None if any(k is None for k in known) else sum(min(k, args.max_frames or k) for k in known)
    bar = tqdm(total=total, unit="frame", file=sys.stderr, leave=False, disable=True if lines else None)
    t0 = time.perf_counter()
    try:
        for r in streams:
            shown = outputs[r.source].frame(r.index, r.time, r.image, r.faces, None, fps_of.get(r.source, 0.0))
            if window and not window.show(shown):
                break
            bar.update(1)
    except KeyboardInterrupt:
        status = 130
    except BaseException:
        for out in outputs.values():  # a failed detector call: keep what was written readable
            out.close()
        raise
    finally:
        bar.close()
        streams.close()
    for st in streams.stats.values():  # stopped early (window closed, Ctrl-C): their end records too
        if st.name not in ended:
            if status == 130:
                st.error = None
                st.end = "interrupted"
            finish(st)
    if not several:
        st = next(iter(streams.stats.values()))
        if st.error and not st.frames and status != 130:
            raise SourceError(st.error)  # nothing came through: the one-line error and exit 2, as for opening
    elif status != 130:
        dt = time.perf_counter() - t0
        n = sum(st.frames for st in streams.stats.values())
        print(f"{len(specs)} sources: {n} frames in {dt:.1f}s, {n / dt if dt > 0 else 0:.1f} frames/s in all",
              file=text)
    return status
