"""The Triton kernels whose arguments change with the images compile once, whatever the image sizes.

Why: Triton compiles a kernel again for every new pattern of its int
arguments (1, divisible by 16) and pointers' 16-byte alignment; a new photo
size used to mean a compile in the middle of a job. The check uses Triton's
own argument binder (no GPU needed), so it runs wherever Triton is installed
(the GPU machine, and CI, which installs Triton beside its CPU torch).
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

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


class Launches:
    """Stands in for Triton kernels (`stub`): records each launch instead of running it; `keys()` -> the
    compile keys recorded per kernel name (Triton's own binder), and a fresh record."""

    def __init__(self, monkeypatch) -> None:
        self.monkeypatch = monkeypatch
        self.launched: list = []

    def stub(self, *kernels) -> None:
        for kernel in kernels:
            self.monkeypatch.setattr(K, kernel.__name__, self._Kernel(kernel, self.launched))

    class _Kernel:
        def __init__(self, kernel, launched: list) -> None:
            self.kernel, self.launched = kernel, launched

        def __getitem__(self, grid):
            return lambda *args, **kw: self.launched.append((self.kernel, args, kw))

    def keys(self) -> dict[str, set[str]]:
        from triton.backends.nvidia.compiler import CUDABackend
        from triton.runtime.jit import create_function_from_signature

        out: dict[str, set[str]] = {}
        for kernel, args, kw in self.launched:
            binder = create_function_from_signature(kernel.signature, kernel.params, CUDABackend)
            out.setdefault(kernel.__name__, set()).add(str(binder(*args, **kw)[1:]))
        self.launched.clear()
        return out


def test_the_warm_up_launches_the_nms_kernels_as_every_cascade_call_does(shared_data, monkeypatch):
    """The fused NMS kernels take the threshold and a row's number of 32-slot words as compile-time
    constants, so the warm-up must launch them as the cascade does (its thresholds, each size class's
    slot counts), or a job's first call compiles them. The cascade's NMS calls are recorded from
    fixed-shape runs on the CPU (one photo, then a batch of 8: the two size classes), then launched with
    the kernels stubbed, as the warm-up's are: every compile key of theirs is one the warm-up makes."""
    from fastmtcnn import MTCNN, read_image
    from fastmtcnn.backends import torch_nms, torch_static

    det = MTCNN(minsize=40, backend="torch", device="cpu", fixed_shapes=True)
    calls = []
    real = torch_static.dense_nms
    monkeypatch.setattr(torch_static, "dense_nms", lambda *a, **k: calls.append(a) or real(*a, **k))
    img = read_image(shared_data / "bob_multiple-faces.jpg")
    det.detect_batch([img])
    det.detect_batch([img] * 8)
    monkeypatch.undo()
    assert len(calls) >= 6 and {a[0].shape[0] for a in calls} == {1, 8}

    launches = Launches(monkeypatch)
    launches.stub(K._suppression_bits, K._keep_step)
    for a in calls:
        torch_nms.dense_nms(*a, fused=True)
    real_keys = launches.keys()
    for step in det.backend._nms_steps():
        step()
    warm_keys = launches.keys()
    assert set(real_keys) == {"_suppression_bits", "_keep_step"}
    for name, keys in real_keys.items():
        assert keys <= warm_keys.get(name, set()), name


def test_the_warm_up_launches_every_kernel_as_a_folder_window_and_a_photo_do(shared_data, monkeypatch):
    """What a job's first call compiles in the foreground is every kernel launch whose compile key the
    warm-up did not make. The fixed-shape cascade's launches depend on its shapes, not on the pixels, so
    they are recorded on the CPU with every Triton kernel stubbed (one photo, then a batch of 8 of other
    sizes: both size classes) and compared with the warm-up's, recorded the same way. The fused NMS, which
    the CPU does not run, is the test above."""
    import cv2

    from fastmtcnn import MTCNN, read_image
    from fastmtcnn.backends import torch as torch_backend

    jitted = [v for v in vars(K).values() if isinstance(v, triton.runtime.jit.JITFunction)]
    launches = Launches(monkeypatch)
    launches.stub(*jitted)
    monkeypatch.setattr(torch_backend, "triton_usable", lambda device: True)
    det = MTCNN(minsize=40, backend="torch", device="cpu")
    # the GPU's settings (fp16, NHWC, fused nets), which the options refuse on the CPU
    be = det.backend = torch_backend.TorchBackend("cpu", fp16=True, channels_last=True, fixed_shapes=True)
    assert be.kernels and be.fused_nets
    be._compiled, be.warmup = True, None  # as once the warm-up is done: the kernels in use, no thread

    img = read_image(shared_data / "bob_multiple-faces.jpg")
    det.detect_batch([img])
    det.detect_batch([cv2.resize(img, (400 + 24 * i, 300 + 10 * i)) for i in range(8)])
    real = launches.keys()
    for step in be._kernel_steps():
        step()
    warm = launches.keys()
    assert {"_tiles", "_crops", "_column_scan", "_row_scan", "_bias_prelu", "_bias_prelu_pool"} <= set(real)
    missing = {name: len(keys - warm.get(name, set())) for name, keys in real.items() if keys - warm.get(name, set())}
    assert not missing, f"compile keys a call makes that the warm-up does not: {missing}"
