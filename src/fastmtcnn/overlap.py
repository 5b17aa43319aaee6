"""Several photos in flight at once, results in input order.

A photo's detection alternates between work that fills every core (the
engines' PNet, RNet and ONet) and work on one core (decoding, resampling,
candidates, NMS, crops). Running two photos side by side in threads lets the
one-core stages of one overlap the engine stages of the other: OpenCV, numpy,
ONNX Runtime and OpenVINO all release the GIL while they work. Results come
back in input order; an exception stays with its item instead of stopping
the others.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: photos in flight at once: two fill the gaps of a photo's one-core stages (more
#: only hold more memory; measured on 2 cores, README "Benchmarks")
WORKERS = 2


def overlapped(fn: Callable[[T], R], items: Iterable[T], workers: int = WORKERS,
               ahead: int | None = None) -> Iterator[tuple[T, R | BaseException]]:
    """(item, fn(item) or the exception it raised) for each item, in input order.

    At most `workers` items run at once and `ahead` (default workers + 1) are
    started before the oldest is handed back, which bounds memory. workers <= 1
    runs them one after another in this thread.
    """
    if workers <= 1:
        for item in items:
            yield item, _call(fn, item)
        return
    ahead = max(workers, ahead if ahead is not None else workers + 1)
    pending: deque[tuple[T, Future]] = deque()
    it = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="fastmtcnn") as pool:
        try:
            while True:
                while len(pending) < ahead:
                    item = next(it, _END)
                    if item is _END:
                        break
                    pending.append((item, pool.submit(_call, fn, item)))
                if not pending:
                    return
                item, fut = pending.popleft()
                yield item, fut.result()
        finally:
            for _, fut in pending:  # the caller stopped early: drop what has not started
                fut.cancel()


_END = object()


def _call(fn, item):
    try:
        return fn(item)
    except Exception as e:  # noqa: BLE001 - handed back with its item, in order; the caller decides
        return e


def chunks(items: Iterable[T], n: int, first: int | None = None) -> Iterator[list[T]]:
    """Lists of n items (the first of `first`, the last may be shorter), read from items as they are needed."""
    it = iter(items)
    size = first or n
    while chunk := list(islice(it, size)):
        yield chunk
        size = n
