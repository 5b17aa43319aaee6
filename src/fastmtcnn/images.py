"""Reading images and bringing arrays to what the nets expect: RGB uint8, H x W x 3.

Colour order matters: the nets were trained on RGB. Arrays passed to the API
are taken as RGB; files are decoded with OpenCV (BGR) and converted here.

EXIF orientation: phones store photos sideways with a tag saying how to turn
them. The reference (facenet-pytorch, fed a decoded array) ignores that tag,
so by default we do too and find the reference's faces in the stored pixels.
`exif=True` applies the tag first (OpenCV's IMREAD_COLOR does; IMREAD_UNCHANGED,
the faithful default, does not), so boxes are in the upright photo's pixels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".jp2"}
MAX_PIXELS = 200_000_000  # refuse absurd sizes with a clear error instead of running out of memory


def is_tensor(x) -> bool:
    """A torch tensor, told by its module so that torch need not be imported."""
    return type(x).__module__.startswith("torch")


def host_image(image) -> np.ndarray:
    """An RGB image as a numpy array: a tensor on the GPU (NVDEC, nvJPEG) is copied to the host."""
    return image if isinstance(image, np.ndarray) else image.cpu().numpy()


class ImageError(ValueError):
    """An input that cannot be used as an image; the message says why, in one line."""


def to_rgb(image: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """Grayscale, RGBA, 16-bit or float [0, 1] arrays -> contiguous RGB uint8 (H, W, 3)."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy array or a path, got {type(image).__name__}")
    a = image
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(f"expected an H x W, H x W x 3 or H x W x 4 image, got shape {image.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"image is empty (shape {image.shape})")
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype in (np.float32, np.float64):
        if not np.isfinite(a).all():
            raise ImageError("image has NaN or infinite values")
        hi = float(a.max()) if a.size else 0.0
        a = np.clip(a * 255.0 if hi <= 1.0 else a, 0, 255).round().astype(np.uint8)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {a.dtype} (use uint8, uint16 or float)")
    if a.ndim == 2:
        a = cv2.cvtColor(a, cv2.COLOR_GRAY2RGB)
    elif a.shape[2] == 4:
        a = cv2.cvtColor(a, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    elif bgr:
        a = cv2.cvtColor(a, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(a)


def read_image(path: str | os.PathLike, *, exif: bool = False) -> np.ndarray:
    """Decode an image file to RGB uint8, or raise ImageError with a one-line reason.

    exif: turn the image upright by its EXIF orientation tag first (see the module's note).
    """
    return decode_image(read_bytes(path), str(path), exif=exif)


def read_bytes(path: str | os.PathLike) -> np.ndarray:
    """A file's bytes as uint8, or ImageError (missing, a folder, unreadable) with a one-line reason."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        empty = next(iter_image_files(p), None) is None
        raise ImageError(f"{p}: is a directory" + (" with no image files in it" if empty else ""))
    try:
        return np.fromfile(p, np.uint8)
    except OSError as e:
        raise ImageError(f"{p}: cannot read ({e.strerror or e})") from None


def decode_image(data: bytes | np.ndarray, name: str = "<bytes>", *, exif: bool = False) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) -> RGB uint8; ImageError names `name` on failure.

    exif: apply the EXIF orientation tag (IMREAD_COLOR: 8-bit BGR, alpha dropped,
    which is what `to_rgb` makes of the other flags' output too).
    """
    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if data.size == 0:
        raise ImageError(f"{name}: empty file")
    check_complete(name, data)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR if exif else cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{name}: not an image, or a format OpenCV cannot decode")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise ImageError(f"{name}: {img.shape[1]}x{img.shape[0]} is larger than {MAX_PIXELS} pixels")
    return to_rgb(img, bgr=True)


def check_complete(p: str, data: np.ndarray) -> None:
    """Truncated JPEG/PNG files decode to grey garbage without an error: catch them.

    The file's own structure is walked (JPEG segments up to the first scan,
    PNG chunks), so trailing bytes after a complete image and end markers
    inside EXIF thumbnails are both handled right.
    """
    buf = data.tobytes()
    if buf[:2] == b"\xff\xd8" and not _jpeg_complete(buf):
        raise ImageError(f"{p}: truncated or corrupt JPEG (no end of image after the scan data)")
    if buf[:8] == b"\x89PNG\r\n\x1a\n" and not _png_complete(buf):
        raise ImageError(f"{p}: truncated or corrupt PNG (no IEND chunk)")


def _jpeg_complete(buf: bytes) -> bool:
    i = 2
    while i + 4 <= len(buf):
        if buf[i] != 0xFF:
            return False
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        seglen = int.from_bytes(buf[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data runs to EOI (FF D9 only as a marker there)
            # searched from the end: a complete file's EOI is in its last bytes. Why: a search from the scan
            # runs over the whole file with the GIL held (0.19 ms a 1080p JPEG), and a folder job's reader
            # threads then kept the thread that feeds the GPU waiting (H200 profile, 2026-12-07)
            return buf.rfind(b"\xff\xd9", i + 2 + seglen) != -1
        i += 2 + seglen
    return False


def _png_complete(buf: bytes) -> bool:
    i = 8
    while i + 8 <= len(buf):
        length = int.from_bytes(buf[i:i + 4], "big")
        if buf[i + 4:i + 8] == b"IEND":
            return True
        i += 12 + length
    return False


def as_image(image, *, exif: bool = False) -> np.ndarray:
    """A path or an RGB array -> RGB uint8 (H, W, 3); exif applies to paths (arrays are taken as they are)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, exif=exif)
    return to_rgb(image)


def expand_inputs(items: list[str]) -> list[str]:
    """Files, folders (recursive, image suffixes) and globs -> list of paths, for commands that detect.

    Folders list as `iter_image_files` does. Globs are sorted. Paths that
    match nothing and folders without images are kept, so the caller reports
    them as per-input errors rather than dropping them silently. (`fastmtcnn batch` lists its inputs
    with the same folder rule but streams them, reads manifests and URIs, and
    refuses a spec that names nothing: see `fastmtcnn.batch.inputs`.)
    """
    import glob

    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list(iter_image_files(p))
            out.extend(found or [item])  # an empty folder is kept, so that it is reported, not skipped
        elif any(c in item for c in "*?[") and not p.exists():
            hits = sorted(glob.glob(item, recursive=True))
            out.extend(hits if hits else [item])
        else:
            out.append(item)
    return out


def iter_image_files(folder: str | os.PathLike) -> Iterator[str]:
    """Image files (by suffix) under a folder, recursively, in sorted path order, streamed.

    One folder is listed at a time, so a tree of millions of files never sits
    in memory. Links to folders are not followed (no loops); a folder that
    cannot be listed is an error (ValueError), never a silent gap.
    """
    stack = [iter(_sorted_entries(str(folder)))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry.is_dir(follow_symlinks=False):
            stack.append(iter(_sorted_entries(entry.path)))
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
            yield entry.path


def _sorted_entries(folder: str) -> list[os.DirEntry]:
    """A folder's entries, a subfolder sorting as "name/": depth-first order is then sorted path order."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as e:
        raise ValueError(f"{folder}: cannot list folder ({e.strerror or e})") from None
    return sorted(entries, key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
