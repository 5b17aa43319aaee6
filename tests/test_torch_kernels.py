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
from fastmtcnn.crop import MEAN, SCALE, area_resize, integral_image, integrals  # noqa: E402
from fastmtcnn.pipeline import batch_plan, canvas_cells, canvas_input, canvas_mask  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def kernels():
    from fastmtcnn.backends import torch_kernels

    if torch_kernels.triton is None:
        pytest.skip("no Triton")
    return torch_kernels


@pytest.fixture(scope="module")
def frames(shared_data):
    img = read_image(shared_data / "insightface_t1.jpg")
    return torch.from_numpy(np.stack([img, img[::-1].copy()])).cuda()


def test_triton_integral_is_crop_integral_image(kernels, frames):
    n, h, w, _ = frames.shape
    out = torch.empty((n, h + 1, w + 1, 3), dtype=torch.int32, device=frames.device)
    kernels.integrals(list(frames), out.view(-1, 3), [i * (h + 1) * (w + 1) for i in range(n)])
    assert torch.equal(out, integral_image(frames))


def test_triton_integrals_of_a_batch_of_many_sizes_are_each_images_own(kernels, frames):
    """One launch pair for a batch of any sizes (a table of addresses, sizes and places), into a buffer
    holding garbage: every image's integral as `crop.integrals` makes it, zero borders included."""
    images = [frames[0], frames[1, :700, :1000].contiguous(), frames[0, 100:400, 50:301].contiguous(),
              frames[1, :1, :1].contiguous(), frames[0, :37, :16].contiguous(), frames[1]]
    want = integrals(images)
    rows = [(im.shape[0] + 1) * (im.shape[1] + 1) for im in images]
    flat = torch.full((sum(rows) + 5, 3), 7, dtype=torch.int32, device="cuda")
    offsets = np.concatenate([[0], np.cumsum(rows)])[:-1]
    kernels.integrals(images, flat, offsets)
    assert torch.equal(flat[:sum(rows)], want.flat)
    assert bool((flat[sum(rows):] == 7).all())  # nothing written past the batch


@pytest.mark.parametrize("tile", [512, 128])
def test_triton_tiles_are_the_shared_piece_resize_with_their_masks_and_cells(kernels, frames, tile):
    """A batch of images of three sizes, levels cut across tiles (128) and tiles shared by images."""
    det = MTCNN(backend="torch", device="cuda", fp16=False, graphs=False, tile=tile)
    images = [frames[0], frames[1, :700, :1000].contiguous(), frames[0, 100:400, 50:300].contiguous()]
    plan = batch_plan(det.backend, [im.shape[:2] for im in images], det.config)
    ii = integrals(images)
    ids = list(range(len(plan.canvases)))
    got, mask, cells = det.backend.canvas(ii, plan, ids, kernels=True)
    want = canvas_input(ii, plan, ids)
    assert len(ids) > 1 and any(len({p.image for p in c.pieces}) > 1 for c in plan.canvases)
    for n, c in enumerate(plan.canvases):
        for p in c.pieces:
            sl = (n, slice(None), slice(p.y, p.y + p.h), slice(p.x, p.x + p.w))
            assert torch.equal(got[sl], want[sl]), p
    np.testing.assert_array_equal(mask.cpu().numpy(), canvas_mask(plan, ids))
    np.testing.assert_array_equal(cells.cpu().numpy(), canvas_cells(plan, ids))


def test_triton_crops_are_crop_area_resize(kernels, frames):
    """Windows of two images of different sizes in one buffer (`crop.Integrals`)."""
    g = torch.Generator().manual_seed(0)
    images = [frames[0], frames[1, :600, :1100].contiguous()]
    f = torch.randint(0, 2, (300,), generator=g)
    hw = torch.tensor([list(im.shape[:2]) for im in images])[f]
    y0 = (torch.rand(300, generator=g) * (hw[:, 0] - 2)).long()
    x0 = (torch.rand(300, generator=g) * (hw[:, 1] - 2)).long()
    win = torch.stack([y0, torch.minimum(y0 + 1 + torch.randint(0, 300, (300,), generator=g), hw[:, 0]),
                       x0, torch.minimum(x0 + 1 + torch.randint(0, 300, (300,), generator=g), hw[:, 1])], 1)
    ii = integrals(images)
    table = torch.stack([ii.offset, ii.height, ii.width], 1)
    win, f = win.cuda(), f.cuda()
    for size in (24, 48):
        assert torch.equal(kernels.crops(ii.flat, table, f, win, size, torch.float32, MEAN, SCALE),
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
    valid[1, 500:] = False  # valid slots first, as the cascade's: the kernels stop at the row's last one
    valid[2] = False  # and a row with none
    grp = torch.randint(0, 3, (3, 900), generator=g).cuda() if grouped else None
    want, ok_w = dense_nms(b, valid, grp, 0.5, 64, mode, plus_one, fused=False, sparse=False)
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

    mask = torch.zeros(2, 1, 59, 88)  # one mask per tile
    mask[0, :, 31:, :] = -32.0
    mask[1, :, :, 47:] = -32.0
    x, mask = rand(2, 3, 61, 90), mask.cuda()
    r, o = rand(37, 3, 24, 24), rand(37, 3, 48, 48)
    tol = 2e-2 if dt == torch.float16 else 1e-3
    with torch.inference_mode():
        pairs = ((plain[0](x, mask), fused[0](x, mask)), (plain[1](r), fused[1](r)), (plain[2](o), fused[2](o)))
        for want, got in pairs:
            for a, b in zip(want, got):
                assert float((a.float() - b.float()).abs().max()) <= tol
