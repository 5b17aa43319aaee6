"""Frame sources: video files, cameras, RTSP/HTTP streams, GStreamer pipelines.

`FrameReader` decodes in its own thread into a bounded queue, so decoding
overlaps detection and memory stays flat however long the stream runs.
Files are read completely (the reader waits for the consumer); live sources
keep only the newest frame (the reader drops stale ones rather than let the
output lag behind the world) and reconnect with back-off when they drop.
Frames come out as RGB uint8, the detector's colour order.
"""
from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message says why, in one line.

    retry is False when trying again cannot help (no such file, no GStreamer support).
    """

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class SourceSpec:
    """What the user named: kind is "file", "camera", "stream" (a URL) or "gstreamer"."""

    text: str
    kind: str

    @property
    def live(self) -> bool:
        """Live sources run in real time: drop stale frames, reconnect when lost."""
        return self.kind != "file"

    def __str__(self) -> str:
        return self.text


def parse_source(text: str) -> SourceSpec:
    """Tell a camera index, URL, GStreamer pipeline and file path apart (by form, not by probing)."""
    s = str(text).strip()
    if not s:
        raise SourceError("empty source")
    if s.isdigit():
        return SourceSpec(s, "camera")
    if s.startswith("/dev/video") and not os.path.isfile(s):
        return SourceSpec(s, "camera")
    if _URL.match(s) and not s.lower().startswith("file://"):
        return SourceSpec(s, "stream")
    if "!" in s and not os.path.exists(s):  # gst-launch syntax: "src ! ... ! appsink"
        return SourceSpec(s, "gstreamer")
    if s.lower().startswith("file://"):
        s = s[7:]
    return SourceSpec(s, "file")


def _has_backend(api: int) -> bool:
    try:
        return bool(cv2.videoio_registry.hasBackend(api))
    except AttributeError:  # very old OpenCV: let the open attempt decide
        return True


def check_file(spec: SourceSpec) -> None:
    """SourceError for a file source that no decoder could read: missing, a folder, or empty."""
    if not os.path.exists(spec.text):
        raise SourceError(f"{spec}: no such file", retry=False)
    if os.path.isdir(spec.text):
        raise SourceError(f"{spec}: is a directory", retry=False)
    if os.path.getsize(spec.text) == 0:
        raise SourceError(f"{spec}: empty file", retry=False)


def open_capture(spec: SourceSpec, width: int | None = None, height: int | None = None,
                 timeout_s: float = 5.0) -> cv2.VideoCapture:
    """An opened cv2.VideoCapture for the source, or SourceError with the reason."""
    ms = int(timeout_s * 1000)
    if spec.kind == "file":
        check_file(spec)
        cap = cv2.VideoCapture(spec.text)
        what = "not a video, or a format/codec this OpenCV build cannot decode (or a truncated file)"
    elif spec.kind == "camera":
        index = int(spec.text) if spec.text.isdigit() else spec.text
        cap = cv2.VideoCapture(index)
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the reader keeps up; the driver need not queue
        what = "no such camera, or it is busy"
    elif spec.kind == "stream":
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(spec.text, cv2.CAP_FFMPEG, params)
        what = "cannot connect (server down, wrong address or path, or refused)"
    elif spec.kind == "gstreamer":
        if not _has_backend(cv2.CAP_GSTREAMER):
            raise SourceError("this OpenCV build has no GStreamer support (pip's opencv-python builds "
                              "don't); use an OpenCV built with GStreamer, or a file/URL/camera source", retry=False)
        cap = cv2.VideoCapture(spec.text, cv2.CAP_GSTREAMER)
        what = "GStreamer could not start the pipeline (it must end in appsink)"
    else:
        raise SourceError(f"unknown source kind {spec.kind!r}")
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"{spec}: cannot open: {what}")
    return cap


def fit_size(w: int, h: int, width: int | None, height: int | None) -> tuple[int, int]:
    """Output frame size: both given -> exactly that; one given -> keep the aspect ratio."""
    if width and height:
        return int(width), int(height)
    if width:
        return int(width), max(1, round(h * width / w))
    if height:
        return max(1, round(w * height / h)), int(height)
    return w, h


def to_rgb_frame(bgr: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded BGR (or gray/BGRA) frame -> RGB uint8, resized to size (w, h) if given."""
    if bgr.ndim == 2:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    elif bgr.shape[2] == 4:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
    else:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if size and (rgb.shape[1], rgb.shape[0]) != tuple(size):
        shrink = size[0] * size[1] < rgb.shape[0] * rgb.shape[1]
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return rgb


#: what FrameReader opens a source with: (spec, width, height, timeout_s) -> a capture with
#: cv2.VideoCapture's read() / get() / isOpened() / release(); `open_capture` (OpenCV) by default,
#: `nvdec.opener(...)` for the GPU decoder. A capture whose `gives_rgb` is True hands out RGB frames
#: ready for the detector (e.g. CUDA tensors), which the reader passes on unconverted.
Opener = Callable[[SourceSpec, "int | None", "int | None", float], object]


def backoff_delay(attempt: int, first: float, cap: float) -> float:
    """Seconds to wait before reconnect attempt 1, 2, 3...: first, 2x, 4x... at most cap."""
    return min(cap, first * 2 ** (attempt - 1))


@dataclass
class Frame:
    """One decoded frame. index counts every frame the source produced, dropped ones included."""

    index: int
    image: np.ndarray  # RGB uint8 (H, W, 3); a CUDA tensor from a `gives_rgb` capture (NVDEC)
    time: float  # seconds: position in a file, or since the start for live sources
    decode_s: float  # time spent decoding + converting this frame (in the reader thread)


@dataclass
class ReaderStats:
    frames: int = 0  # frames decoded
    dropped: int = 0  # stale live frames thrown away unseen
    reconnects: int = 0
    end: str = ""  # why reading stopped: "end of file", "stopped", "max frames", or the error


_END = object()


def put_until(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put item into a bounded queue, waiting while it is full; False (not put) once stop is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class FrameReader:
    """Decode a source in a background thread; iterate to get `Frame`s in order.

    drop_stale (default: live sources) keeps only the newest frame; otherwise
    the queue holds at most queue_size frames and the reader waits. A live
    source that fails to open or stops delivering is reopened up to `retries`
    times with delays retry_delay, 2x, 4x... (capped at max_delay), each
    reported through on_event; then iteration raises SourceError. A file
    ends at its last decodable frame (a truncated file ends early; compare
    stats.frames with expected_frames).

    Besides iterating, a consumer that serves several readers polls them with
    `take(n)` (never waits) and learns of new frames through the `wakeup` event
    the reader sets after each frame it queues.

    >>> with FrameReader("clip.mp4") as reader:          # doctest: +SKIP
    ...     for frame in reader:
    ...         faces = det.detect(frame.image)
    """

    def __init__(self, source: str | SourceSpec, *, width: int | None = None, height: int | None = None,
                 queue_size: int = 4, drop_stale: bool | None = None, retries: int = 5,
                 retry_delay: float = 0.5, max_delay: float = 8.0, timeout_s: float = 5.0,
                 max_frames: int | None = None, on_event: Callable[[str], None] = to_stderr,
                 opener: Opener = open_capture, wakeup: threading.Event | None = None) -> None:
        self.spec = source if isinstance(source, SourceSpec) else parse_source(source)
        self.opener = opener
        self.wakeup = wakeup
        self._ended = False
        self.width, self.height = width, height
        self.drop_stale = self.spec.live if drop_stale is None else bool(drop_stale)
        self.retries, self.retry_delay, self.max_delay = int(retries), float(retry_delay), float(max_delay)
        self.timeout_s = timeout_s
        self.max_frames = max_frames
        self.on_event = on_event
        self.stats = ReaderStats()
        self._queue: queue.Queue = queue.Queue(maxsize=1 if self.drop_stale else max(1, queue_size))
        self._stop = threading.Event()
        self._error: SourceError | None = None
        self._cap = self._open_with_retries(first=True)
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not (0 < self.fps < 1000):
            self.fps = 0.0
        n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if self.spec.kind == "file" else 0
        self.expected_frames = n if n > 0 else None
        self._thread = threading.Thread(target=self._run, name="fastmtcnn-reader", daemon=True)
        self._started = False

    # -- opening -------------------------------------------------------------
    def _open_with_retries(self, first: bool) -> cv2.VideoCapture:
        if not self.spec.live:
            return self.opener(self.spec, self.width, self.height, self.timeout_s)
        last: SourceError | None = None
        # opening: try at once, then retry; reconnecting: every attempt waits first (let the source come back)
        attempts = self.retries + 1 if first else self.retries
        for attempt in range(0 if first else 1, self.retries + 1):
            if attempt:
                delay = backoff_delay(attempt, self.retry_delay, self.max_delay)
                self.on_event(f"{self.spec}: {'cannot open' if first else 'source lost'}; "
                              f"retry {attempt}/{self.retries} in {delay:.1f}s")
                if self._stop.wait(delay):
                    break
            try:
                cap = self.opener(self.spec, self.width, self.height, self.timeout_s)
            except SourceError as e:
                if not e.retry:
                    raise
                last = e
                continue
            if not first:
                self.stats.reconnects += 1
                self.on_event(f"{self.spec}: reconnected")
            return cap
        if not attempts:
            raise SourceError(f"{self.spec}: not reconnecting (retries = 0)")
        msg = str(last) if last else f"{self.spec}: cannot open"
        raise SourceError(f"{msg} (gave up after {attempts} attempt{'s' if attempts != 1 else ''})")

    # -- reading thread ------------------------------------------------------
    def start(self) -> "FrameReader":
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def _put(self, item) -> bool:
        """Hand an item to the consumer; False when asked to stop."""
        ok = self._enqueue(item)
        if ok and self.wakeup is not None:
            self.wakeup.set()
        return ok

    def _enqueue(self, item) -> bool:
        if self.drop_stale and item is not _END:
            while True:
                try:
                    self._queue.put_nowait(item)
                    return True
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self.stats.dropped += 1
                    except queue.Empty:
                        pass
        return put_until(self._queue, item, self._stop)

    def _run(self) -> None:
        index = 0
        t_start = time.perf_counter()
        size = None
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and self.stats.frames >= self.max_frames:
                    self.stats.end = "max frames"
                    break
                t0 = time.perf_counter()
                ok, bgr = self._cap.read()
                if not ok or bgr is None:
                    if not self.spec.live:
                        self.stats.end = "end of file"
                        break
                    self._cap.release()
                    try:
                        self._cap = self._open_with_retries(first=False)
                    except SourceError as e:
                        reason = str(e).removeprefix(f"{self.spec}: ")
                        self._error = SourceError(f"{self.spec}: source lost after {self.stats.frames} frames "
                                                  f"and not back: {reason}")
                        self.stats.end = str(self._error)
                        break
                    continue
                if getattr(self._cap, "gives_rgb", False):
                    rgb = bgr
                else:
                    if size is None:
                        size = fit_size(bgr.shape[1], bgr.shape[0], self.width, self.height)
                    rgb = to_rgb_frame(bgr, size)
                if self.spec.live:
                    t = time.perf_counter() - t_start
                else:
                    t = index / self.fps if self.fps else float(self._cap.get(cv2.CAP_PROP_POS_MSEC) or 0) / 1000
                frame = Frame(index, rgb, t, time.perf_counter() - t0)
                index += 1
                self.stats.frames += 1
                if not self._put(frame):
                    break
            else:
                self.stats.end = self.stats.end or "stopped"
        except Exception as e:  # noqa: BLE001 - a decoder failure must end the stream, never hang the consumer
            self._error = SourceError(f"{self.spec}: reading failed: {e}")
            self.stats.end = str(self._error)
        finally:
            self._cap.release()
            self._put(_END)

    # -- consumer side -------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        self.start()
        while True:
            item = self._queue.get()
            if item is _END:
                if self._error:
                    raise self._error
                return
            yield item

    def take(self, n: int) -> tuple[list[Frame], bool]:
        """Up to n frames that are ready now, in order, without waiting; and whether the source has ended
        (then `error` says why, if it failed)."""
        self.start()
        out: list[Frame] = []
        while len(out) < n and not self._ended:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                self._ended = True
            else:
                out.append(item)
        return out, self._ended

    @property
    def error(self) -> SourceError | None:
        """Why the source failed (lost for good, or decoding broke), once it has ended; None otherwise."""
        return self._error

    def close(self) -> None:
        """Stop the reader thread and release the source (safe to call twice)."""
        self._stop.set()
        if self._started:
            while self._thread.is_alive():
                try:  # unblock a reader waiting on a full queue
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.05)
        else:
            self._cap.release()
        if not self.stats.end:
            self.stats.end = "stopped"

    def __enter__(self) -> "FrameReader":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def truncated(self) -> bool:
        """A file that ended before the frame count in its header (a cut or corrupt file)."""
        return (self.spec.kind == "file" and self.stats.end == "end of file"
                and self.expected_frames is not None and self.stats.frames < self.expected_frames)
