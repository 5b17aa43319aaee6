"""`batch` sizes its worker processes by memory as well as cores.

Why: every worker holds a detector and a photo's working set (hundreds of MB
for a phone photo); one worker per core on a small-memory machine would
swap or be killed. The rule is `resources.worker_count`.
"""
from __future__ import annotations

import pytest

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


def test_available_memory_is_the_machines_in_bytes(monkeypatch):
    """Linux's MemAvailable (free pages plus what the kernel can reclaim), in bytes: at least about the
    free pages, at most the physical memory; elsewhere the free pages; None when nothing says."""
    import builtins
    import os
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("MemAvailable and sysconf's page counts are read on Linux")
    page = os.sysconf("SC_PAGE_SIZE")
    total, free = os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    assert 0.5 * free <= available_memory() <= total  # bytes, not kB (1024x off either way)

    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path) == "/proc/meminfo":
            raise OSError("no /proc here")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert 0.5 * free <= available_memory() <= total  # the free pages, from sysconf

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(os, "sysconf", no_sysconf)
    assert available_memory() is None  # unknown: worker_count lets the cores decide
