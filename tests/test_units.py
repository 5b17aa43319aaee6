"""Units of the core detector: settings, NMS, area resize, the result type, batching.

Why: each of these is a place where a port of MTCNN quietly drifts from the
reference (NMS conventions, resize bins) or where users meet the API first
(presets, validation, Detections). They are checked here on hand-made inputs
with known answers and on real photos against plain numpy references.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from conftest import load_reference
from fastmtcnn import MTCNN, PRESETS, Config, Detections, read_image
from fastmtcnn.boxes import nms, overlap
from fastmtcnn.metrics import iou_matrix
from fastmtcnn.crop import area_resize, integral_image, integrals, resize_region
from fastmtcnn.metrics import greedy_match
from fastmtcnn.pyramid import level_size, pyramid_scales

GROUP = "bob_multiple-faces.jpg"  # 18 faces

# --------------------------------------------------------------------------- presets and Config


def test_reference_preset_is_facenet_pytorch_defaults():
    c = PRESETS["reference"]
    assert c == Config()
    assert ((c.minsize, c.factor, c.thresholds, c.max_batch, c.packed)
            == (20.0, 0.709, (0.6, 0.7, 0.7), (512, 512), "auto"))
    assert MTCNN().config == c


def test_jetson_preset_is_the_original_posts_settings():
    c = PRESETS["jetson"]
    assert c.minsize == 40
    assert c.thresholds == (0.7, 0.6, 0.7)
    assert c.max_batch == (256, 64)
    assert c.factor == 0.709 and c.packed
    assert MTCNN(preset="jetson").config == c


def test_explicit_arguments_override_the_preset():
    c = MTCNN(preset="jetson", minsize=30, thresholds=[0.5, 0.5, 0.5], max_batch=8, packed=False).config
    assert (c.minsize, c.thresholds, c.max_batch, c.packed) == (30, (0.5, 0.5, 0.5), (8, 8), False)
    assert c.factor == PRESETS["jetson"].factor


def test_jetson_preset_finds_the_group_photos_faces(shared_data):
    # faces of ~60 px are well above minsize 40: the faster preset must still find all 18
    ref = Detections.from_list(load_reference(GROUP))
    det = MTCNN(preset="jetson")
    ours = det.detect(read_image(shared_data / GROUP))
    assert len(greedy_match(ref.boxes, ours.boxes, 0.5)) == len(ref) == 18
    assert len(det.plan(385, 520).scales[0]) < len(MTCNN().plan(385, 520).scales[0])


@pytest.mark.parametrize("changes, words", [
    (dict(minsize=11), "minsize"),
    (dict(minsize=float("nan")), "minsize"),
    (dict(factor=1.0), "factor"),
    (dict(factor=0.0), "factor"),
    (dict(factor=float("nan")), "factor"),
    (dict(thresholds=(0.6, 0.7)), "thresholds"),
    (dict(thresholds=(0.6, 0.7, 1.5)), "thresholds"),
    (dict(thresholds=(-0.1, 0.7, 0.7)), "thresholds"),
    (dict(max_batch=0), "max_batch"),
    (dict(max_batch=(256, 0)), "max_batch"),
    (dict(max_batch=(1, 2, 3)), "max_batch"),
])
def test_invalid_settings_raise_one_line_value_errors(changes, words):
    for make in (lambda: Config(**changes), lambda: MTCNN(**changes)):
        with pytest.raises(ValueError) as e:
            make()
        msg = str(e.value)
        assert words in msg and "\n" not in msg


def test_unknown_preset_and_backend_option_mixups_are_value_errors():
    with pytest.raises(ValueError, match="unknown preset 'nano'.*jetson"):
        MTCNN(preset="nano")
    with pytest.raises(ValueError, match="backend"):
        MTCNN(backend="caffe")
    with pytest.raises(ValueError, match="device="):
        MTCNN(backend="onnxruntime", device="cuda")  # ONNX Runtime takes providers=


def test_config_is_frozen_and_normalized():
    c = Config(thresholds=[0.1, 0.2, 0.3], max_batch=[4, 5])
    assert c.thresholds == (0.1, 0.2, 0.3) and c.max_batch == (4, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.minsize = 40  # type: ignore[misc]
    assert c.replace(minsize=40).minsize == 40 and c.minsize == 20
    assert json.loads(json.dumps(c.to_dict()))["max_batch"] == [4, 5]


# --------------------------------------------------------------------------- NMS


def _boxes(*rows) -> np.ndarray:
    return np.array(rows, np.float32)


def test_nms_union_suppresses_only_above_threshold():
    # IoU of these two = 50 / 150 = 1/3 (no +1)
    b = _boxes([0, 0, 10, 10], [5, 0, 15, 10])
    s = np.array([0.8, 0.9], np.float32)
    assert nms(b, s, 0.3).tolist() == [1]  # higher score kept, the other suppressed
    assert nms(b, s, 0.4).tolist() == [1, 0]  # kept in decreasing score order


def test_nms_min_mode_suppresses_a_box_inside_another():
    # small box inside a big one: IoU 0.04, but intersection / smaller area = 1
    b = _boxes([0, 0, 50, 50], [10, 10, 20, 20])
    s = np.array([0.9, 0.8], np.float32)
    assert nms(b, s, 0.5, mode="union").tolist() == [0, 1]
    assert nms(b, s, 0.5, mode="min").tolist() == [0]
    # when the inner box scores higher, it is the one kept
    assert nms(b, s[::-1].copy(), 0.5, mode="min").tolist() == [1]


def test_nms_groups_never_suppress_each_other():
    b = _boxes([0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10])
    s = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(b, s, 0.5, groups=np.array([0, 1, 0, 1])).tolist() == [0, 1]
    assert nms(b, s, 0.5, groups=np.array([0, 1, 2, 3])).tolist() == [0, 1, 2, 3]
    assert nms(b, s, 0.5).tolist() == [0]


def test_nms_plus_one_uses_inclusive_pixel_areas():
    # pixels 0..9 and 5..14: without +1 IoU = 36/126 = 0.286; with +1 (the reference's last NMS) 50/150 = 0.333
    b = _boxes([0, 0, 9, 9], [5, 0, 14, 9])
    s = np.array([0.9, 0.8], np.float32)
    assert nms(b, s, 0.3).tolist() == [0, 1]
    assert nms(b, s, 0.3, plus_one=True).tolist() == [0]
    # touching boxes overlap by one pixel column only under +1
    t = _boxes([0, 0, 9, 9], [9, 0, 18, 9])
    assert nms(t, s, 0.0).tolist() == [0, 1]
    assert nms(t, s, 0.0, plus_one=True).tolist() == [0]


def test_overlap_by_hand_in_every_convention_and_iou_matrix_pairs_every_box():
    a = _boxes([0, 0, 10, 10], [0, 0, 9, 9])
    b = _boxes([5, 0, 15, 10], [2, 2, 4, 4], [20, 20, 20, 30])  # the last one has no area
    iou = iou_matrix(a, b)
    assert iou.dtype == np.float64 and iou.shape == (2, 3)
    np.testing.assert_allclose(iou, [[50 / 150, 4 / 100, 0], [36 / 145, 4 / 81, 0]])
    pairs = (a[:, None], b[None])
    np.testing.assert_allclose(overlap(*pairs), iou, rtol=1e-6)  # the same arithmetic, in float32
    np.testing.assert_allclose(overlap(a[:, None], b[None, :2], mode="min"), [[50 / 100, 1], [36 / 81, 1]], rtol=1e-6)
    # inclusive pixels: 0..9 and 5..14 share 5 x 10 of 10 x 10 each
    assert overlap(a[1], _boxes([5, 0, 14, 9])[0], add=1.0) == np.float32(50 / 150)
    assert iou_matrix(_boxes([3, 3, 3, 3]), _boxes([3, 3, 3, 3])).tolist() == [[0.0]]  # no area at all: 0, not NaN
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)


def test_nms_of_nothing_is_empty_int64():
    k = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5)
    assert k.shape == (0,) and k.dtype == np.int64


def _naive_nms(b, s, thr, groups, mode, plus_one):
    """Greedy NMS spelled out box by box (the reference's definition), float64."""
    add = 1.0 if plus_one else 0.0
    area = lambda r: (r[2] - r[0] + add) * (r[3] - r[1] + add)  # noqa: E731
    keep: list[int] = []
    for i in sorted(range(len(s)), key=lambda i: -s[i]):
        ok = True
        for k in keep:
            if groups[k] != groups[i]:
                continue
            w = max(0.0, min(b[i][2], b[k][2]) - max(b[i][0], b[k][0]) + add)
            h = max(0.0, min(b[i][3], b[k][3]) - max(b[i][1], b[k][1]) + add)
            inter = w * h
            d = min(area(b[i]), area(b[k])) if mode == "min" else area(b[i]) + area(b[k]) - inter
            if inter / d > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("mode, plus_one, thr", [("union", False, 0.5), ("union", False, 0.7),
                                                 ("min", True, 0.7), ("union", True, 0.3)])
def test_nms_equals_box_by_box_greedy_nms_on_random_boxes(mode, plus_one, thr):
    # clusters of jittered boxes around 30 "faces", as PNet and RNet produce them
    rng = np.random.default_rng(7)
    centre = np.repeat(rng.uniform(0, 300, (30, 2)), 10, axis=0)
    side = np.repeat(rng.uniform(12, 80, 30), 10)[:, None] * rng.uniform(0.8, 1.2, (300, 2))
    xy = centre + rng.normal(0, 0.15, (300, 2)) * side - side / 2
    b = np.concatenate([xy, xy + side], axis=1).astype(np.float32)
    s = rng.permutation(300).astype(np.float32) / 300  # distinct scores: one right order
    g = rng.integers(0, 3, 300)
    got = nms(b, s, thr, groups=g, mode=mode, plus_one=plus_one).tolist()
    want = _naive_nms(b.astype(np.float64).tolist(), s.tolist(), thr, g.tolist(), mode, plus_one)
    assert got == want
    assert 30 < len(got) < 270  # the case is not trivial: much is suppressed, much is kept


def test_nms_gives_the_same_picks_through_its_box_by_box_pass_and_small_pair_chunks(monkeypatch):
    """`nms` solves the greedy rule as a fixed point and falls back to a box-by-box pass after
    `_NMS_ROUNDS` rounds (long suppression chains), sweeping pairs in chunks of `_NMS_PAIRS`: each way
    gives the box-by-box greedy picks, on jittered clusters and on a chain where every box suppresses
    the next (its fixed point needs as many rounds as boxes)."""
    import fastmtcnn.boxes as boxes_module

    rng = np.random.default_rng(3)
    centre = np.repeat(rng.uniform(0, 300, (20, 2)), 12, axis=0)
    side = np.repeat(rng.uniform(12, 80, 20), 12)[:, None] * rng.uniform(0.8, 1.2, (240, 2))
    xy = centre + rng.normal(0, 0.15, (240, 2)) * side - side / 2
    clusters = np.concatenate([xy, xy + side], axis=1).astype(np.float32)
    x = np.arange(100, dtype=np.float32) * 2  # each box overlaps its neighbours: IoU 8/12 > 0.5
    chain = np.stack([x, np.zeros_like(x), x + 10, np.full_like(x, 10)], axis=1)
    for b, s in ((clusters, rng.permutation(240).astype(np.float32)), (chain, -x)):
        g = np.arange(len(b)) % 2 if len(b) == 240 else np.zeros(len(b), np.int64)
        want = _naive_nms(b.astype(np.float64).tolist(), s.tolist(), 0.5, g.tolist(), "union", False)
        assert nms(b, s, 0.5, groups=g).tolist() == want
        monkeypatch.setattr(boxes_module, "_NMS_ROUNDS", 0)
        monkeypatch.setattr(boxes_module, "_NMS_PAIRS", 7)
        assert nms(b, s, 0.5, groups=g).tolist() == want
        monkeypatch.undo()
    assert nms(chain, -x, 0.5).tolist() == list(range(0, 100, 2)), "the chain keeps every other box"


# --------------------------------------------------------------------------- area resize


def _pool_bins(n: int, m: int) -> list[tuple[int, int]]:
    """Adaptive average pooling bins [floor(i*n/m), ceil((i+1)*n/m))."""
    return [(i * n // m, -(-(i + 1) * n // m)) for i in range(m)]


def _adaptive_avg_pool(img: np.ndarray, m_h: int, m_w: int) -> np.ndarray:
    """Plain numpy reference: (h, w, c) -> normalized (c, m_h, m_w) float64, as the nets get it."""
    rows = np.stack([img[a:b].mean(axis=0, dtype=np.float64) for a, b in _pool_bins(img.shape[0], m_h)])
    out = np.stack([rows[:, a:b].mean(axis=1) for a, b in _pool_bins(img.shape[1], m_w)], axis=1)
    return ((out - 127.5) / 128).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def photo(shared_data) -> np.ndarray:
    return read_image(shared_data / "matplotlib_grace_hopper.jpg")


def test_integral_image_is_exact_and_matches_the_backends(photo, detector):
    frames = np.stack([photo, photo[::-1].copy()])
    ii = integral_image(frames)
    assert ii.shape == (2, 601, 513, 3) and ii.dtype == np.int32
    np.testing.assert_array_equal(ii[:, 1:, 1:], frames.astype(np.int64).cumsum(1).cumsum(2))
    assert not ii[:, 0].any() and not ii[:, :, 0].any()
    got = detector.backend.integrals(list(frames))
    for i in range(2):
        np.testing.assert_array_equal(got.image(i), ii[i])


def test_resize_region_is_adaptive_average_pooling(photo):
    h, w = photo.shape[:2]
    ii = integral_image(photo[None])[0]
    sizes = [level_size(h, w, s) for s in pyramid_scales(h, w, 20, 0.709)] + [(h, w), (2 * h + 1, w + 3), (7, 300)]
    for oh, ow in sizes:
        got = resize_region(ii, oh, ow, (0, oh), (0, ow))
        assert got.shape == (3, oh, ow) and got.dtype == np.float32
        np.testing.assert_allclose(got, _adaptive_avg_pool(photo, oh, ow), atol=2e-6, rtol=0,
                                   err_msg=f"{oh}x{ow}")


def test_area_resize_crops_are_adaptive_average_pooling(photo):
    frames = np.stack([photo, np.ascontiguousarray(photo[:, ::-1])])
    ii = integrals(list(frames))
    rng = np.random.default_rng(3)
    wins = [[0, 600, 0, 512], [0, 1, 0, 1], [595, 600, 505, 512], [100, 103, 200, 207], [120, 340, 170, 360]]
    for _ in range(20):
        y0, x0 = rng.integers(0, 560), rng.integers(0, 470)
        wins.append([y0, rng.integers(y0 + 1, 601), x0, rng.integers(x0 + 1, 513)])
    wins = np.array(wins, np.int64)
    frame = np.arange(len(wins), dtype=np.int64) % 2
    for size in (24, 48):
        got = area_resize(ii, frame, wins, size, size)
        assert got.shape == (len(wins), 3, size, size) and got.dtype == np.float32
        for k, (y0, y1, x0, x1) in enumerate(wins):
            want = _adaptive_avg_pool(frames[frame[k], y0:y1, x0:x1], size, size)
            np.testing.assert_allclose(got[k], want, atol=2e-6, rtol=0, err_msg=f"window {k} {wins[k]} -> {size}")


def test_numpy_pooling_reference_is_torchs_area_interpolation(photo):
    """The reference MTCNN resizes with torch's "area" mode: make sure our numpy reference is that."""
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    for oh, ow in [(427, 364), (24, 24), (13, 11), (700, 600)]:
        want = ((torch.nn.functional.interpolate(t, size=(oh, ow), mode="area") - 127.5) / 128)[0].numpy()
        np.testing.assert_allclose(_adaptive_avg_pool(photo, oh, ow), want, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- Detections


def _some_detections(n: int = 4) -> Detections:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (n, 2))
    boxes = np.concatenate([xy, xy + 30], axis=1)
    return Detections(boxes, np.linspace(0.7, 1.0, n), rng.uniform(0, 100, (n, 5, 2)))


def test_detections_coerce_to_float32_arrays_of_the_right_shapes():
    d = Detections([[1, 2, 3, 4]], [1], [list(range(10))])
    assert d.boxes.shape == (1, 4) and d.scores.shape == (1,) and d.landmarks.shape == (1, 5, 2)
    assert {d.boxes.dtype, d.scores.dtype, d.landmarks.dtype} == {np.dtype(np.float32)}
    assert d.landmarks[0, 1].tolist() == [2, 3]  # (x, y) pairs, in order


def test_detections_mask_index_and_slice_select_faces():
    d = _some_detections()
    sel = d[d.scores > 0.85]
    assert len(sel) == 2
    np.testing.assert_array_equal(sel.boxes, d.boxes[2:])
    np.testing.assert_array_equal(sel.landmarks, d.landmarks[2:])
    one = d[1]
    assert isinstance(one, Detections) and len(one) == 1 and one.scores[0] == d.scores[1]
    assert len(d[[0, 3]]) == 2 and d[[0, 3]].scores[1] == d.scores[3]
    assert len(d[1:3]) == 2
    assert len(d[np.zeros(4, bool)]) == 0
    boxes, scores, lms = zip(*d)
    assert len(boxes) == 4 and isinstance(scores[0], float) and lms[0].shape == (5, 2)


def test_detections_round_trip_through_json():
    d = _some_detections()
    faces = json.loads(d.to_json())
    assert faces == d.to_list()
    assert set(faces[0]) == {"box", "score", "landmarks"}
    back = Detections.from_list(faces)
    assert len(back) == len(d)
    np.testing.assert_allclose(back.boxes, d.boxes, atol=0.006)  # to_list rounds to 1/100 pixel
    np.testing.assert_allclose(back.landmarks, d.landmarks, atol=0.006)
    np.testing.assert_allclose(back.scores, d.scores, atol=1e-6)
    assert len(Detections.from_list([])) == 0
    assert Detections.empty().to_list() == []


@pytest.mark.parametrize("n_boxes, n_scores, n_landmarks", [(2, 3, 3), (3, 2, 3), (3, 3, 2)])
def test_detections_of_mismatched_lengths_are_rejected(n_boxes, n_scores, n_landmarks):
    with pytest.raises(ValueError, match="differ in length"):
        Detections(np.zeros((n_boxes, 4)), np.zeros(n_scores), np.zeros((n_landmarks, 5, 2)))


def test_detections_are_immutable():
    d = _some_detections()
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.scores = np.zeros(4)  # type: ignore[misc]


# --------------------------------------------------------------------------- batches


def test_batch_of_mixed_sizes_gives_each_images_faces_in_order(shared_data, detector):
    names = [GROUP, "matplotlib_grace_hopper.jpg", "skimage_coffee.png", GROUP]
    imgs = [read_image(shared_data / n) for n in names]
    inputs = [imgs[0], shared_data / names[1], imgs[2], imgs[3]]
    got = detector.detect_batch(inputs)
    assert [len(d) for d in got] == [18, 1, 0, 18]
    for d, img in zip(got, imgs):
        _assert_same(d, detector.detect(img))


def test_frames_stacked_in_one_array_run_as_one_batch_with_separate_results(shared_data, detector):
    # one PNet/RNet/ONet call for both frames: NMS must keep the frames apart
    img = read_image(shared_data / GROUP)
    mirrored = np.ascontiguousarray(img[:, ::-1])
    a, b = detector.detect_batch(np.stack([img, mirrored]))
    _assert_same(a, detector.detect(img))
    _assert_same(b, detector.detect(mirrored))
    # the mirrored photo's faces are the photo's faces, mirrored (x -> W - x)
    w = img.shape[1]
    flipped = np.stack([w - b.boxes[:, 2], b.boxes[:, 1], w - b.boxes[:, 0], b.boxes[:, 3]], axis=1)
    assert len(greedy_match(a.boxes, flipped, 0.7)) == len(a) == len(b) == 18


def _assert_same(a: Detections, b: Detections) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3, rtol=0)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- RNet/ONet chunking


def _recording(fn, sizes: list[int]):
    """fn, recording the crops of each call: (batch the net ran, crops that are not padding)."""
    def wrapped(x):
        real = int((np.abs(np.asarray(x)).reshape(x.shape[0], -1).max(axis=1) > 0).sum())
        sizes.append((x.shape[0], real))
        return fn(x)

    return wrapped


@pytest.mark.parametrize("max_batch", [1, (7, 3)])
def test_rnet_onet_chunking_does_not_change_detections(shared_data, detector, max_batch, monkeypatch):
    img = read_image(shared_data / GROUP)
    sizes: dict[str, list[int]] = {k: [] for k in ("rnet", "onet", "rnet_small", "onet_small")}
    for net in ("rnet", "onet"):
        monkeypatch.setattr(detector.backend, net, _recording(getattr(detector.backend, net), sizes[net]))
    want = detector.detect(img)
    small = MTCNN(max_batch=max_batch)
    for net in ("rnet", "onet"):
        setattr(small.backend, net, _recording(getattr(small.backend, net), sizes[f"{net}_small"]))
    got = small.detect(img)
    rb, ob = small.config.max_batch
    # really chunked: several calls, none over the limit (padding included), every candidate exactly once
    assert len(sizes["rnet_small"]) > 1 and max(n for n, _ in sizes["rnet_small"]) <= rb
    assert len(sizes["onet_small"]) > 1 and max(n for n, _ in sizes["onet_small"]) <= ob
    for net in ("rnet", "onet"):
        assert sum(r for _, r in sizes[f"{net}_small"]) == sum(r for _, r in sizes[net]) > 0
    assert len(want) == 18
    _assert_same(got, want)
