"""`batch` sizes its worker processes by memory as well as cores.

Why: every worker holds a detector and a photo's working set (hundreds of MB
for a phone photo); one worker per core on a small-memory machine would
swap or be killed. The rule is `resources.worker_count`.
"""
from __future__ import annotations

from fastmtcnn.resources import BASE_BYTES, BYTES_PER_PIXEL, available_memory, bytes_per_worker, worker_count

GB = 1 << 30


def test_one_worker_per_core_when_memory_is_plentiful():
    assert worker_count(2, 64 * GB) == 2
    assert worker_count(16, None) == 16, "unknown memory: the cores decide"


def test_memory_caps_the_workers_but_never_below_one():
    per = bytes_per_worker()  # a 12 MP photo's detector
    assert per == BASE_BYTES + BYTES_PER_PIXEL * 12_000_000
    assert worker_count(16, int(3 * per / 0.8)) == 3
    assert worker_count(16, 100 << 20) == 1
    assert worker_count(0, 64 * GB) == 1
    assert worker_count(16, 8 * GB, pixels=48_000_000) < worker_count(16, 8 * GB, pixels=1_000_000)


def test_available_memory_is_read_from_the_machine():
    free = available_memory()
    assert free is None or free > 0
