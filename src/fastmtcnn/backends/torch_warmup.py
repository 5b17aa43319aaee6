"""Triton kernels compiled in a process of their own, the first time a machine needs them.

Why: compiling the torch backend's kernels takes 7-13 s. On a thread of the
job's process it shares the interpreter with the job, and a job that ends
first stops it between kernels (a daemon thread inside Triton's compiler at
exit aborts the process): on a fresh machine each of the first few processes
compiled a few kernels and ran at the torch ops' rate. A process of its own
runs beside the job on other cores, outlives a short job, and fills Triton's
disk cache once; the job's thread then loads the kernels from it.

One compile per machine at a time: a lock file beside the cache note
(`TorchBackend._cached_note`) names it; other processes wait for the note.
A lock older than `LIMIT` is stale (its process died). Where a process
cannot be started, or it ends without the note, the caller compiles on its
own thread, as before.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path

#: seconds after which a compile process is given up on (its lock is then stale)
LIMIT = 300.0
#: how often a waiting process looks for the note
POLL = 0.1


def compile_aside(note: Path, argv: list[str], stop: threading.Event, limit: float = LIMIT,
                  env: dict | None = None) -> bool:
    """Have `argv` (a process that compiles the kernels and writes `note`) run once for this machine, and
    wait for `note`; True once it is there. False: no process could be started, it ended without the
    note, or `limit` passed (the caller then compiles itself). Returns False at once when `stop` is set
    (the caller's interpreter is exiting; the process, if started, goes on and fills the cache)."""
    lock = note.with_name(note.name + ".lock")
    child = _start(lock, argv, limit, env)
    deadline = time.monotonic() + limit
    while not note.is_file():
        if stop.is_set() or time.monotonic() > deadline:
            return False
        if child is not None and child.poll() is not None and not note.is_file():
            return False  # it failed: compile here
        if child is None and not lock.exists() and not note.is_file():
            return False  # another process's compile ended without the note
        stop.wait(POLL)
    return True


def _start(lock: Path, argv: list[str], limit: float, env: dict | None) -> subprocess.Popen | None:
    """Start `argv` holding `lock`, unless a live lock says another process already compiles."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - lock.stat().st_mtime <= limit:
                    return None  # another process compiles: wait for its note
                lock.unlink()  # stale: its process died
            continue
        except OSError:
            return None
        os.close(fd)
        try:  # its own session: a Ctrl-C of the job, or the job's end, does not stop it
            return subprocess.Popen([*argv, str(lock)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True, env=env)
        except OSError:
            with contextlib.suppress(OSError):
                lock.unlink()
            return None
    return None


def holding(lock: str, compile_kernels) -> int:
    """The compile process's body: compile_kernels() -> whether they compiled (and the note is written);
    the lock is dropped however it ends."""
    try:
        return 0 if compile_kernels() else 1
    finally:
        with contextlib.suppress(OSError):
            Path(lock).unlink()
