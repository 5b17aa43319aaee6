"""Subcommands of the `fastmtcnn` CLI, one module each (see cli.py)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator


def unique_stem(path: str, used: set[str]) -> str:
    """The input's file name without suffix, made unique within a run (inputs from
    different folders may share a name; outputs must not overwrite each other)."""
    stem = name = Path(path).stem
    k = 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


class _NoBar:
    """A progress bar that shows nothing (tqdm's interface as the commands use it), without importing tqdm."""

    def __init__(self, items) -> None:
        self.items = items

    def __iter__(self):
        return iter(self.items)

    def update(self, n: int = 1) -> None:
        pass

    @staticmethod
    def write(line: str, file=None) -> None:
        print(line, file=file or sys.stdout)

    def close(self) -> None:
        pass


def progress(items, total: int | None = None, unit: str = "img"):
    """A progress bar on stderr for jobs of more than one item, shown only on a terminal (where there is
    none to show, tqdm is not even imported: the CLI pays no more than the API for one photo)."""
    total = len(items) if total is None else total
    if total <= 1 or not sys.stderr.isatty():
        return _NoBar(items)
    from tqdm import tqdm

    return tqdm(items, total=total, unit=unit, file=sys.stderr, leave=False)


def error_text(path: str, e: BaseException) -> str:
    """One line for a failed input, naming it once."""
    return str(e) if str(e).startswith(str(path)) else f"{path}: {e}"


def photo_records(det, paths: list[str], bar, handle: Callable[[object, dict], None]) -> Iterator[dict]:
    """One record per input, in order: `{"path": ...}` filled in by `handle(result, record)`, or given an
    "error" (a file that cannot be read or decoded, or an output that cannot be written).

    Why one loop for the photo commands: each reads ahead through `photos.detect_photos` (nvJPEG on a
    CUDA detector) and must turn a bad input into an error row and go on: a batch never drops an input.
    """
    from ..images import ImageError
    from ..photos import detect_photos

    for r in detect_photos(det, paths):
        bar.update(1)
        record: dict = {"path": r.path}
        try:
            if not r.ok:
                raise r.error
            handle(r, record)
        except (ImageError, OSError) as e:
            record["error"] = error_text(r.path, e)
            bar.write(f"error: {record['error']}", file=sys.stderr)
        yield record


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 face', '2 faces', '0 errors' ('many' for irregular plurals)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def output_dir(path: str, flag: str) -> Path:
    """Create an output folder, or fail with one line naming the flag (OSError, exit 2)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OSError(f"{flag} {path}: exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"{flag} {path}: cannot create the folder ({e.strerror or e})") from None
    return p


def open_output(path: str, flag: str):
    """Open an output text file for writing ('-' is stdout), or fail with one line naming the flag."""
    if path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise OSError(f"{flag} {path}: cannot write ({e.strerror or e})") from None


def annotated_suffix(path: str) -> str:
    """The input's own image format for an annotated copy when OpenCV can write it in colour, else .png."""
    import cv2

    suffix = Path(path).suffix.lower()
    colour = suffix not in (".pgm", ".pbm")  # grey-only formats would lose the drawing's colours
    return suffix if suffix and colour and cv2.haveImageWriter(f"x{suffix}") else ".png"


def input_paths(items: list[str]) -> list[str]:
    """Files, folders and globs -> image paths; a folder without images stays in the list (to be
    reported as a failed input), but when the inputs name no image at all that is the error."""
    from ..images import expand_inputs

    paths = expand_inputs(items)
    if all(Path(p).is_dir() for p in paths):
        raise ValueError("no input images found")
    return paths
