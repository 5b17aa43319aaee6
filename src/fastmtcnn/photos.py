"""Many photos in, faces out, in input order: the folder job behind `detect`, `align` and `eval`.

Files are read ahead on threads, decoded, and detected in groups of one size:
each window of photos is grouped by size and every group is one
`detect_batch` call. On a CUDA torch detector JPEGs are decoded on the GPU by
nvJPEG (`torchvision.io.decode_jpeg(device="cuda")`, one batched call per
window) and never leave it; other formats, and files nvJPEG rejects, go
through the CPU decoder (`images.decode_image`) with its error messages. A
bad file is an error result, never a crash or a gap.

Why group by size rather than pack the pyramid levels of photos of different
sizes into shared canvases: a group is exact with no new code (every photo of
a group has the same plan), real folders repeat a few camera sizes, and a
window of 32-64 photos gives groups large enough to keep the GPU busy; a
shared canvas would need per-photo integral images and tables in every
kernel for a gain only on folders where no two photos share a size.
"""
from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from .detections import Detections
from .images import MAX_PIXELS, ImageError, check_complete, decode_image, host_image, read_bytes
from .overlap import chunks, overlapped


@dataclass
class PhotoResult:
    """One input's outcome: its faces, or the error that stopped it."""

    path: str
    faces: Detections | None = None
    error: ImageError | None = None
    image: object = field(default=None, repr=False)  # RGB (H, W, 3) uint8: numpy, or a tensor on the GPU

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the decoded image."""
        return int(self.image.shape[1]), int(self.image.shape[0])

    def rgb(self) -> np.ndarray:
        """The decoded image on the host (copied from the GPU on first use), e.g. to draw or crop."""
        self.image = host_image(self.image)
        return self.image


def _read(path: str, reader: Callable[[str], np.ndarray] = read_bytes) -> np.ndarray | ImageError:
    try:
        return reader(path)
    except ImageError as e:
        return e


def _decode_cpu(item: tuple[str, np.ndarray | ImageError], exif: bool = False) -> np.ndarray | ImageError:
    path, data = item
    if isinstance(data, ImageError):
        return data
    try:
        return decode_image(data, path, exif=exif)
    except ImageError as e:
        return e


def nvjpeg_available(det) -> bool:
    """True when `det` runs on CUDA and torchvision can decode JPEGs there."""
    be = det.backend
    if be.name != "torch" or be.device.type != "cuda":
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def decode_on_gpu(items: list[tuple[str, np.ndarray | ImageError]], device, consumer=None) -> list:
    """Encoded files -> RGB (H, W, 3) uint8 CUDA tensors or ImageError, in order.

    JPEGs (complete ones: the CPU decoder's truncation check runs first) go
    to nvJPEG in one batched call; if the batch fails, each is retried alone,
    and what nvJPEG still rejects (CMYK, some progressive files) goes through
    the CPU decoder, then up to the GPU.

    consumer: the CUDA stream that will use the images, when another thread
    decodes them (so decoding overlaps detection): the work runs on a side
    stream, is finished on return, and the images' memory stays reserved
    until `consumer`'s work on them is done.
    """
    if consumer is None:
        return _decode_on_gpu(items, device)
    import torch

    side = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        out = _decode_on_gpu(items, device)
    side.synchronize()
    for t in out:
        if not isinstance(t, ImageError):
            t.record_stream(consumer)
    return out


def _decode_on_gpu(items: list[tuple[str, np.ndarray | ImageError]], device) -> list:
    import torch  # optional (GPU extra): imported when nvJPEG is used
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list = [None] * len(items)
    jpegs = []
    for i, (path, data) in enumerate(items):
        if isinstance(data, ImageError):
            out[i] = data
        elif data[:2].tobytes() == b"\xff\xd8":
            try:
                check_complete(path, data)
                jpegs.append(i)
            except ImageError as e:
                out[i] = e
    if jpegs:
        raw = [torch.from_numpy(items[i][1]) for i in jpegs]
        try:
            decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            decoded = []
            for t in raw:
                try:
                    decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
        for i, t in zip(jpegs, decoded):
            if t is None:
                continue
            if t.shape[1] * t.shape[2] > MAX_PIXELS:
                out[i] = ImageError(f"{items[i][0]}: {t.shape[2]}x{t.shape[1]} is larger than {MAX_PIXELS} pixels")
            else:
                out[i] = t.permute(1, 2, 0).contiguous()
    for i, r in enumerate(out):
        if r is None:  # not a JPEG, or one nvJPEG would not take
            r = _decode_cpu(items[i])
            out[i] = r if isinstance(r, ImageError) else torch.from_numpy(r).to(device)
    return out


def detect_grouped(det, images: list) -> list:
    """Detections of decoded images (ImageError entries pass through), one `detect_batch` per size.

    The CPU backends take them all in one call: they keep two photos in flight
    whatever their sizes (`overlap.overlapped`), so a window of mixed sizes
    still overlaps one photo's single-threaded stages with another's nets.
    """
    if det.backend.overlap:
        idx = [i for i, im in enumerate(images) if not isinstance(im, ImageError)]
        out = list(images)
        for i, faces in zip(idx, det.detect_batch([images[i] for i in idx]) if idx else []):
            out[i] = faces
        return out
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, im in enumerate(images):
        if not isinstance(im, ImageError):
            groups[tuple(im.shape)].append(i)
    out: list = list(images)
    for idx in groups.values():
        for i, faces in zip(idx, _detect_same_size(det, [images[i] for i in idx])):
            out[i] = faces
    return out


def _detect_same_size(det, images: list) -> list:
    if isinstance(images[0], np.ndarray):
        return det.detect_batch(images)
    import torch

    return det.detect_batch(torch.stack(images))


#: pixels per GPU batch of one photo size: 4 photos of 8-12 MP, 8 of 3 MP, 16 of 2 MP, 32 of 1280x720,
#: `batch` (64) of 640x480. Measured on the H200 (504-photo folder of 6 sizes, default settings, one
#: process each): 48 M gave 528-538 photos/s at minsize 40 and 310-322 at minsize 20; 96 M 323-377 and
#: 223-262; 24 M 355 / 248; 12 M 419 / 262
BATCH_PIXELS = 48 << 20


class SizeBins:
    """Decoded photos waiting in one bin per size; a bin runs as one batch when it is full.

    Why: a GPU detector captures one CUDA graph per (batch, size); bins of a
    fixed size per photo size give each size one shape, captured once,
    whatever the order of the folder. A bin holds `batch` photos, fewer for
    large photos: at most `pixels` pixels, rounded down to a graph bucket
    (a batch's memory, and its graph's, grow with its pixels; small photos
    need many per call to keep the GPU busy). Pending pixels are bounded by
    `budget`: past it the fullest bin runs early; at the end every bin runs
    (a short bin is padded up to a graph the size already has).
    """

    def __init__(self, det, batch: int, budget: int, pixels: int = BATCH_PIXELS) -> None:
        self.det, self.batch, self.budget, self.max_pixels = det, batch, budget, pixels
        self.bins: dict[tuple, list[tuple[int, object]]] = defaultdict(list)
        self.pixels = 0

    def size(self, key: tuple) -> int:
        """Photos per batch for (H, W, ...) photos: a power of two, at most `batch`, within `max_pixels`."""
        fits = max(1, min(self.batch, self.max_pixels // (key[0] * key[1])))
        return 1 << (fits.bit_length() - 1)

    def add(self, i: int, image) -> list[tuple[int, Detections]]:
        """Put image i in its bin -> the (index, faces) of any bin this made run."""
        key = tuple(image.shape)
        self.bins[key].append((i, image))
        self.pixels += key[0] * key[1]
        done = []
        if len(self.bins[key]) >= self.size(key):
            done += self._run(key)
        while self.pixels > self.budget and self.bins:
            done += self._run(max(self.bins, key=lambda k: len(self.bins[k]) * k[0] * k[1]))
        return done

    def flush(self) -> list[tuple[int, Detections]]:
        return [r for key in list(self.bins) for r in self._run(key)]

    def _run(self, key) -> list[tuple[int, Detections]]:
        items = self.bins.pop(key)
        self.pixels -= len(items) * key[0] * key[1]
        return list(zip((i for i, _ in items), _detect_same_size(self.det, [im for _, im in items])))


def detect_photos(det, paths: Iterable[str], *, window: int | None = None, readers: int | None = None,
                  batch: int = 64, budget: int = 512 << 20, bins: bool | None = None,
                  reader: Callable[[str], np.ndarray] = read_bytes) -> Iterator[PhotoResult]:
    """Faces in image files, yielded in input order; every path gets a result or an error.

    window: files read and decoded together (default 32 with nvJPEG, else
    twice the readers); the next window is read and decoded on other threads
    while this one is detected. readers: threads reading (and, without
    nvJPEG, decoding). bins (default: with nvJPEG): photos wait in size bins
    (`SizeBins`: up to `batch` photos, fewer when large; at most `budget`
    pixels pending, 512 M: 1.5 GB of frames), so each size runs as full
    batches; else each window is grouped by size. Results come out in input
    order either way. reader: path -> file bytes (uint8), raising ImageError
    (default: local files; `batch` reads URIs too).
    """
    exif = det.exif
    gpu = nvjpeg_available(det) and not exif  # nvJPEG does not turn photos by their EXIF tag
    readers = readers or min(8, os.cpu_count() or 2)
    window = window or (32 if gpu else 2 * readers)
    sizebins = SizeBins(det, batch, budget) if (gpu if bins is None else bins) else None
    waiting: dict[int, PhotoResult] = {}  # done, not yet yielded (an earlier photo is still in a bin)
    at = 0  # index of the next result to yield
    with ThreadPoolExecutor(readers, thread_name_prefix="fastmtcnn-read") as pool:
        if gpu:
            import torch

            consumer = torch.cuda.current_stream(det.backend.device)

            def decode(chunk: list[str]) -> list:
                data = list(pool.map(lambda p: _read(p, reader), chunk))
                return decode_on_gpu(list(zip(chunk, data)), det.backend.device, consumer)
        else:
            def decode(chunk: list[str]) -> list:  # OpenCV releases the GIL: decode on the reader threads
                return list(pool.map(lambda p: _decode_cpu((p, _read(p, reader)), exif), chunk))

        def ready() -> Iterator[PhotoResult]:
            nonlocal at
            while at in waiting and (waiting[at].faces is not None or waiting[at].error is not None):
                yield waiting.pop(at)
                at += 1

        base = 0
        # two windows in flight: one decodes while the one before is detected
        for chunk, images in overlapped(decode, chunks(paths, window), workers=2, ahead=2):
            if isinstance(images, BaseException):
                raise images  # not a bad file (those are ImageError entries): the GPU or the reader pool failed
            if sizebins is not None:
                done = []
                for k, (path, im) in enumerate(zip(chunk, images)):
                    if isinstance(im, ImageError):
                        waiting[base + k] = PhotoResult(path, error=im)
                    else:
                        waiting[base + k] = PhotoResult(path, image=im)
                        done += sizebins.add(base + k, im)
                for i, faces in done:
                    waiting[i].faces = faces
            else:
                for k, (path, im, res) in enumerate(zip(chunk, images, detect_grouped(det, images))):
                    waiting[base + k] = (PhotoResult(path, error=res) if isinstance(res, ImageError)
                                         else PhotoResult(path, faces=res, image=im))
            base += len(chunk)
            yield from ready()
        if sizebins is not None:
            for i, faces in sizebins.flush():
                waiting[i].faces = faces
            yield from ready()
