"""Decode and detect: the work on one batch of inputs, in a worker process, a Ray task or here.

Nothing in here raises for a bad input: an unreadable file, a corrupt image or
a failed detection becomes the input's error row, so a job never drops an
input and never dies for one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..detections import Detections
from ..images import ImageError, decode_image, read_bytes
from ..photos import detect_photos
from .inputs import is_uri, open_input


@dataclass
class Decoded:
    """One input after decoding: an RGB image, or the reason there is none."""

    path: str
    image: np.ndarray | None = None
    error: str | None = None


@dataclass
class Result:
    """One output row."""

    path: str
    width: int | None = None
    height: int | None = None
    faces: Detections | None = None
    error: str | None = None


def read_input(path: str, cwd: str | None = None) -> np.ndarray:
    """An input's bytes (local path, relative to `cwd` when given, or URI); ImageError names it as listed."""
    local = os.path.join(cwd, path) if cwd and not is_uri(path) and not os.path.isabs(path) else path
    try:
        if is_uri(path):
            with open_input(path) as f:
                return np.frombuffer(f.read(), np.uint8)
        return read_bytes(local)
    except (OSError, ValueError, pa.ArrowException) as e:  # ImageError is a ValueError
        raise ImageError(_error_text(path, e, local)) from None


def detect_gpu(det, paths, cwd: str | None = None):
    """Results of a CUDA detector: files read on threads, decoded by nvJPEG, detected in size bins (photos.py)."""
    for r in detect_photos(det, paths, reader=lambda p: read_input(p, cwd)):
        if r.ok:
            w, h = r.size
            yield Result(r.path, w, h, faces=r.faces)
        else:
            yield Result(r.path, error=_error_text(r.path, r.error))


def decode(path: str, cwd: str | None = None) -> Decoded:
    """Read and decode one input; never raises for a bad file (the error is the result).

    Relative paths are taken from `cwd` when given (worker processes and Ray
    workers may run elsewhere); messages name the path as listed.
    """
    try:
        return Decoded(path, decode_image(read_input(path, cwd), path))
    except ImageError as e:
        return Decoded(path, error=_error_text(path, e))
    except MemoryError:
        return Decoded(path, error=f"{path}: out of memory while decoding")


def decode_many(paths: list[str], cwd: str | None = None) -> list[Decoded]:
    """Worker-process entry point: decode a small chunk of inputs."""
    return [decode(p, cwd) for p in paths]


def detect_decoded(det, items: list[Decoded]) -> list[Result]:
    """Detect faces in the decoded items as one batch; bad items and failures become error rows.

    If the batch call fails, each image is retried alone so one bad image
    cannot take its neighbours down with it.
    """
    ok = [i for i, d in enumerate(items) if d.image is not None]
    faces: dict[int, Detections | str] = {}
    try:
        for i, f in zip(ok, det.detect_batch([items[i].image for i in ok])):
            faces[i] = f
    except Exception:  # noqa: BLE001 - isolate the failing image below
        for i in ok:
            try:
                faces[i] = det.detect(items[i].image)
            except Exception as e:  # noqa: BLE001 - a job never dies for one image
                faces[i] = _error_text(items[i].path, e, prefix="detection failed: ")
    out = []
    for i, d in enumerate(items):
        if d.image is None:
            out.append(Result(d.path, error=d.error))
            continue
        h, w = d.image.shape[:2]
        f = faces[i]
        out.append(Result(d.path, w, h, error=f) if isinstance(f, str) else Result(d.path, w, h, faces=f))
    return out


def _error_text(path: str, e: BaseException, shown_as: str | None = None, prefix: str = "") -> str:
    """One line that starts with the input's path as listed."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if shown_as and shown_as != path:
        msg = msg.replace(shown_as, path, 1)
    return msg if msg.startswith(path) and not prefix else f"{path}: {prefix}{msg}"

