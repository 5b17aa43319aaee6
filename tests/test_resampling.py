"""The CPU backends' resampling gives the reference's numbers, and their tile-by-tile PNet its cells.

Why: the reference resizes every pyramid level and every RNet/ONet crop with
torch's interpolate(mode="area") (adaptive average pooling). The CPU backends
make them with their own gathers (`crop.level_rows`, `crop.crops_host`, a
piece of a level at a time) and run PNet tile by tile. Each is checked
against torch in float64 (atol 1e-5), bit for bit against the array-API
definitions it must equal (`resize_region`, `area_resize`, `integral_image`),
and the host tiles against the array-API tiles.
"""
from __future__ import annotations


import numpy as np
import pytest

from fastmtcnn import read_image
from fastmtcnn.backends.onnxruntime import OrtBackend
from fastmtcnn.crop import (area_bins, area_resize, crops_host, integral_image, integrals, integrals_host,
                            level_rows, resize_region)
from fastmtcnn.pipeline import pnet_candidates, pnet_front
from fastmtcnn.pyramid import level_size, make_plan, pyramid_scales


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="the reference values come from torch's area interpolation")


def _torch_levels(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The reference's resize, in float64, normalized as the nets take it: (3, h, w)."""
    import torch

    t = torch.from_numpy(img).permute(2, 0, 1)[None].double()
    return ((torch.nn.functional.interpolate(t, size=size, mode="area") - 127.5) / 128)[0].numpy()


@pytest.fixture(scope="module")
def photo(shared_data) -> np.ndarray:
    return read_image(shared_data / "insightface_t1.jpg")  # 1280x886: levels with odd sizes and ratios


def test_area_bins_are_torchs_adaptive_pooling_bins(torch):
    # pooling the identity gives each output's weights: 1/len on its bin, 0 elsewhere
    rng = np.random.default_rng(0)
    for n, m in [(10, 3), (7, 7), (5, 9), (886, 629), (1280, 25)] + [tuple(rng.integers(1, 300, 2)) for _ in range(30)]:
        eye = torch.eye(int(n), dtype=torch.float64)[None]
        w = torch.nn.functional.adaptive_avg_pool1d(eye, int(m))[0].numpy()  # (n, m)
        lo, hi = area_bins(np, np.zeros(1, np.int64), np.array([n]), int(m))
        want = np.zeros((n, m))
        for i, (a, b) in enumerate(zip(lo[0], hi[0])):
            want[a:b, i] = 1.0 / (b - a)
        np.testing.assert_allclose(w, want, atol=1e-12, err_msg=f"{n} -> {m}")


def test_integrals_host_is_integral_image_for_images_of_any_sizes(photo):
    images = [photo, np.ascontiguousarray(photo[::-1, :700]), np.ascontiguousarray(photo[:13, :9])]
    ii = integrals_host(images)
    assert ii.flat.dtype == np.int32 and ii.sizes == tuple(im.shape[:2] for im in images)
    np.testing.assert_array_equal(ii.flat, integrals(images).flat)
    for i, im in enumerate(images):
        np.testing.assert_array_equal(ii.image(i), integral_image(im[None])[0])
    assert ii.offset.tolist() == [0, 1281 * 887, 1281 * 887 + 701 * 887]


def test_pyramid_level_pieces_are_torchs_area_interpolation(photo, torch):
    h, w = photo.shape[:2]
    ii = integrals_host([photo]).image(0)
    sizes = [level_size(h, w, s) for ms in (12, 20, 40) for s in pyramid_scales(h, w, ms, 0.709)]
    sizes += [(h, w), (2 * h + 1, w + 3), (7, 300), (h + 1, w + 1)]
    rng = np.random.default_rng(1)
    for oh, ow in sizes:
        want = _torch_levels(photo, (oh, ow))
        whole = resize_region(ii, oh, ow, (0, oh), (0, ow))
        got = np.full((3, oh, ow), np.nan, np.float32)
        got16 = got.copy()
        rows = np.unique(np.r_[0, np.sort(rng.integers(1, oh, min(oh - 1, 3))), oh])  # pieces of the level
        cols = np.unique(np.r_[0, np.sort(rng.integers(1, ow, min(ow - 1, 2))), ow])
        for r0, r1 in zip(rows[:-1], rows[1:]):
            for c0, c1 in zip(cols[:-1], cols[1:]):
                piece = (int(r0), int(r1)), (int(c0), int(c1))
                level_rows(ii, oh, ow, piece[0], got[:, r0:r1, c0:c1], piece[1], low16=False)
                level_rows(ii, oh, ow, piece[0], got16[:, r0:r1, c0:c1], piece[1])  # modulo 2**16 if it can
                np.testing.assert_array_equal(resize_region(ii, oh, ow, *piece), whole[:, r0:r1, c0:c1])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"{oh}x{ow}")
        np.testing.assert_array_equal(got, whole, err_msg=f"{oh}x{ow}: same sums, same float32 steps")
        np.testing.assert_array_equal(got16, got, err_msg=f"{oh}x{ow}: uint16 sums")


def _windows(rng, h: int, w: int, k: int) -> np.ndarray:
    wins = [[0, h, 0, w], [0, 1, 0, 1], [h - 5, h, w - 7, w], [100, 103, 200, 207], [120, 340, 170, 360]]
    for _ in range(k):
        y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
        wins.append([y0, rng.integers(y0 + 1, h + 1), x0, rng.integers(x0 + 1, w + 1)])
    return np.array(wins, np.int64)


def test_crops_are_torchs_area_interpolation_of_each_window(photo, torch):
    frames = [photo, np.ascontiguousarray(photo[:, ::-1])]
    ii = integrals_host(frames)
    wins = _windows(np.random.default_rng(2), *photo.shape[:2], 40)
    frame = np.arange(len(wins)) % 2
    for size in (24, 48):
        got = crops_host(ii, frame, wins, size)
        assert got.shape == (len(wins), 3, size, size) and got.dtype == np.float32
        np.testing.assert_array_equal(got, area_resize(ii, frame, wins, size, size))
        for k, (y0, y1, x0, x1) in enumerate(wins):
            want = _torch_levels(np.ascontiguousarray(frames[frame[k]][y0:y1, x0:x1]), (size, size))
            np.testing.assert_allclose(got[k], want, atol=1e-5, rtol=0, err_msg=f"window {wins[k]} -> {size}")
    assert crops_host(ii, frame[:0], wins[:0], 24).shape == (0, 3, 24, 24)


def test_frames_too_large_for_int16_coordinates_take_the_array_api_crops(photo, monkeypatch):
    import fastmtcnn.crop as crop

    ii = integrals_host([photo])
    wins = _windows(np.random.default_rng(4), *photo.shape[:2], 10)
    frame = np.zeros(len(wins), np.int64)
    want = crops_host(ii, frame, wins, 24)
    monkeypatch.setattr(crop, "REMAP_LIMIT", 500)  # as if the photo were past 32767 pixels a side
    np.testing.assert_array_equal(crop.crops_host(ii, frame, wins, 24), want)


def test_sums_past_2_to_the_31_wrap_and_stay_exact():
    """A bright 9.6 MP frame: its int32 integral wraps (> 2**31 per channel); bin sums must not."""
    rng = np.random.default_rng(3)
    img = rng.integers(200, 256, (3100, 3100, 3), dtype=np.uint8)
    ii = integrals_host([img])
    assert int(img[..., 0].sum(dtype=np.int64)) > 2**31 and ii.image(0)[-1, -1, 0] < 0  # it did wrap
    np.testing.assert_array_equal(integral_image(img[None])[0], ii.image(0))  # int32 scans wrap the same way
    ii64 = np.zeros((3101, 3101, 3), np.int64)
    ii64[1:, 1:] = img.astype(np.int64).cumsum(0).cumsum(1)

    def mean64(y0, y1, x0, x1):
        s = ii64[y1, x1] - ii64[y0, x1] - ii64[y1, x0] + ii64[y0, x0]
        return (s / ((y1 - y0) * (x1 - x0)) - 127.5) / 128

    oh, ow = 1551, 1551
    got = np.empty((3, 6, ow), np.float32)
    level_rows(ii.image(0), oh, ow, (oh - 6, oh), got)  # the last rows: it wrapped
    (ys, ye), (xs, xe) = (b[0] for b in area_bins(np, np.zeros(1, np.int64), np.array([3100]), oh)), \
        (b[0] for b in area_bins(np, np.zeros(1, np.int64), np.array([3100]), ow))
    for r in range(6):
        i = oh - 6 + r
        want = np.stack([mean64(ys[i], ye[i], a, b) for a, b in zip(xs, xe)], axis=1)  # (3, ow)
        np.testing.assert_allclose(got[:, r], want, atol=1e-5, rtol=0)
    win = np.array([[3000, 3100, 2900, 3100], [0, 3100, 0, 3100]])
    crops = crops_host(ii, np.zeros(2, np.int64), win, 24)
    for k, (y0, y1, x0, x1) in enumerate(win):
        (cy0, cy1), (cx0, cx1) = area_bins(np, win[k:k + 1, 0], win[k:k + 1, 1] - y0, 24), \
            area_bins(np, win[k:k + 1, 2], win[k:k + 1, 3] - x0, 24)
        want = np.array([[mean64(cy0[0, i], cy1[0, i], cx0[0, j], cx1[0, j]) for j in range(24)] for i in range(24)])
        np.testing.assert_allclose(crops[k], want.transpose(2, 0, 1), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- PNet tile by tile


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("packed", [True, False], ids=["tiles", "per-scale"])
def test_host_tiles_equal_the_array_api_tiles(shared_data, engine, packed):
    """The CPU engines' tiles (pieces resampled into reused tile buffers, several in flight on OpenVINO's
    streams) give the array-API canvases' PNet outputs (`pipeline.pnet_front`), on a batch of two photos of
    different sizes; and their `front` keeps exactly the candidates that `pipeline.pnet_candidates` finds."""
    if engine == "openvino":
        pytest.importorskip("openvino")
        from fastmtcnn.backends.openvino import OpenVinoBackend as Engine
    else:
        Engine = OrtBackend
    be = Engine()
    images = [read_image(shared_data / n) for n in ("insightface_t1.jpg", "bob_multiple-faces.jpg")]
    plan = make_plan([im.shape[:2] for im in images], 20, 0.709, 256 if packed else None)
    ii = be.integrals(images)
    np.testing.assert_array_equal(ii.flat, integrals(images).flat)
    tiled = list(be.pnet_tiles(ii, plan))
    _, whole = pnet_front(be, images, plan)  # the array-API canvases
    assert [k for k, *_ in tiled] == list(range(len(plan.canvases)))
    assert len(tiled) == sum(len(ids) for ids, *_ in whole)
    for (k, reg, prob), (ids_w, _, reg_w, prob_w) in zip(tiled, (m for m in whole for _ in m[0])):
        j = ids_w.index(k)
        valid = plan.canvases[k].cell_piece() >= 0
        np.testing.assert_allclose(prob[0][:, valid], prob_w[j][:, valid], atol=1e-5, rtol=0)
        np.testing.assert_allclose(reg[0][:, valid], reg_w[j][:, valid], atol=1e-5, rtol=0)
    # the candidates the front keeps, tile by tile, are the shared pipeline's on the same outputs
    threshold = 0.6
    ii_f, (got,) = be.front(images, plan, threshold)
    np.testing.assert_array_equal(ii_f.flat, ii.flat)
    want = [pnet_candidates(be, [k], None, reg, prob, plan, threshold) for k, reg, prob in tiled]
    want = [np.concatenate([w[i] for w in want]) for i in range(4)]
    order_got, order_want = np.argsort(got[3]), np.argsort(want[3])
    assert len(got[0]) == len(want[0]) > 100
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a[order_got], b[order_want])
