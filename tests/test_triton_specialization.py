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


def test_integral_kernels_compile_once_for_every_batch_of_image_sizes_and_offsets():
    """The integral's kernels read each image's address, size and place from a table: their arguments
    are the table and the batch's buffer (also a view at any offset), whatever the images."""
    buf = torch.zeros(1 << 16, dtype=torch.int32)
    tables = [torch.zeros((n, 4), dtype=torch.int64) for n in (1, 3, 16, 64)]
    calls = [((t, buf[off:]), {"ROWS": 16, "BLOCK": 128}) for t in tables for off in range(6)]
    assert len(_keys(K._column_scan, calls)) == 1
    assert len(_keys(K._row_scan, [((t, buf[off:]), {"BLOCK": 256}) for t in tables for off in range(6)])) == 1


def test_conv_epilogues_compile_once_for_every_batch_size():
    x = torch.zeros(64, dtype=torch.float16)
    b = torch.zeros(16, dtype=torch.float16)
    # rows = tiles x 510 x 510 (one tile in the warm-up, 64 or 80 in a folder's window), or crops
    epi = [((x, b, b, x, r), {"C": 10, "BC": 16, "BR": 128}) for r in (260100, 64 * 260100, 80 * 260100, 1, 48)]
    pool = [((x, b, b, x, x, 510, 510, 255, 255, mn), {"C": 10, "BC": 16, "BP": 64, "K": 2, "S": 2,
                                                       "HAS_MASK": True}) for mn in (0, 260100)]
    assert len(_keys(K._bias_prelu, epi)) == 1
    assert len(_keys(K._bias_prelu_pool, pool)) == 1
