"""Where fastmtcnn keeps what a new process should not redo: compiled OpenVINO nets, the note that a
GPU's Triton kernels are in Triton's cache.

``$FASTMTCNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastmtcnn``, else ``~/.cache/fastmtcnn``;
``FASTMTCNN_CACHE_DIR=off`` (or a folder that cannot be written) turns every use off, quietly.
"""
from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

OFF = ("", "0", "off", "none", "false")


@lru_cache(maxsize=None)
def folder(name: str) -> str | None:
    """The cache's folder `name` (made if need be), or None when the cache is off or cannot be written."""
    env = os.environ.get("FASTMTCNN_CACHE_DIR")
    if env is not None and env.strip().lower() in OFF:
        return None
    if env:
        root = Path(env).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastmtcnn"
    return writable(str(root / name))


@lru_cache(maxsize=None)
def writable(path: str) -> str | None:
    """`path` (made if need be) when files can be written in it, else None.

    Tried with a file of this process and thread, made and removed, rather than
    `tempfile`: its import costs 5-8 ms of a fresh process (2 cores), here in
    a detector's constructor, on the way to the first photo's faces.
    """
    probe = Path(path) / f".probe-{os.getpid()}-{threading.get_ident()}"
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        probe.unlink()
    except OSError:
        return None
    return path
