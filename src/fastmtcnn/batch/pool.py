"""Local mode: a pool of worker processes that decode (and, on a CPU, detect) while this process writes.

At most about `2 * workers + 2` batches are in flight, whatever the size of
the collection. A worker exits by itself when the job's process dies (a
`kill -9` leaves no orphans), and an interrupted run keeps the rows it has.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

from tqdm import tqdm

from ..overlap import chunks
from ..photos import nvjpeg_available
from .parquet import Output, PartBuffer, Stats
from .resume import Pending
from .work import Result, decode_many, detect_decoded, detect_gpu


def run_local(pending: Pending, output: Output, make_detector: Callable, *, workers: int = 2,
              detect_in_workers: bool = True, batch: int = 16, part_size: int = 1000,
              progress: bool | None = None) -> Stats:
    """Process the pending inputs with a pool of `workers` processes and write parts here.

    detect_in_workers: each worker decodes and detects its batches with its own
    detector (`make_detector` must pickle; best on CPU, where one process cannot
    keep the cores busy). Otherwise workers only decode and this process
    detects (one detector for a GPU). workers=0 does everything here.
    """
    stats = Stats()
    parts = PartBuffer(output, part_size, stats)
    cwd = os.getcwd()
    in_workers = detect_in_workers and workers > 0
    det = None if in_workers else make_detector()
    pool = None
    if workers > 0:
        pool = ProcessPoolExecutor(workers, mp.get_context("forkserver"), _init_worker,
                                   (os.getpid(), make_detector if in_workers else None))
    jobs = chunks(pending, batch)
    bar = tqdm(total=pending.todo, unit="img", file=sys.stderr, disable=None if progress is None else not progress,
               dynamic_ncols=True, smoothing=0.05)
    try:
        if det is not None and nvjpeg_available(det):  # nvJPEG decodes here; no worker processes needed
            for r in detect_gpu(det, pending, cwd):
                parts.add([r])
                bar.update(1)
            parts.flush()
            return stats
        in_flight: deque = deque()

        def refill() -> None:
            while len(in_flight) < 2 * workers + 2 and (job := next(jobs, None)):
                fn = detect_paths if in_workers else decode_many
                in_flight.append(pool.submit(fn, job, cwd) if pool else job)

        refill()
        while in_flight:
            job = in_flight.popleft()
            if in_workers:
                results = job.result()
            else:
                results = detect_decoded(det, job.result() if pool else decode_many(job, cwd))
            refill()
            parts.add(results)
            bar.update(len(results))
        parts.flush()
    except KeyboardInterrupt:
        parts.flush()  # rows already detected are complete: keep them
        raise
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)
    return stats


# --------------------------------------------------------------------------- in the worker processes

_worker_detector = None


def _init_worker(parent: int, make_detector: Callable | None) -> None:
    """Worker set-up: the detector, and an exit if the job's process dies (kill -9 leaves no orphans)."""
    global _worker_detector
    if make_detector is not None:
        _worker_detector = make_detector()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def detect_paths(paths: list[str], cwd: str | None = None) -> list[Result]:
    """Worker-process entry point: decode and detect a batch with this process's detector."""
    return detect_decoded(_worker_detector, decode_many(paths, cwd))
