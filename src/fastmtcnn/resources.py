"""How many photos a machine can work on at once: by its cores, and by its memory.

A detector's memory is a fixed part (libraries, compiled nets) plus a part
that grows with the photo: decoded pixels, the integral image (int32, 12
bytes a pixel), one PNet band and the RNet/ONet crops. Measured peaks with
OpenVINO (the default engine) on a 2-core AMD EPYC, a crowded photo (8 faces)
at each size: 244 MiB at 640x480, 677 MiB at 12 MP, 1680 MiB at 48 MP, flat
from the second call on; that is under 250 MiB + 40 bytes a pixel at every
size, the rule used here (tests/test_memory.py holds it). ONNX Runtime peaks
higher (924 MiB at 12 MP).
"""
from __future__ import annotations

import os

#: a detector's fixed memory (measured 80 MiB after start-up; after a 640x480 photo 192 MiB with one face,
#: 244 MiB with six, whose RNet/ONet batches compile every batch shape)
BASE_BYTES = 250 << 20
#: peak memory per photo pixel above that (measured 36 B/px from 640x480 to 12 MP, 29 B/px from 12 to 48 MP)
BYTES_PER_PIXEL = 40
#: photo size assumed when it is not known in advance: a 12 MP phone photo
TYPICAL_PIXELS = 12_000_000


def bytes_per_worker(pixels: int = TYPICAL_PIXELS) -> int:
    """Peak memory of one detector working on photos of up to `pixels` pixels."""
    return BASE_BYTES + BYTES_PER_PIXEL * int(pixels)


def worker_count(cpus: int, available: int | None, pixels: int = TYPICAL_PIXELS, share: float = 0.8) -> int:
    """Detector processes to start: one per core, but no more than `share` of the available memory holds.

    available: bytes of memory free for the job (None: unknown, cores decide).
    """
    workers = max(1, int(cpus))
    if available is not None:
        workers = min(workers, max(1, int(share * available) // bytes_per_worker(pixels)))
    return workers


def available_memory() -> int | None:
    """Bytes of memory available to new work (Linux MemAvailable; the free pages elsewhere), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
