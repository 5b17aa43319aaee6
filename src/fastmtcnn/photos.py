"""Many photos in, faces out, in input order: the folder job behind `detect`, `align` and `eval`.

Files are read ahead on threads, decoded, and detected a window at a time:
each window is one `detect_batch` call, whatever the photos' sizes (their
pyramids share PNet tiles of one shape, `pyramid`). On a CUDA torch detector
JPEGs are decoded on the GPU by nvJPEG (torchvision's op, one batched call
per window) and never leave it; other formats, and files nvJPEG rejects, go
through the CPU decoder (`images.decode_image`) with its error messages. The
first window is small and decoded on the CPU: the first result does not wait
for nvJPEG to start (0.6-1 s), which happens meanwhile, on the next window.
A bad file is an error result, never a crash or a gap.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
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


#: photos in the first window of a GPU folder job (decoded on the CPU; later windows: `GPU_WINDOW`, nvJPEG)
FIRST_WINDOW = 8
GPU_WINDOW = 64
#: torchvision's ImageReadMode.RGB, as its `image` ops take it
_RGB = 3
_decoder: list = []  # [decode function or None], once found


def nvjpeg_decoder() -> Callable | None:
    """torchvision's nvJPEG op as (encoded uint8 CPU tensors, device) -> RGB (3, H, W) tensors there; None
    without torchvision.

    Why not `torchvision.io.decode_jpeg`: importing torchvision's package
    imports torch._dynamo, sympy and torch.distributed (its ops register with
    torch.compile), 3-7 s in a fresh process, more than a folder's whole
    detection job. Its `image` extension alone holds the op and loads in
    milliseconds; where it will not load alone, the package is imported.
    """
    if not _decoder:
        _decoder.append(_find_nvjpeg())
    return _decoder[0]


def _find_nvjpeg() -> Callable | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    import torch

    finder = importlib.machinery.FileFinder(
        spec.submodule_search_locations[0],
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES))
    ext = finder.find_spec("image")
    try:
        if ext is None or not ext.origin:
            raise OSError("no image extension")
        torch.ops.load_library(ext.origin)
        op = torch.ops.image.decode_jpegs_cuda
        return lambda raw, device: op(raw, _RGB, torch.device(device))
    except (OSError, RuntimeError, AttributeError):
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            return None
        return lambda raw, device: decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)


def nvjpeg_decode(raw: list, device) -> list:
    """Encoded JPEGs (uint8 CPU tensors) -> RGB (3, H, W) tensors on `device`, by nvJPEG."""
    return nvjpeg_decoder()(raw, device)


def nvjpeg_available(det) -> bool:
    """True when `det` runs on CUDA and torchvision's nvJPEG op is there."""
    be = det.backend
    return be.name == "torch" and be.device.type == "cuda" and nvjpeg_decoder() is not None


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

    side = _side_stream(torch.device(device))
    with torch.cuda.stream(side):
        out = _decode_on_gpu(items, device)
    side.synchronize()
    for t in out:
        if not isinstance(t, ImageError):
            t.record_stream(consumer)
    return out


_sides = threading.local()  # per thread: {device: the stream its GPU decodes run on}


def _side_stream(device):
    """The calling thread's decode stream on `device`, the same one every call.

    Why: torch's caching allocator reuses a freed block only for work on the
    stream it was allocated on. A new stream a call (torch hands out 32 in
    turn) left each window's images (~800 MB for 64 1080p photos, with the
    layout copy) cached on a stream the next windows did not use: new device
    allocations every window, under the allocator's lock, which the thread
    queueing the detection work waits for too.
    """
    import torch

    streams = _sides.__dict__.setdefault("streams", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)
    return streams[device]


def _decode_on_gpu(items: list[tuple[str, np.ndarray | ImageError]], device) -> list:
    import torch  # optional (GPU extra): imported when nvJPEG is used

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
            decoded = nvjpeg_decode(raw, device)
        except RuntimeError:
            decoded = []
            for t in raw:
                try:
                    decoded.append(nvjpeg_decode([t], device)[0])
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


def submit_window(det, images: list, queue: bool = True) -> Callable[[], list]:
    """Detections of decoded images (ImageError entries pass through), all in one call: queued on the
    device now (`MTCNN.submit`) -> a function that waits for them.

    queue=False: one `detect_batch` call, done here (the CPU engines keep two photos in flight in it).
    """
    idx = [i for i, im in enumerate(images) if not isinstance(im, ImageError)]
    good = [images[i] for i in idx]
    if queue and idx:
        wait = det.submit(good)
    else:
        done = det.detect_batch(good) if idx else []

        def wait() -> list:
            return done

    def results() -> list:
        out = list(images)
        for i, faces in zip(idx, wait()):
            out[i] = faces
        return out

    return results


def detect_photos(det, paths: Iterable[str], *, window: int | None = None, readers: int | None = None,
                  reader: Callable[[str], np.ndarray] = read_bytes) -> Iterator[PhotoResult]:
    """Faces in image files, yielded in input order; every path gets a result or an error.

    window: files read, decoded and detected together (default 64 with nvJPEG:
    one fixed-shape GPU call, after a first window of 8 decoded on the CPU;
    else twice the readers); the next window is read and decoded on other
    threads while this one is detected. readers: threads
    reading (and, without nvJPEG, decoding). reader: path -> file bytes
    (uint8), raising ImageError (default: local files; `batch` reads URIs too).
    On a GPU, a job of more than one window whose Triton kernels an earlier
    process compiled (`TorchBackend.kernels_cached`) waits for them before its
    first window: its first pass then runs at the warm rate.
    """
    exif = det.exif
    gpu = nvjpeg_available(det) and not exif  # nvJPEG does not turn photos by their EXIF tag
    readers = readers or min(8, os.cpu_count() or 2)
    first = FIRST_WINDOW if gpu and window is None else None
    window = window or (GPU_WINDOW if gpu else 2 * readers)
    wait = False
    if gpu:  # a job longer than its first window waits for kernels that load from Triton's cache (not compile)
        paths = iter(paths)
        head = list(islice(paths, (first or window) + 1))
        paths = chain(head, paths)
        wait = len(head) > (first or window) and getattr(det.backend, "kernels_cached", bool)()
        if wait:
            det.backend.wait_for_kernels(0)  # start loading them while the first window is read and decoded
    with ThreadPoolExecutor(readers, thread_name_prefix="fastmtcnn-read") as pool:
        consumer = None
        if gpu:
            import torch

            consumer = torch.cuda.current_stream(det.backend.device)

        def decode(job: tuple[int, list[str]]) -> list:
            i, chunk = job
            if consumer is None or (first and i == 0):  # OpenCV releases the GIL: decode on the reader threads
                images = list(pool.map(lambda p: _decode_cpu((p, _read(p, reader)), exif), chunk))
            else:
                data = list(pool.map(lambda p: _read(p, reader), chunk))
                images = decode_on_gpu(list(zip(chunk, data)), det.backend.device, consumer)
            # the window's plan too, here, while the window before runs (`MTCNN.plan_ahead`)
            det.plan_ahead([im for im in images if not isinstance(im, ImageError)])
            return images

        def emit(chunk: list[str], images: list, results: Callable[[], list]) -> Iterator[PhotoResult]:
            for path, im, res in zip(chunk, images, results()):
                yield (PhotoResult(path, error=res) if isinstance(res, ImageError)
                       else PhotoResult(path, faces=res, image=im))

        # two windows in flight: one decodes while the one before is detected. On the torch backend a
        # window is queued before the results of the one before are waited for and turned into Python
        # objects, so the GPU does not idle meanwhile; the first window's results come at once.
        ahead = getattr(det.backend, "submit_images", None) is not None  # a GPU backend's (torch)
        queued = None
        for (i, chunk), images in overlapped(decode, enumerate(chunks(paths, window, first)), workers=2, ahead=2):
            if isinstance(images, BaseException):
                raise images  # not a bad file (those are ImageError entries): the GPU or the reader pool failed
            if wait:
                det.backend.wait_for_kernels()
                wait = False
            job = (chunk, images, submit_window(det, images, queue=ahead))
            if queued is not None:
                yield from emit(*queued)
            queued = job if ahead and i > 0 else None
            if queued is None:
                yield from emit(*job)
        if queued is not None:
            yield from emit(*queued)
