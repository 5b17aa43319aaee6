"""Faces in many video sources at once: frames of all sources share detector calls.

Four stages run side by side, joined by bounded queues, so the slowest one
sets the pace and memory depends on the chunk size, not on the video length:

1. decoding: one `FrameReader` thread per source (OpenCV, or NVDEC onto the GPU);
2. gathering: takes up to `chunk` frames from the sources in turn, groups them
   by frame size, and uploads host frames to the GPU on a side stream when the
   detector runs there;
3. detection: one `MTCNN.detect_batch` call per frame size; in tracking mode
   (`track_every=K`), a `track.Tracker` per source instead, each source's frames
   in order, and the full detections that frames of several sources need at
   the same step in one call (`track.track_many`);
4. the caller: iterates the results (or gets per-source callbacks), in frame
   order within each source.

A file's frames all arrive (its reader waits for the detector); a live source
(camera, URL) hands over only its newest frame, and a batch that holds one is
sent at once instead of waiting for a full chunk. A new live frame is taken
only when no batch of live frames waits in a queue and either the detector is
free or the caller waits for results: a slow detector or a slow caller makes
the reader drop frames instead of handing out results that were already old
when detection began. Behind a slow caller, one batch of live frames is
detected while it works on the one before; that is all that waits for it.
A live source that is lost reconnects in its own thread while the
others go on.
"""
from __future__ import annotations

import queue
import re
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

from .detections import Detections
from .images import is_tensor
from .sources import (Frame, FrameReader, SourceError, SourceSpec, to_stderr, open_capture, parse_source,
                      put_until)
from .track import Tracker, TrackStats, track_many

DECODERS = ("auto", "opencv", "nvdec")


class StreamResult(NamedTuple):
    """One frame's faces: the source's name, the frame's index in its source, the RGB frame (a numpy
    array, or a CUDA tensor when NVDEC decoded it), the faces, the frame's time in seconds, and in
    tracking mode whether the faces came from tracking (True) or the full detector (False)."""

    source: str
    index: int
    image: object
    faces: Detections
    time: float
    tracked: bool | None = None


@dataclass
class SourceStats:
    """Per-source counts; `fps` is frames detected per second of wall time since the start."""

    name: str
    spec: SourceSpec
    decoder: str = ""
    frames: int = 0  # frames detected (results handed out)
    faces: int = 0
    read: int = 0  # frames decoded from the source: handed out + dropped (+ any in flight when stopped)
    dropped: int = 0  # stale live frames the reader threw away unseen
    reconnects: int = 0
    expected_frames: int | None = None  # frame count in a file's header
    end: str = ""  # "end of file", "max frames", "stopped", or what went wrong
    truncated: bool = False  # a file that ended before its header's frame count (`FrameReader.truncated`)
    error: str | None = None
    first_result_s: float | None = None  # seconds from the start to this source's first result
    wall_s: float = 0.0  # seconds from the start to this source's last result (or its end)
    tracking: TrackStats | None = None  # tracking mode: frames tracked, run in full, re-detected

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


def source_names(specs: Sequence[SourceSpec]) -> list[str]:
    """A short, file-name-safe, unique name per source: a file's stem, 'camera0', a URL's host and path;
    repeats get -2, -3... (16 copies of one clip are 16 sources)."""
    names, seen = [], defaultdict(int)
    for spec in specs:
        if spec.kind == "file":
            base = Path(spec.text).stem
        elif spec.kind == "camera":
            base = "camera" + re.sub(r"\D", "", spec.text)
        else:
            base = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", spec.text)
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-")[:80] or spec.kind
        seen[base] += 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def cuda_device(detector):
    """The torch CUDA device the detector runs on, or None (ONNX Runtime, or torch on the CPU)."""
    dev = getattr(detector.backend, "device", None)
    return dev if getattr(dev, "type", None) == "cuda" else None


def default_chunk(detector) -> int:
    """Frames per detector call: large on a GPU (a call costs launches, not arithmetic), small on a CPU
    (no gain from batching, and the first results come sooner)."""
    return 32 if cuda_device(detector) is not None else 4


def choose_decoder(choice: str, detector, spec: SourceSpec, resized: bool = False) -> str:
    """'nvdec' or 'opencv' for one source. auto: NVDEC for files when the detector runs on a CUDA device
    and PyNvVideoCodec loads (streams stay on OpenCV, which has open/read timeouts); else OpenCV.
    An explicit 'nvdec' that cannot work is an error."""
    if choice not in DECODERS:
        raise ValueError(f"decoder= must be one of {DECODERS}, got {choice!r}")
    if choice == "opencv":
        return "opencv"
    from . import nvdec

    why = nvdec.unavailable(cuda_device(detector))
    if choice == "auto":
        return "nvdec" if why is None and spec.kind == "file" and not resized else "opencv"
    if why:
        raise RuntimeError(f"decoder='nvdec': {why}")
    if spec.kind not in ("file", "stream"):
        raise ValueError(f"decoder='nvdec': {spec} is a {spec.kind} source; NVDEC decodes files and network streams")
    if resized:
        raise ValueError("decoder='nvdec': frames are not resized on the GPU; drop width= and height=")
    return "nvdec"


class _DeviceStage:
    """Frames for a CUDA detector, made on a side stream of their own: host frames are uploaded through one
    reused pinned buffer (the copy of the next chunk overlaps detection of this one), GPU frames (NVDEC)
    are stacked. Nothing runs on the legacy default stream, which would wait for, and get in the way
    of, the detector's work and graph captures."""

    def __init__(self, device) -> None:
        import torch

        self.torch, self.device = torch, device
        self.stream = torch.cuda.Stream(device)
        self.buf = None

    def upload(self, images: list[np.ndarray]):
        torch = self.torch
        shape = (len(images), *images[0].shape)
        n = int(np.prod(shape))
        if self.buf is None or self.buf.numel() < n:
            self.buf = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        host = self.buf[:n].view(shape)
        hn = host.numpy()
        for i, im in enumerate(images):
            hn[i] = im
        with torch.cuda.stream(self.stream):
            out = torch.empty(shape, dtype=torch.uint8, device=self.device)
            out.copy_(host, non_blocking=True)
        self.stream.synchronize()  # the data is there, and the pinned buffer is free again
        return out

    def stack(self, images: list):
        with self.torch.cuda.stream(self.stream):
            out = self.torch.stack(images)
        self.stream.synchronize()
        return out


_STOP = object()


@dataclass
class _Batch:
    items: list[tuple[int, Frame]]  # (source number, frame), in per-source order
    groups: list[tuple[list[int], object]] = field(default_factory=list)  # (positions in items, frames)
    ended: list[int] = field(default_factory=list)  # sources whose last frame is in this batch or before
    faces: list[Detections] = field(default_factory=list)
    tracked: list[bool | None] = field(default_factory=list)
    live: bool = False  # holds a frame of a live source that drops stale frames


def _ended(st: SourceStats, r: FrameReader, stopped: bool = False) -> None:
    """A source's end into its stats: as its reader saw it, or "stopped" when the results stopped before its
    last one (its reader may have decoded to the end of the file meanwhile)."""
    st.read, st.dropped, st.reconnects = r.stats.frames, r.stats.dropped, r.stats.reconnects
    st.truncated = r.truncated and not stopped
    st.end = "stopped" if stopped else r.stats.end or "end"


class StreamDetector:
    """Detect faces in several video sources (files, camera indices, URLs, GStreamer pipelines) at once.

    Iterate to get a `StreamResult` per frame, in frame order within each source (sources interleave);
    or call `run(on_result)` with one callback, or a dict of callbacks by source name. `stats` holds
    each source's counts (frames, faces, drops, reconnects, FPS, how it ended). `on_end(stats)` is
    called, from the iterating thread, after a source's last result.

    chunk: most frames per detector call (default 32 on a CUDA device, 4 otherwise).
    decoder: "auto" (NVDEC for files on a CUDA detector when PyNvVideoCodec is installed), "opencv" or "nvdec".
    track_every: tracking mode (`track.Tracker` per source): full detection every K frames, and when a
    face is lost; between, RNet/ONet around the last frame's faces. Results then carry `tracked`.
    skip_failed: sources that cannot be opened become `stats` entries with an error instead of raising.
    Sources may also be ready `FrameReader`s.

    >>> from fastmtcnn import MTCNN, StreamDetector                       # doctest: +SKIP
    >>> with StreamDetector(MTCNN(), ["a.mp4", "b.mp4", "rtsp://cam/1"]) as streams:
    ...     for r in streams:
    ...         print(r.source, r.index, len(r.faces))
    >>> streams.stats["a"].fps
    """

    def __init__(self, detector, sources: Sequence, *, chunk: int | None = None, decoder: str = "auto",
                 names: Sequence[str] | None = None, max_frames: int | None = None, width: int | None = None,
                 height: int | None = None, drop_stale: bool | None = None, retries: int = 5,
                 retry_delay: float = 0.5, timeout_s: float = 5.0, nvdec_sessions: int | None = None,
                 skip_failed: bool = False, track_every: int | None = None,
                 on_event: Callable[[str], None] = to_stderr,
                 on_end: Callable[[SourceStats], None] | None = None) -> None:
        if not sources:
            raise ValueError("no sources given")
        for name, v in (("chunk", chunk), ("width", width), ("height", height), ("max_frames", max_frames),
                        ("nvdec_sessions", nvdec_sessions), ("track_every", track_every)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        for name, v in (("retries", retries), ("retry_delay", retry_delay)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.detector = detector
        self.chunk = int(chunk) if chunk else default_chunk(detector)
        self.on_end = on_end
        self._wake = threading.Event()
        specs = [s.spec if isinstance(s, FrameReader) else (s if isinstance(s, SourceSpec) else parse_source(s))
                 for s in sources]
        self.names = list(names) if names else source_names(specs)
        if len(self.names) != len(specs) or len(set(self.names)) != len(self.names):
            raise ValueError("names must be unique, one per source")
        self.stats = {n: SourceStats(n, spec) for n, spec in zip(self.names, specs)}
        self._trackers: list[Tracker] | None = None
        if track_every:
            self._trackers = [Tracker(detector, every=track_every) for _ in specs]
            for st, tracker in zip(self.stats.values(), self._trackers):
                st.tracking = tracker.stats
        n_files = sum(s.kind == "file" for s in specs)
        self._files_only = n_files == len(specs)
        self._kernels = self._cached_kernels()
        if self._kernels is not None:
            self._kernels.wait_for_kernels(0)  # they load while the sources open and the first frames decode
        sessions = nvdec_sessions or max(1, 4 // max(1, n_files))  # ~4 NVDEC sessions per GPU job in all

        # a decoder that cannot work is a setting error: raised here, before any source is opened
        resized = bool(width or height)
        kinds = ["given" if isinstance(src, FrameReader) else choose_decoder(decoder, detector, spec, resized)
                 for src, spec in zip(sources, specs)]

        def reader(i: int):
            src, spec, kind = sources[i], specs[i], kinds[i]
            if isinstance(src, FrameReader):
                src.wakeup = self._wake
                self.stats[self.names[i]].decoder = kind
                return src
            kw = dict(width=width, height=height, drop_stale=drop_stale, retries=retries if spec.live else 0,
                      retry_delay=retry_delay, timeout_s=timeout_s, max_frames=max_frames, on_event=on_event,
                      queue_size=self.chunk, wakeup=self._wake)
            if kind == "nvdec":
                from . import nvdec

                try:
                    r = FrameReader(spec, opener=nvdec.opener(cuda_device(detector), sessions=sessions,
                                                              piece=self.chunk, max_frames=max_frames), **kw)
                except SourceError:
                    if decoder != "auto":
                        raise
                    kind = "opencv"  # a codec NVDEC does not take (MJPEG, FFV1...): the CPU decoder may
            if kind == "opencv":
                r = FrameReader(spec, opener=open_capture, **kw)
            self.stats[self.names[i]].decoder = kind
            return r

        # open all at once: a camera that takes its retries to answer does not hold up the others
        with ThreadPoolExecutor(max_workers=min(16, len(specs))) as pool:
            futures = [pool.submit(reader, i) for i in range(len(specs))]
        self.readers: dict[int, FrameReader] = {}
        failure: BaseException | None = None
        for i, f in enumerate(futures):
            try:
                self.readers[i] = f.result()
            except (SourceError, ValueError, RuntimeError, OSError) as e:
                st = self.stats[self.names[i]]
                st.error = st.end = str(e)
                failure = failure or e
        if failure is not None and not skip_failed:
            for r in self.readers.values():
                r.close()
            raise failure
        for i, r in self.readers.items():
            self.stats[self.names[i]].expected_frames = r.expected_frames
        dev = cuda_device(detector)
        self._device = _DeviceStage(dev) if dev is not None else None
        self._stop = threading.Event()
        self._work: queue.Queue = queue.Queue(maxsize=2)
        self._done: queue.Queue = queue.Queue(maxsize=2)
        self._live_queued = 0  # batches of live frames in _work or _done (not in the detector or with the caller)
        self._live_lock = threading.Lock()
        self._live_detecting = False  # the detector works on a batch of live frames
        self._caller_waiting = False  # the caller waits for the next batch of results
        self._threads: list[threading.Thread] = []
        self._t0: float | None = None

    # -- stage 2: gather frames of all sources into batches -----------------------------------------
    def _gather(self) -> None:
        try:
            active = dict(self.readers)
            pending: list[tuple[int, Frame]] = []
            ended: list[int] = []
            turn = 0
            while (active or pending or ended) and not self._stop.is_set():
                self._wake.clear()
                order = list(active)
                order = order[turn % len(order):] + order[:turn % len(order)] if order else []
                turn += 1
                live = False
                # take a live frame only if its result will not wait behind older live frames, nor for a busy
                # caller while the detector works on the frame before; else the reader replaces it by a newer one
                live_ready = self._live_queued == 0 and (not self._live_detecting or self._caller_waiting)
                for i in order:
                    room = self.chunk - len(pending)
                    if room <= 0:
                        break
                    r = active[i]
                    if r.drop_stale and not live_ready:
                        continue
                    frames, done = r.take(1 if r.drop_stale else room)
                    pending.extend((i, f) for f in frames)
                    live = live or (r.spec.live and bool(frames))
                    if done:
                        ended.append(i)
                        del active[i]
                # wait to fill a chunk only while a file can fill it: a live source's frame goes out at
                # once, and so does a file's tail when only live sources (maybe reconnecting) are left
                files_left = any(not r.spec.live for r in active.values())
                if pending and (len(pending) >= self.chunk or live or not files_left):
                    batch = self._prepare(pending, ended)
                    batch.live = any(self.readers[i].drop_stale for i, _ in pending)
                    self._count_live(batch, +1)
                    if not self._put(self._work, batch):
                        return
                    pending, ended = [], []
                elif ended and not pending:
                    if not self._put(self._work, _Batch([], ended=ended)):
                        return
                    ended = []
                elif active:
                    self._wake.wait(0.05)  # set when a reader queues a frame or ends, or a live batch moves on
        except BaseException as e:  # noqa: BLE001 (handed to the caller's thread)
            self._put(self._work, e)
            return
        self._put(self._work, _STOP)

    def _prepare(self, items: list[tuple[int, Frame]], ended: list[int]) -> _Batch:
        """Group the frames by size (one detector call each), stacked, on the device when it is a GPU."""
        batch = _Batch(items, ended=ended)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for pos, (_, f) in enumerate(items):
            groups[(type(f.image).__module__.split(".")[0], tuple(f.image.shape))].append(pos)
        for (kind, _), pos in groups.items():
            images = [items[p][1].image for p in pos]
            if self._device is not None:
                frames = self._device.stack(images) if kind == "torch" else self._device.upload(images)
            elif kind == "torch":
                import torch

                frames = torch.stack(images)
            else:
                frames = np.stack(images)
            batch.groups.append((pos, frames))
        return batch

    def _count_live(self, batch, delta: int) -> None:
        """A batch of live frames entered (+1) or left (-1) the queues; leaving, the gatherer may take the next."""
        if isinstance(batch, _Batch) and batch.live:
            with self._live_lock:
                self._live_queued += delta
            if delta < 0:
                self._wake.set()

    # -- stage 3: detection ---------------------------------------------------------------------------
    def _detect(self) -> None:
        kernels = self._kernels  # waited for once, before the first detection
        try:
            while not self._stop.is_set():
                try:
                    batch = self._work.get(timeout=0.1)
                except queue.Empty:
                    continue
                if batch is _STOP or isinstance(batch, BaseException):
                    self._put(self._done, batch)
                    return
                self._live_detecting = batch.live  # before the count drops: the gatherer must not see both free
                self._count_live(batch, -1)
                for _, frames in batch.groups:
                    if is_tensor(frames) and frames.is_cuda:
                        # the frames were made on another stream: keep their memory until this one is done
                        import torch

                        frames.record_stream(torch.cuda.current_stream(frames.device))
                if kernels is not None:
                    kernels.wait_for_kernels()
                    kernels = None
                self._detect_batch(batch)
                batch.groups = []  # frees the stacked frames before the next batch is gathered
                self._count_live(batch, +1)
                self._live_detecting = False
                if not self._put(self._done, batch):
                    return
        except BaseException as e:  # noqa: BLE001 (handed to the caller's thread)
            self._put(self._done, e)

    def _cached_kernels(self):
        """The GPU backend whose kernels a job of files waits for before its first detection, or None.

        Why: kernels that load from an earlier process's disk cache
        (`TorchBackend.kernels_cached`) start loading when the job is made, while
        its sources open and its first frames decode, and the job waits for them
        before its first chunk, as a folder job does. Run before them on torch
        ops, a new 1080p clip's first chunk took 1.1-1.3 s (those ops' own
        one-time costs) and then waited 0.7-0.8 s for the kernels anyway (H200).
        Live sources do not wait: their frames would go stale meanwhile.
        """
        backend = getattr(self.detector, "backend", None)
        if self._files_only and getattr(backend, "kernels_cached", bool)():
            return backend
        return None

    def _detect_batch(self, batch: _Batch) -> None:
        """batch.faces (and in tracking mode batch.tracked), one per item."""
        at = {p: (g, k) for g, (pos, _) in enumerate(batch.groups) for k, p in enumerate(pos)}

        def detect(positions: list[int]) -> list[Detections]:
            """Full detection of these items: one detector call per frame group."""
            found: dict[int, Detections] = {}
            by_group: dict[int, list[int]] = defaultdict(list)
            for p in positions:
                by_group[at[p][0]].append(p)
            for g, ps in by_group.items():
                frames = batch.groups[g][1]
                ks = [at[p][1] for p in ps]
                found.update(zip(ps, self.detector.detect_batch(frames if len(ks) == len(frames) else frames[ks])))
            return [found[p] for p in positions]

        if self._trackers is None:
            batch.faces = detect(list(range(len(batch.items))))
            batch.tracked = [None] * len(batch.items)
            return
        frame = {p: batch.groups[g][1][k] for p, (g, k) in at.items()}
        out = track_many([(self._trackers[i], frame[p]) for p, (i, _) in enumerate(batch.items)], detect)
        batch.faces = [faces for faces, _ in out]
        batch.tracked = [tracked for _, tracked in out]

    def _put(self, q: queue.Queue, item) -> bool:
        return put_until(q, item, self._stop)

    # -- stage 4: the caller --------------------------------------------------------------------------
    def start(self) -> "StreamDetector":
        if self._t0 is None:
            self._t0 = time.perf_counter()
            for r in self.readers.values():
                r.start()
            for target, name in ((self._gather, "fastmtcnn-gather"), (self._detect, "fastmtcnn-detect")):
                t = threading.Thread(target=target, name=name, daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def __iter__(self) -> Iterator[StreamResult]:
        self.start()
        try:
            for i, st in enumerate(self.stats.values()):
                if i not in self.readers and self.on_end:
                    self.on_end(st)  # could not be opened (skip_failed)
            while True:
                self._caller_waiting = True
                self._wake.set()
                batch = self._done.get()
                self._caller_waiting = False
                self._count_live(batch, -1)
                if batch is _STOP:
                    return
                if isinstance(batch, BaseException):
                    raise batch
                now = time.perf_counter() - self._t0
                for (i, frame), faces, tracked in zip(batch.items, batch.faces, batch.tracked):
                    st = self.stats[self.names[i]]
                    st.frames += 1
                    st.faces += len(faces)
                    st.wall_s = now
                    if st.first_result_s is None:
                        st.first_result_s = now
                    yield StreamResult(st.name, frame.index, frame.image, faces, frame.time, tracked)
                for i in batch.ended:
                    self._finish(i)
        finally:
            self.close()

    def _finish(self, i: int) -> None:
        r, st = self.readers[i], self.stats[self.names[i]]
        _ended(st, r)
        if r.error is not None:
            st.error = str(r.error)
        if not st.frames:
            st.wall_s = time.perf_counter() - (self._t0 or 0.0)
        r.close()
        if self.on_end:
            self.on_end(st)

    def run(self, on_result: Callable[[StreamResult], None] | dict[str, Callable[[StreamResult], None]]
            ) -> dict[str, SourceStats]:
        """Process every source to its end, calling on_result (or on_result[source name]) per frame."""
        for r in self:
            fn = on_result.get(r.source) if isinstance(on_result, dict) else on_result
            if fn:
                fn(r)
        return self.stats

    def close(self) -> None:
        """Stop all stages and release the sources (safe to call twice); sources not yet ended say 'stopped'."""
        self._stop.set()
        for i, r in self.readers.items():
            r.close()
            st = self.stats[self.names[i]]
            if not st.end:
                _ended(st, r, stopped=True)
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "StreamDetector":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
