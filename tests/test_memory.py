"""Peak memory of a detector on the CPU: within docs/cpu.md's rule at every photo size, flat over calls.

Why: README and docs/cpu.md promise memory bounded by the photo (a band of
PNet's canvas, not the whole pyramid; an integral image and the decoded
photo per pixel), and `fastmtcnn batch` starts as many workers as that rule
lets the machine hold (`resources.bytes_per_worker`, the rule's one
definition). Each case runs in a fresh process that decodes a photo from its
file and detects, as a user's script does, and reports its peak resident
memory (VmHWM) after every call: the peak must stay within the rule, and
stop growing after the second call (the first call's peak is lower: the
engine keeps some of what it allocates; later calls reuse it).

The photos are the benchmark's (benchmarks/bench_cpu.py): a crowded photo
upscaled to 12 MP and to 48 MP, and one at 640x480, JPEG files.
"""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest

from fastmtcnn.resources import bytes_per_worker

#: photo sizes (w, h) and detect calls per process
SIZES = {"640x480": ((640, 480), 4), "12MP": ((4032, 3024), 4), "48MP": ((8000, 6000), 3)}
#: a peak after the second call may exceed the second call's peak by this much (allocator noise); a leak of
#: one integral image a call (12 bytes a pixel) is several times more
FLAT = 0.02

#: run in a fresh process: argv = photo path, backend, calls; prints [[peak bytes, faces], ...] per call
PROBE = """
import json, sys
from fastmtcnn import MTCNN

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

det = MTCNN(backend=sys.argv[2])
out = []
for _ in range(int(sys.argv[3])):
    faces = det.detect(sys.argv[1])
    out.append([peak(), len(faces)])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def photo_files(shared_data, tmp_path_factory) -> dict[str, str]:
    """The 8-face group photo at each size, as JPEG files (the benchmark's upscaling)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("peak memory is read from /proc (Linux)")
    src = cv2.imread(str(shared_data / "insightface_t1.jpg"), cv2.IMREAD_COLOR)
    root = tmp_path_factory.mktemp("memory")
    files = {}
    for key, ((w, h), _) in SIZES.items():
        interp = cv2.INTER_AREA if w * h < src.shape[0] * src.shape[1] else cv2.INTER_CUBIC
        files[key] = str(root / f"{key}.jpg")
        cv2.imwrite(files[key], cv2.resize(src, (w, h), interpolation=interp), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return files


def peaks(path: str, backend: str, calls: int) -> list[tuple[int, int]]:
    """(peak resident bytes, faces) after each of `calls` detections in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", PROBE, path, backend, str(calls)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(x) for x in json.loads(proc.stdout.strip().splitlines()[-1])]


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


@pytest.mark.parametrize("size", list(SIZES))
def test_openvino_peak_stays_within_the_documented_rule_and_flat(photo_files, size):
    """The default engine: peak <= resources.bytes_per_worker(pixels) (docs/cpu.md: 250 MiB + 40 bytes a
    pixel), and no growth from the second call on."""
    pytest.importorskip("openvino")
    (w, h), calls = SIZES[size]
    got = peaks(photo_files[size], "openvino", calls)
    rule = bytes_per_worker(w * h)
    print(f"\nopenvino {size}: peaks {[_mib(p) for p, _ in got]}, rule {_mib(rule)}")
    assert len({n for _, n in got}) == 1 and got[0][1] >= 6, got  # the same faces every call
    assert max(p for p, _ in got) <= rule, f"{size}: peak {_mib(max(p for p, _ in got))} > rule {_mib(rule)}"
    assert got[-1][0] <= got[1][0] * (1 + FLAT), f"{size}: peak grows with calls: {[_mib(p) for p, _ in got]}"


def test_onnxruntime_peak_is_flat_over_calls(photo_files):
    """ONNX Runtime holds more than the rule (its arena: docs/cpu.md gives its peaks), but no more per call."""
    pytest.importorskip("onnxruntime")
    got = peaks(photo_files["12MP"], "onnxruntime", SIZES["12MP"][1])
    print(f"\nonnxruntime 12MP: peaks {[_mib(p) for p, _ in got]}")
    assert len({n for _, n in got}) == 1 and got[0][1] >= 6, got
    assert got[-1][0] <= got[1][0] * (1 + FLAT), f"peak grows with calls: {[_mib(p) for p, _ in got]}"
