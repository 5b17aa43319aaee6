"""The public detector: configuration + backend + the shared pipeline."""
from __future__ import annotations

import os
from typing import Callable, Iterable, Sequence

import numpy as np

from . import backends, options
from .config import Config, resolve
from .detections import Detections
from .images import ImageError, as_image, is_tensor
from .overlap import WORKERS, overlapped
from .pipeline import StageTimer, batch_plan, submit_images
from .pyramid import Plan


class MTCNN:
    """MTCNN face detector with a single-pass packed PNet.

    Images are RGB (not OpenCV's BGR): uint8 H x W x 3 arrays, or file paths.
    Grayscale, RGBA and 16-bit inputs are converted.

    >>> det = MTCNN()                                   # doctest: +SKIP
    >>> faces = det.detect("photo.jpg")                  # doctest: +SKIP
    >>> faces.boxes, faces.scores, faces.landmarks       # doctest: +SKIP

    device: "cuda" (or "cuda:1", a torch.device) runs on the GPU: it selects the
    torch backend by itself. "cpu" or None: the CPU default below.
    backend: "openvino" (the CPU default), "onnxruntime" (CPU; `providers` passes
    through, e.g. ["CUDAExecutionProvider"], and implies this backend when none
    is named) or "torch" (implied by a CUDA device; name it for torch on the
    CPU: backend="torch", device="cpu"). Which options go together is checked
    in one place, `options.check`.
    preset: "reference" (facenet-pytorch defaults) or "jetson" (the original
    post's settings); explicit arguments override the preset.
    exif: turn photos given as paths upright by their EXIF orientation first
    (off by default, as the reference: boxes are then in the stored pixels).
    max_batch: largest RNet/ONet batch per net call. Left unset with a CUDA
    device it becomes (8192, 4096) instead of the preset's: a GPU wants far
    larger batches than a CPU's cache does (measured +15%); results are the same.

    Torch backend options (the rest of `backends.torch.TorchBackend`'s,
    e.g. ``channels_last``, ``cudnn_benchmark``, ``caps``, ``nms``,
    ``kernels``, go through ``backend_options``):
    fp16: nets in half precision. None (default): on for CUDA (1.4-1.7x
        faster on an H200; finds the reference faces by DESIGN.md's matching
        rule, 98% at IoU >= 0.7), off on the CPU. fp16=False on CUDA gives the
        CPU backends' numbers (fp32 without TF32).
    graphs: "auto" (None, the default): a fixed-shape GPU call whose capacities
        come back is captured as one CUDA graph on its second sighting and
        replayed from then on; True: at once; False: never (CUDA only).
    graph_batch: most images per fixed-shape GPU call (larger batches run in chunks of it; default 64).
    pinned: upload host images through a page-locked buffer (default off).
    None leaves each to the torch backend's default.
    """

    def __init__(self, minsize: float | None = None, factor: float | None = None,
                 thresholds: Sequence[float] | None = None, max_batch: int | tuple[int, int] | None = None,
                 packed: bool | str | None = None, *, preset: str = "reference", backend: str | None = None,
                 providers: list | None = None, threads: int | None = None, device: str | None = None,
                 exif: bool = False,
                 fp16: bool | None = None, graphs: bool | str | None = None, graph_batch: int | None = None,
                 pinned: bool | None = None,
                 **backend_options) -> None:
        self.config: Config = resolve(preset, minsize=minsize, factor=factor, thresholds=thresholds,
                                      max_batch=max_batch, packed=packed)
        choice = options.check(backend, device=device, providers=providers, threads=threads, fp16=fp16,
                               graphs=graphs, graph_batch=graph_batch, pinned=pinned, **backend_options)
        self.backend = backends.create(choice.backend, **choice.kwargs)
        if max_batch is None and choice.cuda:
            self.config = self.config.replace(max_batch=(8192, 4096))
        self.exif = bool(exif)
        self.timer = StageTimer(sync=self.backend.synchronize)

    def __repr__(self) -> str:
        c = self.config
        return (f"MTCNN(minsize={c.minsize}, factor={c.factor}, thresholds={c.thresholds}, "
                f"max_batch={c.max_batch}, packed={c.packed}, backend={self.backend.name!r})")

    def plan(self, height: int, width: int) -> Plan:
        """The PNet plan (pyramid levels in tiles, or per-scale canvases) of one image of this size (cached)."""
        return batch_plan(self.backend, [(int(height), int(width))], self.config)

    def detect(self, image) -> Detections:
        """Faces in one image (RGB array, path, or an (H, W, 3) uint8 tensor on the backend's device)."""
        if is_tensor(image) and image.ndim == 3:
            return self._run([image])[0]
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Iterable | np.ndarray, errors: str = "raise") -> list[Detections | ImageError]:
        """Faces in each image, in input order. Images may have any sizes: they run as one batch
        (PNet tiles of one shape, `pyramid`), except on the CPU backends, where two images are in
        flight at once instead (`overlap.overlapped`).

        errors="raise" (default) stops at the first unreadable input with its
        ImageError; errors="keep" returns one entry per input, the ImageError
        in place of each bad one, so one bad file never loses the batch.
        """
        if errors not in ("raise", "keep"):
            raise ValueError(f"errors must be 'raise' or 'keep', got {errors!r}")
        if isinstance(images, (str, bytes, os.PathLike)) or (
                isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] in (3, 4)):
            raise TypeError(f"detect_batch takes a list of images or paths, got a single "
                            f"{'image' if isinstance(images, np.ndarray) else 'path'}: "
                            "use detect(x) or detect_batch([x])")
        if self.backend.overlap and not is_tensor(images):
            items = list(images)
            out: list[Detections | ImageError] = []
            for _, r in overlapped(self._detect_one, items, workers=min(WORKERS, len(items))):
                if isinstance(r, BaseException) and (errors == "raise" or not isinstance(r, ImageError)):
                    raise r
                out.append(r)
            return out
        if is_tensor(images) or (isinstance(images, np.ndarray) and images.ndim == 4
                                 and images.dtype == np.uint8 and images.shape[-1] == 3):
            return self._run(images)
        results: list[Detections | ImageError] = []
        good: list[int] = []
        imgs = []
        for i, im in enumerate(images):
            try:
                imgs.append(im if is_tensor(im) else as_image(im, exif=self.exif))
            except ImageError as e:
                if errors == "raise":
                    raise
                results.append(e)
                continue
            results.append(None)  # type: ignore[arg-type]
            good.append(i)
        for i, det in zip(good, self._run(imgs) if imgs else []):
            results[i] = det
        return results

    def plan_ahead(self, images) -> None:
        """Make and cache the plan of a coming `detect_batch(images)` on this thread (a reader's, say), so
        that the call does not wait for it; nothing on engines that plan photo by photo (the CPU ones)."""
        plan = getattr(self.backend, "plan_ahead", None)
        if plan is not None:
            plan([im.shape[:2] for im in images], self.config)  # `batch_plan` makes them ints

    def _detect_one(self, image) -> Detections:
        return self._run([as_image(image, exif=self.exif)])[0]

    def submit(self, images: Iterable | np.ndarray) -> Callable[[], list[Detections]]:
        """`detect_batch` in two steps: queue the images now -> a function that waits for their `Detections`.

        Why: on a GPU the work is queued on the device and this returns at
        once, so a caller can queue its next batch before it waits for this
        one and turns its results into Python objects (`photos.detect_photos`
        does); elsewhere the work is done here, as one batch. Images as
        `detect_batch` takes them; a bad one raises its ImageError here.
        """
        if not (is_tensor(images) or (isinstance(images, np.ndarray) and images.ndim == 4)):
            images = [im if is_tensor(im) else as_image(im, exif=self.exif) for im in images]
        return self._queue(images)

    def _run(self, images) -> list[Detections]:
        return self._queue(images)()

    def _queue(self, images) -> Callable[[], list[Detections]]:
        wait = submit_images(self.backend, self.backend.images(images), self.config, self.timer)
        return lambda: [Detections(b[:, :4], b[:, 4], lm) for b, lm in wait()]
