"""Subcommands of the `fastmtcnn` CLI, one module each (see cli.py)."""
from __future__ import annotations

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
