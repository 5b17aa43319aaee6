"""Subcommands of the `fastmtcnn` CLI, one module each (see cli.py)."""
from __future__ import annotations

import sys
from pathlib import Path


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


def progress(items, total: int | None = None, unit: str = "img"):
    """A progress bar on stderr for jobs of more than one item, shown only on a terminal."""
    from tqdm import tqdm

    total = len(items) if total is None else total
    return tqdm(items, total=total, unit=unit, disable=None if total > 1 else True, file=sys.stderr, leave=False)


def error_text(path: str, e: BaseException) -> str:
    """One line for a failed input, naming it once."""
    return str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
