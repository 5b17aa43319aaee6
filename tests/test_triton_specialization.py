"""The Triton kernels whose arguments change with the images compile once, whatever the image sizes.

Why: Triton compiles a kernel again for every new pattern of its int
arguments (1, divisible by 16) and pointers' 16-byte alignment; a new photo
size used to mean a compile in the middle of a job. The check uses Triton's
own argument binder (no GPU needed), so it runs wherever Triton is installed
(the GPU machine; CI's CPU torch has no Triton and skips it).
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from fastmtcnn.backends import torch_kernels as K  # noqa: E402


def _keys(kernel, calls) -> set[str]:
    try:
        from triton.backends.nvidia.compiler import CUDABackend
        from triton.runtime.jit import create_function_from_signature
    except ImportError as e:  # another Triton layout: nothing to check against
        pytest.skip(f"Triton's binder is not where this test looks: {e}")
    binder = create_function_from_signature(kernel.signature, kernel.params, CUDABackend)
    return {str(binder(*args, **kw)[1]) for args, kw in calls}


def test_integral_kernels_compile_once_for_every_image_size_and_offset_in_the_batch_buffer():
    buf = torch.zeros(1 << 16, dtype=torch.int32)
    x = torch.zeros(1 << 12, dtype=torch.uint8)
    # the warm-up's 40x40, photos of 1024 wide (heights divisible by 16 or not), 1080p, a 1x1 image, 16x37;
    # views at offsets of 0..5 int32 (an image's place in a batch's buffer)
    sizes = [(40, 40, 0), (600, 1024, 1), (608, 1024, 4), (1080, 1920, 3), (1, 1, 2), (37, 16, 5)]
    cols = [((x[1:], buf[off:], h, w * 3, (w + 1) * 3), {"ROWS": 16, "BLOCK": 128}) for h, w, off in sizes]
    rows = [((buf[off:], w + 1), {"BLOCK": 256}) for h, w, off in sizes]
    assert len(_keys(K._column_scan, cols)) == 1
    assert len(_keys(K._row_scan, rows)) == 1


def test_conv_epilogues_compile_once_for_every_batch_size():
    x = torch.zeros(64, dtype=torch.float16)
    b = torch.zeros(16, dtype=torch.float16)
    # rows = tiles x 510 x 510 (one tile in the warm-up, 64 or 80 in a folder's window), or crops
    epi = [((x, b, b, x, r), {"C": 10, "BC": 16, "BR": 128}) for r in (260100, 64 * 260100, 80 * 260100, 1, 48)]
    pool = [((x, b, b, x, x, 510, 510, 255, 255, mn), {"C": 10, "BC": 16, "BP": 64, "K": 2, "S": 2,
                                                       "HAS_MASK": True}) for mn in (0, 260100)]
    assert len(_keys(K._bias_prelu, epi)) == 1
    assert len(_keys(K._bias_prelu_pool, pool)) == 1
