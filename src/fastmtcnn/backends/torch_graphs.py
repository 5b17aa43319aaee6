"""CUDA-graph capture for the torch backend, and the policy that decides when a shape is worth one.

A capture costs warm-up runs (cuDNN autotune, allocator, Triton compiles)
plus the capture itself: tenths of a second, seconds on a cold Triton cache.
It pays only for shapes that come back, so by default (``graphs="auto"``) a
shape runs eagerly the first time it is seen and is captured the second time
(`ShapeCache.wanted`). Batch sizes are rounded up to a few buckets
(`bucket`), so a file's last partial chunk or a varying number of frames
reuses a graph already made instead of capturing again.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

#: batch buckets: frames per graph are rounded up to one of these (or to the graph batch)
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def bucket(n: int, limit: int, captured: tuple[int, ...] = ()) -> int:
    """The batch size n frames run at: the smallest already captured size >= n, else the next bucket (<= limit)."""
    have = [b for b in captured if b >= n]
    if have:
        return min(have)
    return min(next((b for b in BUCKETS if b >= n), n), max(limit, n))


def capture(fn: Callable, static_in: torch.Tensor, device: torch.device, warmup: int = 3):
    """(graph, output) of fn(static_in), captured after `warmup` eager runs on a side stream.

    cuDNN autotune is on for the warm-ups and the capture only: the shapes are
    fixed from here on, so timing algorithms pays once; eager calls, whose
    shapes change, run without it (a new shape would otherwise be timed anew).
    Replays read `static_in`: copy each new input into it first. The capture
    is thread-local: decoder, upload and writer threads of a video job keep
    using the GPU (on their own streams) while a detector thread captures.
    """
    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = fn(static_in)
    finally:
        torch.backends.cudnn.benchmark = prev
    return graph, out


class ShapeCache:
    """Captured work per shape key, least recently used dropped past `size` entries or `budget` bytes
    (graphs of large batches hold gigabytes each); counts sightings for "auto"."""

    def __init__(self, size: int = 8, after: int = 1, budget: int | None = None) -> None:
        self.size, self.after, self.budget = size, after, budget
        self.entries: OrderedDict = OrderedDict()
        self.costs: dict = {}  # bytes an entry holds (a graph's memory pool)
        self.seen: dict = {}

    def get(self, key):
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
        return hit

    def put(self, key, value, cost: int = 0) -> None:
        """Keep value under key; past `size` entries, or `budget` bytes of costs, the least recently used
        go (never the one just put)."""
        self.entries[key] = value
        self.costs[key] = cost
        self.entries.move_to_end(key)
        while len(self.entries) > 1 and (len(self.entries) > self.size or self._over()):
            old, _ = self.entries.popitem(last=False)
            self.costs.pop(old, None)

    def _over(self) -> bool:
        return self.budget is not None and sum(self.costs.values()) > self.budget

    def pop(self, key) -> None:
        self.entries.pop(key, None)
        self.costs.pop(key, None)

    def wanted(self, key) -> bool:
        """Count a sighting of key; True once it has been seen more than `after` times before."""
        n = self.seen.get(key, 0)
        if len(self.seen) > 1024:
            self.seen.clear()
        self.seen[key] = n + 1
        return n >= self.after

    def sizes(self, match: Callable) -> tuple[int, ...]:
        """Batch sizes (key[0]) of captured entries whose key satisfies match."""
        return tuple(k[0] for k, v in self.entries.items() if v is not False and match(k))
