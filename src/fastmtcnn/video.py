"""A video job: faces in every frame of one or many sources, written where asked.

`VideoJob` runs `streams.StreamDetector` (full detection, or tracking with
`track_every=K`) and hands each source's results to that source's outputs:
an annotated video (`sinks.VideoSink`, drawn and encoded in a thread of its
own), JSON Lines records (`records`), a window (`sinks.Window`). It is what
`fastmtcnn video` runs; the command line only turns flags into its arguments
and prints lines about it.

    >>> from fastmtcnn import MTCNN, VideoJob                             # doctest: +SKIP
    >>> job = VideoJob(MTCNN(), ["a.mp4", "b.mp4"], out="videos/", json="faces/", track_every=10)
    >>> stats = job.run()                          # videos/a.mp4, faces/a.jsonl, ... per source
"""
from __future__ import annotations

import json as jsonlib
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from .draw import annotate
from .images import host_image
from .records import end_record, end_text, frame_record, mode
from .sinks import FOURCC, VideoSink, Window
from .sources import SourceError, to_stderr
from .streams import SourceStats, StreamDetector, StreamResult


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


def quiet_video_logs() -> None:
    """Silence FFmpeg's and OpenCV's own log lines (a job's messages say what went wrong in one line)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read when the FFmpeg backend loads
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # an OpenCV without the utils.logging binding: keep its default
        pass


class SourceOutput:
    """Where one source's results go: its JSON Lines records, its annotated video, the window's frame.

    video / jsonl: file paths (jsonl "-" is stdout), or None; source: the name records carry (None when
    the job has one source); fps: the annotated video's frame rate.
    """

    def __init__(self, *, video: str | None, jsonl: str | None, source: str | None, fps: float,
                 fourcc: str | None = None, show: bool = False) -> None:
        self.video, self.source, self.fps, self.fourcc, self.show = video, source, fps, fourcc, show
        self.sink: VideoSink | None = None
        self.meter = FpsMeter()
        self._own = None
        self.jf = sys.stdout if jsonl == "-" else None
        if jsonl and jsonl != "-":
            self.jf = self._own = open(jsonl, "w", encoding="utf-8")

    def frame(self, r: StreamResult) -> np.ndarray | None:
        """Record one frame's faces; returns the annotated frame when the window needs it."""
        fps = self.meter.tick()
        m = mode(r.tracked)
        if self.video:
            if self.sink is None:
                h, w = (int(v) for v in r.image.shape[:2])
                self.sink = VideoSink(self.video, self.fps, (w, h), self.fourcc)
            self.sink.write(r.image, r.faces, fps, m)
        if self.jf:
            self.jf.write(jsonlib.dumps(frame_record(r, source=self.source)) + "\n")
        return annotate(host_image(r.image), r.faces, fps, m) if self.show else None

    def end(self, stats: SourceStats) -> None:
        """The end record, then the outputs closed."""
        if self.jf and not self.jf.closed:
            self.jf.write(jsonlib.dumps(end_record(stats, source=self.source)) + "\n")
            self.jf.flush()
        self.close()

    @property
    def written(self) -> str | None:
        """The annotated video's path, once a frame went into it."""
        return self.video if self.sink else None

    def close(self) -> None:
        """Finish the video file and close the JSON file (also when the job breaks off)."""
        if self.sink:
            self.sink.close()
        if self._own:
            self._own.close()


def check_outputs(sources: int, *, out: str | None = None, json: str | None = None, show: bool = False) -> None:
    """ValueError / OSError when the outputs asked for cannot be written for this many sources."""
    several = sources > 1
    if several and show:
        raise ValueError(f"show= takes one source (got {sources}); use out= DIR / json= DIR for several")
    if several and out and Path(out).suffix.lower() in FOURCC:
        raise ValueError(f"with several sources out= is a folder (it gets NAME.mp4 per source), "
                         f"not a {Path(out).suffix} file")
    for name, path in (("out", out), ("json", json)):
        if path and path != "-":
            if several and Path(path).exists() and not Path(path).is_dir():
                raise OSError(f"cannot write into {path}: with several sources {name}= is a folder")
            if not Path(path).resolve().parent.is_dir():
                raise OSError(f"cannot write {path}: folder {Path(path).parent} does not exist")


class VideoJob:
    """Faces in every frame of one or many video sources, sent to per-source outputs.

    sources: video files, camera indices, URLs, GStreamer pipelines (as `StreamDetector` takes them).
    out: the annotated video (.mp4, .avi, .mkv); with several sources a folder that gets NAME.mp4 per
    source. json: JSON Lines (`records`), "-" for stdout; with several sources a folder that gets
    NAME.jsonl per source, or "-" (records then carry "source"). show: a window (one source; q or
    Esc ends the job). out_fps: the videos' frame rate (default: the source's, else 25). fourcc:
    their codec (default by extension). track_every: tracking mode (see `StreamDetector`).
    skip_failed: a source that cannot be opened, or fails before its first frame, gets an end
    record with its error while the others run; otherwise it raises `SourceError`.
    on_end(stats): after a source's last result, its end record written and its outputs closed.
    Other keywords (chunk, decoder, max_frames, width, height, drop_stale, retries, retry_delay,
    timeout_s, nvdec_sessions, names) go to `StreamDetector`.

    Iterate to get each `StreamResult` after its outputs are written, or call `run()`. Stopping early
    (`close()`, a closed window, Ctrl-C) still ends every output properly, each end record saying how.
    """

    def __init__(self, detector, sources: Sequence, *, out: str | None = None, json: str | None = None,
                 show: bool = False, out_fps: float | None = None, fourcc: str | None = None,
                 track_every: int | None = None, skip_failed: bool = False,
                 on_event: Callable[[str], None] = to_stderr,
                 on_end: Callable[[SourceStats], None] | None = None, **options) -> None:
        check_outputs(len(sources), out=out, json=json, show=show)
        if out_fps is not None and out_fps <= 0:
            raise ValueError(f"out_fps must be > 0, got {out_fps}")
        self.several = len(sources) > 1
        self.out, self.json, self.out_fps, self.fourcc = out, json, out_fps, fourcc
        self.skip_failed, self.on_event, self.on_end = skip_failed, on_event, on_end
        self.max_frames = options.get("max_frames")
        self.outputs: dict[str, SourceOutput] = {}
        self._ended: set[str] = set()
        self._failed: str | None = None  # a source that gave nothing (skip_failed=False): raised at the end
        self._closed = False
        self.window = Window() if show else None  # fails before any source is opened
        try:
            if self.several:
                for path in (out, json):
                    if path and path != "-":
                        Path(path).mkdir(exist_ok=True)
            self.streams = StreamDetector(detector, sources, track_every=track_every, skip_failed=skip_failed,
                                          on_event=on_event, on_end=self._finish, **options)
            self._fps = {self.streams.names[i]: r.fps for i, r in self.streams.readers.items()}
            for name, st in self.stats.items():
                if not st.error:
                    self._output(name)
        except BaseException:
            for o in self.outputs.values():
                o.close()
            if self.window:
                self.window.close()
            raise

    @property
    def stats(self) -> dict[str, SourceStats]:
        """Per source (by name): frames, faces, FPS, drops, reconnects, tracking counts, how it ended."""
        return self.streams.stats

    @property
    def expected_frames(self) -> int | None:
        """How many results the job will give, when every source is a file with a known length."""
        known = [st.expected_frames for st in self.stats.values()]
        if any(k is None for k in known):
            return None
        return sum(min(k, self.max_frames or k) for k in known)

    def _output(self, name: str) -> SourceOutput:
        if name not in self.outputs:
            def path(base: str | None, suffix: str) -> str | None:
                return str(Path(base) / f"{name}{suffix}") if base and base != "-" and self.several else base

            self.outputs[name] = SourceOutput(
                video=path(self.out, ".mp4"), jsonl=path(self.json, ".jsonl"),
                source=name if self.several else None, fps=self.out_fps or self._fps.get(name) or 25.0,
                fourcc=self.fourcc, show=self.window is not None)
        return self.outputs[name]

    def _finish(self, st: SourceStats) -> None:
        self._ended.add(st.name)
        out = self._output(st.name)
        if st.error and not st.frames and not self.skip_failed:
            out.close()  # nothing came through: raised when the job ends, as for a source that cannot open
            self._failed = self._failed or st.error
            return
        if st.truncated:
            self.on_event(f"warning: {st.spec}: {end_text(st)}")
        out.end(st)
        if self.on_end:
            self.on_end(st)

    def __iter__(self) -> Iterator[StreamResult]:
        try:
            for r in self.streams:
                shown = self.outputs[r.source].frame(r)
                if self.window is not None and not self.window.show(shown):
                    return
                yield r
        except KeyboardInterrupt:
            self.close(end="interrupted")
            raise
        except Exception:  # a failed detector call or output: keep what was written readable
            self._closed = True
            self.streams.close()
            for o in self.outputs.values():
                o.close()
            if self.window:
                self.window.close()
            raise
        finally:
            self.close()
        if self._failed:
            raise SourceError(self._failed)

    def run(self, on_result: Callable[[StreamResult], None] | None = None) -> dict[str, SourceStats]:
        """Process every source to its end (calling on_result per frame); returns `stats`."""
        for r in self:
            if on_result:
                on_result(r)
        return self.stats

    def close(self, end: str | None = None) -> None:
        """Stop the job (safe to call twice): sources not yet ended get their end record, saying `end`
        (e.g. "interrupted") or else how their reader stopped, and their outputs are closed."""
        if self._closed:
            return
        self._closed = True
        self.streams.close()
        for st in self.stats.values():
            if st.name not in self._ended:
                if end:
                    st.error, st.end = None, end
                self._finish(st)
        if self.window:
            self.window.close()

    def __enter__(self) -> "VideoJob":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
