"""Each Triton kernel of the torch backend against the one definition it stands in for (GPU only).

Why: the kernels exist for speed only; the maths is defined once, in
`crop` (integral image, area bins and sums), `boxes.overlap` (through
`torch_nms.suppression`) and `nets.py` (the nets). These tests run on the
GPU machine and skip cleanly without CUDA or Triton.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastmtcnn import MTCNN, read_image  # noqa: E402
from fastmtcnn.crop import MEAN, SCALE, area_resize, integral_image  # noqa: E402
from fastmtcnn.pipeline import canvas_input  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def kernels():
    from fastmtcnn.backends import torch_kernels

    if not torch_kernels.available(torch.device("cuda")):
        pytest.skip("no Triton")
    return torch_kernels


@pytest.fixture(scope="module")
def frames(shared_data):
    img = read_image(shared_data / "insightface_t1.jpg")
    return torch.from_numpy(np.stack([img, img[::-1].copy()])).cuda()


def test_triton_integral_is_crop_integral_image(kernels, frames):
    assert torch.equal(kernels.integral(frames), integral_image(frames))


def test_triton_canvas_is_the_shared_per_level_resize(kernels, frames):
    det = MTCNN(backend="torch", device="cuda", fp16=False, graphs=False)
    det.backend._compiled = True  # the kernels, as after a capture
    plan = det.plan(*frames.shape[1:3])
    ii = integral_image(frames)
    got = det.backend.canvas(ii, plan.canvases[0], plan)
    want = canvas_input(ii, plan.canvases[0], 2)
    for lv in plan.canvases[0].levels:
        sl = (slice(None), slice(None), slice(lv.y, lv.y + lv.h), slice(lv.x, lv.x + lv.w))
        assert torch.equal(got[sl], want[sl]), lv


def test_triton_crops_are_crop_area_resize(kernels, frames):
    g = torch.Generator().manual_seed(0)
    h, w = frames.shape[1:3]
    y0 = torch.randint(0, h - 2, (300,), generator=g)
    x0 = torch.randint(0, w - 2, (300,), generator=g)
    win = torch.stack([y0, torch.minimum(y0 + 1 + torch.randint(0, 300, (300,), generator=g), torch.tensor(h)),
                       x0, torch.minimum(x0 + 1 + torch.randint(0, 300, (300,), generator=g), torch.tensor(w))], 1)
    f = torch.randint(0, 2, (300,), generator=g)
    ii = integral_image(frames)
    win, f = win.cuda(), f.cuda()
    for size in (24, 48):
        assert torch.equal(kernels.crops(ii, f, win, size, torch.float32, MEAN, SCALE),
                           area_resize(ii, f, win, size, size))


@pytest.mark.parametrize("mode,plus_one,grouped",
                         [("union", False, True), ("union", False, False), ("min", True, False)])
def test_bit_matrix_nms_is_the_dense_suppression_of_boxes_overlap(kernels, mode, plus_one, grouped):
    from fastmtcnn.backends.torch_nms import dense_nms

    g = torch.Generator().manual_seed(1)
    xy = torch.rand(3, 900, 2, generator=g) * 100
    b = torch.cat([xy, xy + torch.rand(3, 900, 2, generator=g) * 30 + 1], dim=2)
    b = (b.floor() if plus_one else b).cuda()
    valid = (torch.rand(3, 900, generator=g) > 0.2).cuda()
    grp = torch.randint(0, 3, (3, 900), generator=g).cuda() if grouped else None
    want, ok_w = dense_nms(b, valid, grp, 0.5, 64, mode, plus_one, fused=False)
    got, ok_g = dense_nms(b, valid, grp, 0.5, 64, mode, plus_one, fused=True)
    assert bool(ok_w) and bool(ok_g)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fused_nets_are_the_plain_nets(kernels, dtype):
    from fastmtcnn.nets import torch_nets

    dt = getattr(torch, dtype)
    plain = tuple(m.to(memory_format=torch.channels_last) for m in torch_nets("cuda", dt))
    fused = kernels.fused_nets(*plain)
    g = torch.Generator().manual_seed(2)

    def rand(*shape):
        return (torch.rand(*shape, generator=g) * 2 - 1).to("cuda", dt).contiguous(memory_format=torch.channels_last)

    mask = torch.zeros(1, 1, 59, 88)
    mask[..., 31:, :] = -32.0
    mask[..., :, 47:] = -32.0
    x, mask = rand(2, 3, 61, 90), mask.cuda()
    r, o = rand(37, 3, 24, 24), rand(37, 3, 48, 48)
    tol = 2e-2 if dt == torch.float16 else 1e-3
    with torch.inference_mode():
        pairs = ((plain[0](x, mask), fused[0](x, mask)), (plain[1](r), fused[1](r)), (plain[2](o), fused[2](o)))
        for want, got in pairs:
            for a, b in zip(want, got):
                assert float((a.float() - b.float()).abs().max()) <= tol
