"""The packed PNet canvas: a good plan, and exactly the per-scale results.

Why: the project's central idea is one PNet call on a canvas holding every
pyramid level (DESIGN.md). It is only worth having if (1) the packing wastes
little (>= 0.85 efficiency, better than the original post's vertical stack)
and (2) it changes nothing: every valid output cell of the packed run equals
the per-scale run of that level, and the final detections are identical.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import reference_names
from fastmtcnn import MTCNN, read_image
from fastmtcnn.backends.onnxruntime import OrtBackend
from fastmtcnn.nets import PNET_MASK_VALUE
from fastmtcnn.pipeline import canvas_input
from fastmtcnn.pyramid import level_size, make_plan, pyramid_scales, stacked_efficiency

FACTOR = 0.709
COMMON_SIZES = [(480, 640), (720, 1280), (1080, 1920)]  # (h, w)
# the common sizes plus the photos' sizes and awkward ones: odd, tall, thin, barely one level
PLAN_SIZES = COMMON_SIZES + [(385, 520), (375, 500), (480, 360), (916, 900), (2204, 970), (886, 1280),
                             (600, 512), (512, 512), (401, 599), (1001, 33), (20, 20), (21, 4000)]


# --------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("minsize", [20, 40])
@pytest.mark.parametrize("hw", COMMON_SIZES, ids=lambda hw: f"{hw[1]}x{hw[0]}")
def test_packing_efficiency_beats_vertical_stacking(hw, minsize):
    h, w = hw
    plan = make_plan(h, w, minsize, FACTOR, True)
    stacked = stacked_efficiency(h, w, minsize, FACTOR)
    print(f"\n{plan.describe()} (minsize {minsize}); vertical stack {stacked:.3f}")
    assert len(plan.canvases) == 1, "all levels go into one canvas"
    assert plan.efficiency >= 0.85
    assert plan.efficiency > stacked
    # the efficiency is what it claims: level area over canvas area
    (c,) = plan.canvases
    assert plan.efficiency == pytest.approx(sum(lv.h * lv.w for lv in c.levels) / (c.h * c.w))
    assert plan.pnet_pixels == c.h * c.w


def _rects_overlap(a, b) -> bool:
    return a.y < b.y + b.h and b.y < a.y + a.h and a.x < b.x + b.w and b.x < a.x + a.w


@pytest.mark.parametrize("minsize", [20, 40])
@pytest.mark.parametrize("hw", PLAN_SIZES, ids=lambda hw: f"{hw[1]}x{hw[0]}")
def test_plan_levels_are_even_disjoint_and_inside_the_canvas(hw, minsize):
    h, w = hw
    plan = make_plan(h, w, minsize, FACTOR, True)
    scales = pyramid_scales(h, w, minsize, FACTOR)
    assert list(plan.scales) == scales
    if not scales:
        assert plan.canvases == ()
        return
    (c,) = plan.canvases
    assert list(c.level_ids) == list(range(len(scales)))
    for k, lv in zip(c.level_ids, c.levels):
        assert (lv.h, lv.w) == level_size(h, w, scales[k]), "levels are sized as the reference sizes them"
        assert lv.scale == scales[k]
        assert lv.y % 2 == 0 and lv.x % 2 == 0, "odd offsets would misalign PNet's 2x2 pooling"
        assert 0 <= lv.y and lv.y + lv.h <= c.h and 0 <= lv.x and lv.x + lv.w <= c.w
    for a, b in itertools.combinations(c.levels, 2):
        assert not _rects_overlap(a, b), f"levels overlap: {a} {b}"
    # valid cells: exactly each level's own output block, labelled with its level id
    expected = np.full(c.out_shape, -1, np.int32)
    for k, lv in zip(c.level_ids, c.levels):
        expected[lv.y // 2:lv.y // 2 + lv.out_h, lv.x // 2:lv.x // 2 + lv.out_w] = k
    np.testing.assert_array_equal(c.cell_level, expected)
    assert (c.cell_level >= 0).sum() == sum(lv.out_h * lv.out_w for lv in c.levels)
    # the PNet mask is 0 over each level's conv1 output and the "never the max" value elsewhere
    mask = np.full((c.h - 2, c.w - 2), PNET_MASK_VALUE, np.float32)
    for lv in c.levels:
        mask[lv.y:lv.y + lv.h - 2, lv.x:lv.x + lv.w - 2] = 0
    assert c.mask.shape == (1, 1, c.h - 2, c.w - 2)
    np.testing.assert_array_equal(c.mask[0, 0], mask)


def test_per_scale_plan_has_one_unmasked_canvas_per_level():
    plan = make_plan(720, 1280, 20, FACTOR, False)
    assert len(plan.canvases) == len(plan.scales) > 1
    for k, c in enumerate(plan.canvases):
        (lv,) = c.levels
        assert c.level_ids == (k,) and (lv.y, lv.x) == (0, 0) and (c.h, c.w) == (lv.h, lv.w)
        assert not c.mask.any()


def test_images_too_small_for_minsize_have_no_levels():
    # minsize 20 -> scale 0.6: the short side must be >= 20 px for one 12 px window
    assert make_plan(19, 500, 20, FACTOR, True).canvases == ()
    assert len(make_plan(20, 500, 20, FACTOR, True).scales) == 1


# --------------------------------------------------------------------------- packed == per-scale


@pytest.fixture(scope="module")
def backend() -> OrtBackend:
    return OrtBackend()


@pytest.mark.parametrize("name", reference_names())
def test_packed_pnet_cells_equal_per_scale_pnet(shared_data, backend, name):
    img = read_image(shared_data / name)
    h, w = img.shape[:2]
    ii = backend.integral(backend.frames([img]))
    packed = make_plan(h, w, 20, FACTOR, True)
    single = make_plan(h, w, 20, FACTOR, False)
    assert len(packed.canvases) == 1 and len(single.canvases) == len(packed.scales)
    (canvas,) = packed.canvases
    x = canvas_input(ii, canvas, 1)
    reg, prob = backend.pnet(x, canvas.mask)
    assert prob.shape[2:] == canvas.out_shape
    for k, lv in zip(canvas.level_ids, canvas.levels):
        (alone,) = single.canvases[k].levels
        xs = canvas_input(ii, single.canvases[k], 1)
        # the level's pixels in the packed input are the per-scale input, bit for bit
        np.testing.assert_array_equal(x[:, :, lv.y:lv.y + lv.h, lv.x:lv.x + lv.w], xs)
        # per-scale reference: PNet on the level alone, nothing masked
        reg_s, prob_s = backend.pnet(xs, np.zeros((1, 1, alone.h - 2, alone.w - 2), np.float32))
        assert prob_s.shape[2:] == (lv.out_h, lv.out_w)
        cy, cx = lv.y // 2, lv.x // 2
        cells = (slice(None), slice(None), slice(cy, cy + lv.out_h), slice(cx, cx + lv.out_w))
        np.testing.assert_allclose(prob[cells], prob_s, atol=1e-4, rtol=0, err_msg=f"{name} level {k} prob")
        np.testing.assert_allclose(reg[cells], reg_s, atol=1e-4, rtol=0, err_msg=f"{name} level {k} reg")


def test_mask_is_what_makes_packed_cells_exact(shared_data, backend):
    """Without the mask, cells whose pooling window hangs over a level's odd edge see the neighbour's pixels.

    Guards the test above: it must be able to tell an exact canvas from an inexact one.
    """
    img = read_image(shared_data / "bob_multiple-faces.jpg")
    ii = backend.integral(backend.frames([img]))
    (canvas,) = make_plan(*img.shape[:2], 20, FACTOR, True).canvases
    x = canvas_input(ii, canvas, 1)
    _, prob = backend.pnet(x, canvas.mask)
    _, prob_unmasked = backend.pnet(x, np.zeros_like(canvas.mask))
    valid = canvas.cell_level >= 0
    diff = np.abs(prob - prob_unmasked)[0, -1][valid]  # P(face) is the last channel
    assert diff.max() > 1e-3, "an unmasked canvas should differ at some level edge"


@pytest.fixture(scope="module", params=["openvino", "onnxruntime"])
def packed_and_per_scale(request) -> tuple[MTCNN, MTCNN]:
    return MTCNN(packed=True, backend=request.param), MTCNN(packed=False, backend=request.param)


@pytest.mark.parametrize("name", reference_names())
def test_packed_and_per_scale_detections_are_identical(shared_data, packed_and_per_scale, name):
    packed, per_scale = packed_and_per_scale
    img = read_image(shared_data / name)
    assert len(packed.plan(*img.shape[:2]).canvases) == 1 < len(per_scale.plan(*img.shape[:2]).canvases)
    a = packed.detect(img)
    b = per_scale.detect(img)
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3, rtol=0)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3, rtol=0)
