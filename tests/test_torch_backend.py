"""The torch backend: same detections as ONNX Runtime on CPU, and on a GPU where there is one.

Why: the torch backend runs the shared cascade with its own pieces (one-gather
packed canvas, grouped NMS, device-resident tables, CUDA graphs); each must
leave the detections unchanged. CPU tests run in CI (torch CPU, no
torchvision); tests marked `gpu` need CUDA and skip cleanly without it (they
run on the device machine: `pytest -m gpu tests/test_torch_backend.py`).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import reference_names  # noqa: E402
from fastmtcnn import MTCNN, Detections, read_image  # noqa: E402
from fastmtcnn.boxes import nms as numpy_nms  # noqa: E402
from fastmtcnn.metrics import greedy_match  # noqa: E402
from fastmtcnn.pipeline import canvas_input  # noqa: E402
from fastmtcnn.backends.torch_nms import grouped_nms  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

MIN_IOU = 0.7


def assert_same_faces(a: Detections, b: Detections, name: str, landmark_tol: float = 0.01) -> None:
    """Every face of a paired with one of b at IoU >= 0.7 and vice versa; landmarks within tol of the side."""
    pairs = greedy_match(a.boxes, b.boxes, MIN_IOU)
    assert len(pairs) == len(a) == len(b), f"{name}: {len(a)} vs {len(b)} faces, {len(pairs)} paired"
    for i, j in pairs:
        side = float(a.boxes[i, 2] - a.boxes[i, 0])
        err = float(np.abs(a.landmarks[i] - b.landmarks[j]).mean()) / side
        assert err <= landmark_tol, f"{name}: landmarks differ by {err:.4f} of the side"


def assert_same_detections(a: Detections, b: Detections, name: str, px: float = 1e-2, score: float = 1e-4) -> None:
    """The exact standard: same faces, boxes and landmarks within px pixels, scores within `score`.

    Measured torch CPU vs ONNX Runtime on every reference photo: boxes 9e-5 px,
    landmarks 1.2e-4 px, scores 2.4e-7 (2-core CPU machine).
    """
    pairs = greedy_match(a.boxes, b.boxes, 0.9)
    assert len(pairs) == len(a) == len(b), f"{name}: {len(a)} vs {len(b)} faces, {len(pairs)} paired"
    for i, j in pairs:
        assert np.abs(a.boxes[i] - b.boxes[j]).max() <= px, f"{name}: boxes {a.boxes[i]} vs {b.boxes[j]}"
        assert np.abs(a.landmarks[i] - b.landmarks[j]).max() <= px, f"{name}: landmarks differ"
        assert abs(float(a.scores[i]) - float(b.scores[j])) <= score, f"{name}: scores differ"


@pytest.fixture(scope="module")
def photos(shared_data) -> dict[str, np.ndarray]:
    return {name: read_image(shared_data / name) for name in reference_names()}


@pytest.fixture(scope="module")
def ort_detections(photos) -> dict[str, Detections]:
    """ONNX Runtime's faces (named: the default CPU engine is OpenVINO, equal to it to 1e-3 px)."""
    ort = MTCNN(backend="onnxruntime")
    return {name: ort.detect(img) for name, img in photos.items()}


@pytest.fixture(scope="module")
def torch_cpu() -> MTCNN:
    return MTCNN(backend="torch", device="cpu")


# --------------------------------------------------------------------------- CPU (CI)


def test_torch_cpu_finds_the_same_faces_as_onnxruntime_on_every_reference_photo(photos, ort_detections, torch_cpu):
    for name, img in photos.items():
        assert_same_detections(ort_detections[name], torch_cpu.detect(img), name)


def test_torch_detect_batch_takes_a_list_an_nhwc_array_and_a_tensor(photos, torch_cpu):
    img = photos["yolov5_zidane.jpg"]
    flipped = np.ascontiguousarray(img[:, ::-1])
    from_list = torch_cpu.detect_batch([img, flipped])
    from_array = torch_cpu.detect_batch(np.stack([img, flipped]))
    from_tensor = torch_cpu.detect_batch(torch.from_numpy(np.stack([img, flipped])))
    assert len(from_list[0]) >= 2 and len(from_list[1]) == len(from_list[0])
    for other in (from_array, from_tensor):
        for a, b in zip(from_list, other):
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.landmarks, b.landmarks)
    # the mirror image has the mirrored faces
    w = img.shape[1]
    mirrored = from_list[1].boxes[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [w, 0, w, 0]
    assert len(greedy_match(from_list[0].boxes, mirrored, 0.8)) == len(from_list[0])


def test_the_kernel_warm_up_starts_with_the_second_call_not_after_the_first(photos):
    """The Triton warm-up (a thread whose first steps hold the interpreter) starts when a second call
    comes: the first result is never shared with it, and a one-photo process starts none."""
    import threading

    det = MTCNN(backend="torch", device="cpu", fixed_shapes=True)
    started = []
    det.backend.warmup = threading.Thread(target=lambda: started.append(1))  # as on a GPU with Triton
    img = photos["bob_multiple-faces.jpg"]
    det.detect(img)
    assert det.backend.warmup.ident is None and not started
    det.detect(img)
    det.backend.warmup.join(10)
    assert started == [1]


def test_tile_kernel_fallback_equals_the_shared_tiles(photos, torch_cpu):
    """The backend fills a batch's tiles from a table of pieces; every piece must equal the array-API
    resampling (`pipeline.canvas_input`), and the masks and cells the plan's own."""
    from fastmtcnn.pipeline import batch_plan, canvas_cells, canvas_mask

    be = torch_cpu.backend
    imgs = [photos["bob_multiple-faces.jpg"], photos["yolov5_zidane.jpg"]]
    images = be.images(imgs)
    plan = batch_plan(be, [im.shape[:2] for im in imgs], torch_cpu.config)
    ii = be.integrals(images)
    ids = list(range(len(plan.canvases)))
    ours, mask, cells = be.canvas(ii, plan, ids)
    shared = canvas_input(ii, plan, ids)
    assert ours.shape == shared.shape
    for n, c in enumerate(plan.canvases):
        for p in c.pieces:
            sl = (n, slice(None), slice(p.y, p.y + p.h), slice(p.x, p.x + p.w))
            assert torch.equal(ours[sl], shared[sl]), f"piece {p}"
    np.testing.assert_array_equal(mask.numpy(), canvas_mask(plan, ids))
    np.testing.assert_array_equal(cells.numpy(), canvas_cells(plan, ids))
    assert float(ours.min()) >= -1.0 and float(ours.max()) <= 1.0  # padding stays in PNet's input range


def test_tile_fallback_in_small_chunks_of_rows_gives_the_same_tiles(photos, torch_cpu, monkeypatch):
    """The torch tiles go a bounded number of pixels at a time, in whole piece rows: chunk edges
    anywhere in a piece (here every ~1000 pixels) change no pixel, mask or cell."""
    import functools

    import fastmtcnn.backends.torch as tb
    from fastmtcnn.pipeline import batch_plan

    be = torch_cpu.backend
    imgs = [photos["bob_multiple-faces.jpg"], photos["yolov5_zidane.jpg"]]
    plan = batch_plan(be, [im.shape[:2] for im in imgs], torch_cpu.config)
    ii = be.integrals(be.images(imgs))
    ids = list(range(len(plan.canvases)))
    whole = be.canvas(ii, plan, ids)
    monkeypatch.setattr(tb, "_tiles_torch", functools.partial(tb._tiles_torch, chunk=1000))
    for a, b in zip(whole, be.canvas(ii, plan, ids)):
        assert torch.equal(a, b)


def test_integral_image_matches_numpy_cumsum(photos, torch_cpu):
    img = photos["skimage_astronaut.png"]
    ii = torch_cpu.backend.integrals(torch_cpu.backend.images([img])).image(0).numpy()
    ref = np.zeros((img.shape[0] + 1, img.shape[1] + 1, 3), np.int64)
    ref[1:, 1:] = img.astype(np.int64).cumsum(0).cumsum(1)
    assert ii.dtype == np.int32
    np.testing.assert_array_equal(ii, ref)


def _random_boxes(rng: np.random.Generator, n: int, ties: bool, integer: bool):
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(4, 60, (n, 2))
    b = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    if integer:
        b = np.floor(b)
    s = rng.uniform(0, 1, n).astype(np.float32)
    if ties:
        s = np.round(s, 1).astype(np.float32)
    return b, s


@pytest.mark.parametrize("max_pairs", [500, 1 << 23])
def test_grouped_nms_keeps_exactly_what_the_numpy_nms_keeps(max_pairs):
    rng = np.random.default_rng(7)
    for trial in range(100):
        n = int(rng.integers(0, 300))
        b, s = _random_boxes(rng, n, ties=trial % 3 == 0, integer=trial % 2 == 1)
        g = rng.integers(0, int(rng.integers(1, 10)), n) if trial % 4 else None
        thr = float(rng.choice([0.3, 0.5, 0.7]))
        mode = "min" if trial % 5 == 0 else "union"
        plus_one = trial % 5 == 0
        ref = numpy_nms(b, s, thr, g, mode, plus_one)
        got = grouped_nms(torch.from_numpy(b), torch.from_numpy(s), thr,
                          None if g is None else torch.from_numpy(g), mode, plus_one, max_pairs=max_pairs)
        got = got.numpy()
        # the same boxes kept, best first (boxes of equal score may come in another order)
        np.testing.assert_array_equal(np.sort(got), np.sort(ref), err_msg=f"trial {trial}")
        assert np.all(np.diff(s[got]) <= 0)


@pytest.mark.parametrize("mode,plus_one,grouped", [("union", False, False), ("union", False, True),
                                                   ("min", True, False)])
def test_sparse_nms_keeps_what_the_dense_suppression_matrix_keeps(mode, plus_one, grouped):
    """The fixed-shape cascade's NMS over many slots (a folder window's 64 x 4096) goes through
    `grouped_nms` on the valid slots instead of an (N, K, K) matrix: same boxes kept, slot by slot,
    with ties, invalid slots and groups."""
    from fastmtcnn.backends.torch_nms import dense_nms

    g = torch.Generator().manual_seed(3)
    xy = torch.rand(4, 700, 2, generator=g) * 150
    b = torch.cat([xy, xy + torch.rand(4, 700, 2, generator=g) * 40 + 1], dim=2)
    b = b.floor() if plus_one else b
    b[:, 100:110] = b[:, 90:100]  # identical boxes: order decides
    valid = torch.rand(4, 700, generator=g) > 0.2
    valid[3] = False  # a row with nothing
    grp = torch.randint(0, 3, (4, 700), generator=g) if grouped else None
    want, ok = dense_nms(b, valid, grp, 0.5, 64, mode, plus_one, sparse=False)
    got, ok_s = dense_nms(b, valid, grp, 0.5, 64, mode, plus_one)  # auto: 700 slots a row -> sparse
    assert bool(ok) and bool(ok_s)
    assert torch.equal(got, want)
    assert 0 < int(want.sum()) < int(valid.sum())  # some suppressed, some kept


def test_grouped_nms_resolves_a_long_suppression_chain():
    """A row of overlapping boxes with falling scores: box k is kept iff k is even (greedy order matters)."""
    n = 41
    x = np.arange(n, dtype=np.float32) * 4
    b = np.stack([x, np.zeros(n), x + 10, np.full(n, 10)], 1).astype(np.float32)
    s = np.linspace(1, 0.1, n).astype(np.float32)
    got = grouped_nms(torch.from_numpy(b), torch.from_numpy(s), 0.3).numpy()
    np.testing.assert_array_equal(got, numpy_nms(b, s, 0.3))
    np.testing.assert_array_equal(got, np.arange(0, n, 2))


def test_torch_backend_rejects_bad_options():
    with pytest.raises(ValueError, match="nms"):
        MTCNN(backend="torch", device="cpu", nms="fast")
    with pytest.raises(ValueError, match="fp16"):
        MTCNN(backend="torch", device="cpu", fp16=True)
    with pytest.raises(ValueError, match="uint8"):
        MTCNN(backend="torch", device="cpu").detect_batch(torch.zeros(1, 32, 32, 3))


def test_tiled_cascade_gives_the_shared_pipeline_results_and_flags_overflow(photos):
    """The fixed-shape cascade (run here without a graph) equals the shared pipeline on a batch of photos
    of different sizes, or says it cannot."""
    import cv2

    from fastmtcnn.backends.torch_static import Inputs, TiledCascade
    from fastmtcnn.pipeline import batch_plan, detect_images

    det = MTCNN(minsize=24, backend="torch", device="cpu")
    names = ["bob_multiple-faces.jpg", "dlib_2007_007763.jpg", "insightface_t1.jpg"]
    imgs = [cv2.resize(photos[k], (640 - 90 * i, 360 + 50 * i), interpolation=cv2.INTER_AREA)
            for i, k in enumerate(names)]
    be = det.backend
    images = be.images(imgs)
    want = detect_images(be, images, det.config)
    assert sum(len(b) for b, _ in want) >= 20
    plan = batch_plan(be, [im.shape[:2] for im in imgs], det.config)
    shape = be._shape(plan, sum((h + 1) * (w + 1) for h, w in plan.sizes), graphed=False)

    def run(caps):
        inp = Inputs(shape, be.device)
        be._load(inp, images, plan)
        return TiledCascade(be, det.config, shape, caps=caps).run(inp)

    caps = (8192, 1024, 512, 128, 64, 64)  # per image; cells and crops pooled over the 3 images
    with torch.inference_mode():
        out, ok = run(caps)
        few_cells = run((64,) + caps[1:])[1]
        few_candidates = run(caps[:1] + (16,) + caps[2:])[1]
        few_survivors = run(caps[:5] + (4,))[1]
        few_crops = run(caps[:2] + (8,) + caps[3:])[1]
    assert bool(ok.all())
    assert few_cells.tolist()[0] is False
    assert few_candidates.tolist()[:2] == [True, False]
    assert few_survivors.tolist() == [True, True, True, True, True, False, True]
    assert few_crops.tolist()[:3] == [True, True, False]
    for (wb, wl), (gb, gl) in zip(want, TiledCascade.unpack(out.numpy())):
        np.testing.assert_allclose(gb, wb, atol=1e-4)
        np.testing.assert_allclose(gl, wl, atol=1e-4)


def test_eager_calls_pad_their_tile_count_to_a_few_sizes_and_give_each_photo_its_own_faces(photos):
    """A window of new sizes must not be a new cuDNN shape: an eager call's PNet batch (its tiles) is padded
    to a bucket, with empty tiles, and every photo still gets exactly what it gets alone."""
    import cv2

    from fastmtcnn.backends.torch import PNET_CHUNK, tile_bucket
    from fastmtcnn.pipeline import batch_plan

    assert [tile_bucket(n) for n in (1, 8, 9, 11, 17, 33, 63, 65, 100, 129, 195, 257)] == [
        1, 8, 10, 12, 20, 40, 64, 128, 128, 192, 256, 320]
    assert sorted({tile_bucket(n) for n in range(33, 65)}) == [40, 48, 56, 64]  # four shapes an octave
    assert {tile_bucket(n) % PNET_CHUNK for n in range(PNET_CHUNK, 2000)} == {0}  # past it, whole chunks
    names = ["bob_multiple-faces.jpg", "dlib_2007_007763.jpg", "insightface_t1.jpg", "yolov5_zidane.jpg",
             "dlib_2008_001322.jpg"]
    imgs = [cv2.resize(photos[k], (900 - 60 * i, 700 + 40 * i), interpolation=cv2.INTER_AREA)
            for i, k in enumerate(names)]
    det = MTCNN(minsize=20, backend="torch", device="cpu", fixed_shapes=True)
    be = det.backend
    plan = batch_plan(be, [im.shape[:2] for im in imgs], det.config)
    shape = be._shape(plan, sum((h + 1) * (w + 1) for h, w in plan.sizes), graphed=False)
    assert shape.tiles == tile_bucket(len(plan.canvases)) > len(plan.canvases)  # padded tiles in this call
    got = det.detect_batch(imgs)
    assert be.graph_stats == {"captures": 0, "replays": 0, "fallbacks": 0, "eager": 1, "reruns": 0}
    alone = MTCNN(minsize=20, backend="torch", device="cpu")  # the shared pipeline, photo by photo
    assert sum(len(g) for g in got) >= 30
    for name, im, g in zip(names, imgs, got):
        assert_same_detections(alone.detect(im), g, name)


def test_pnet_runs_a_window_of_many_tiles_in_chunks_of_one_shape_with_the_same_faces(photos):
    """Past `PNET_CHUNK` tiles a call's PNet runs in chunks of exactly that many tiles (cuDNN meets one
    shape whatever the window's photo sizes), and every photo still gets what it gets alone."""
    import cv2

    from fastmtcnn.backends.torch import PNET_CHUNK
    from fastmtcnn.pipeline import batch_plan

    names = ["bob_multiple-faces.jpg", "yolov5_zidane.jpg", "insightface_t1.jpg", "dlib_2007_007763.jpg"]
    imgs = [cv2.resize(photos[k], (700 + 30 * i, 560 - 20 * i), interpolation=cv2.INTER_AREA)
            for i, k in enumerate(names)]
    det = MTCNN(minsize=20, backend="torch", device="cpu", fixed_shapes=True, tile=96)
    be = det.backend
    tiles = len(batch_plan(be, [im.shape[:2] for im in imgs], det.config).canvases)
    assert tiles > 2 * PNET_CHUNK and tiles % PNET_CHUNK  # several chunks, the last one padded
    calls = []
    net = be._net
    be._net = lambda k, *args: (calls.append((k, args[0].shape[0])), net(k, *args))[1]
    got = det.detect_batch(imgs)
    pnet_calls = [n for k, n in calls if k == 0]
    assert pnet_calls == [PNET_CHUNK] * -(-tiles // PNET_CHUNK), pnet_calls
    alone = MTCNN(minsize=20, backend="torch", device="cpu")
    assert sum(len(g) for g in got) >= 15
    for name, im, g in zip(names, imgs, got):
        assert_same_detections(alone.detect(im), g, name)


def test_level_nms_neighbours_hold_every_pair_of_cells_that_can_overlap_by_half():
    """The fixed-shape NMS within a level looks only at a cell's `NEIGHBOURS`: every other pair of cell
    boxes of one level must overlap by 0.5 or less, at every scale a pyramid can have."""
    from fastmtcnn.backends.torch_static import NEIGHBOURS
    from fastmtcnn.boxes import cells_to_boxes, overlap

    lx = np.arange(400)
    worst = 0.0
    for s in np.concatenate([np.geomspace(1.0, 0.002, 300), [0.6, 0.3, 0.2]]).astype(np.float32):
        a = cells_to_boxes(lx * 0, lx, np.full(400, s), np.ones(400, np.float32), np.zeros((400, 4), np.float32))
        for dy in range(0, 5):
            for dx in range(-4, 5):
                if (dy, dx) in NEIGHBOURS or (dy, dx) == (0, 0) or (dy == 0 and dx < 0):
                    continue
                b = cells_to_boxes(lx * 0 + dy, lx + dx, np.full(400, s), np.ones(400, np.float32),
                                   np.zeros((400, 4), np.float32))
                worst = max(worst, float(overlap(a[:, :4], b[:, :4]).max()))
    assert worst <= 0.5, worst
    assert len(NEIGHBOURS) == 24


def test_fixed_shape_calls_rerun_a_chunk_with_the_short_capacity_doubled_then_fall_back_exactly(photos):
    """A capacity too small for a chunk: the chunk runs again with the short capacity doubled (kept for
    later calls), not photo by photo through the shared pipeline (whose pyramid levels are new shapes to
    cuDNN); still short after `RETRIES` doublings, the shared pipeline does it. Same faces either way."""
    from fastmtcnn.backends.torch import RETRIES

    imgs = [photos["bob_multiple-faces.jpg"], photos["yolov5_zidane.jpg"]]
    want = MTCNN(minsize=40, backend="torch", device="cpu").detect_batch(imgs)
    det = MTCNN(minsize=40, backend="torch", device="cpu", fixed_shapes=True, caps=(256, 1024, 512, 128, 64, 64))
    got = det.detect_batch(imgs)
    assert det.backend.graph_stats == {"captures": 0, "replays": 0, "fallbacks": 0, "eager": 1, "reruns": 1}
    assert det.backend.capacities(det.config, 2)[0][0] == 512
    tiny = MTCNN(minsize=40, backend="torch", device="cpu", fixed_shapes=True, caps=(8, 1024, 512, 128, 64, 64))
    redone = tiny.detect_batch(imgs)  # 8 -> 16 -> 32 cells: short still, so the shared pipeline
    assert tiny.backend.graph_stats["fallbacks"] == 1 and tiny.backend.graph_stats["reruns"] == RETRIES
    assert tiny.backend.capacities(tiny.config, 2)[0][0] == 8 << (RETRIES + 1)  # and room for the next call
    for a, b, c in zip(want, got, redone):
        assert_same_detections(a, b, "rerun")
        assert_same_detections(a, c, "redone")


def test_a_single_photo_call_does_not_set_the_capacities_of_later_batches(photos):
    """Capacities start per size class (`default_caps`) and grow per class: a script that detects one photo
    and then a folder runs its windows at the batch capacities, not the single photo's."""
    from fastmtcnn.backends.torch_static import BATCH_CAPS, DEFAULT_CAPS, DEFAULT_ITERS

    det = MTCNN(minsize=40, backend="torch", device="cpu", fixed_shapes=True, caps=None)
    small = MTCNN(minsize=40, backend="torch", device="cpu", fixed_shapes=True, caps=(16384, 2048, 8, 256, 128, 128))
    img = photos["bob_multiple-faces.jpg"]
    det.detect(img)
    small.detect(img)  # 8 RNet crops: short, grown
    assert det.backend.capacities(det.config, 1) == (DEFAULT_CAPS, DEFAULT_ITERS)
    assert det.backend.capacities(det.config, 64) == (BATCH_CAPS, DEFAULT_ITERS)
    assert small.backend.capacities(small.config, 1)[0][2] > 8  # caps= given: one class, grown
    assert small.backend.capacities(small.config, 64) == small.backend.capacities(small.config, 1)


def test_a_window_with_a_crowded_photo_runs_at_the_default_capacities_without_a_rerun(photos):
    """dlib_2008_002079 at 1024x1398 has more than 2048 PNet candidates after the NMS within levels (the old
    default): a folder window holding it was redone photo by photo, on every fresh process. The batch
    default holds it."""
    import cv2

    names = ["dlib_2008_002079.jpg", "bob_multiple-faces.jpg", "yolov5_zidane.jpg", "insightface_t1.jpg",
             "dlib_2007_007763.jpg", "dlib_2008_001322.jpg", "skimage_astronaut.png", "facerec_biden.jpg"]
    def fit(im, w, h):  # centre crop to w:h, then resize (as benchmarks/bench_e2e_gpu.py makes its folders)
        s = min(im.shape[1] / w, im.shape[0] / h)
        y, x = (im.shape[0] - int(h * s)) // 2, (im.shape[1] - int(w * s)) // 2
        return cv2.resize(im[y:y + int(h * s), x:x + int(w * s)], (w, h), interpolation=cv2.INTER_CUBIC)

    imgs = [fit(photos[k], 1024, 1398 - 2 * i) for i, k in enumerate(names)]
    det = MTCNN(backend="torch", device="cpu", fixed_shapes=True)
    got = det.detect_batch(imgs)
    assert det.backend.graph_stats == {"captures": 0, "replays": 0, "fallbacks": 0, "eager": 1, "reruns": 0}
    alone = MTCNN(backend="torch", device="cpu")
    for name, im, g in zip(names, imgs, got):
        assert_same_detections(alone.detect(im), g, name)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_device_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA"):
        MTCNN(backend="torch", device="cuda")


def test_a_triton_kernel_that_fails_on_a_machine_falls_back_to_torch_with_a_warning(photos, monkeypatch):
    """A compile or driver error in a kernel must cost speed, never a crash or a different result."""
    from fastmtcnn.backends import torch_kernels

    img = photos["yolov5_zidane.jpg"]
    want = MTCNN(backend="torch", device="cpu").detect(img)
    det = MTCNN(backend="torch", device="cpu")

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    for name in ("integrals", "tiles", "crops"):
        monkeypatch.setattr(torch_kernels, name, broken)
    det.backend.kernels = det.backend._compiled = True  # as on a CUDA machine whose Triton cannot run
    with pytest.warns(RuntimeWarning, match="Triton kernels off"):
        got = det.detect(img)
    assert not det.backend.kernels
    assert_same_detections(want, got, "fallback")


def test_graph_batches_round_up_to_a_bucket_a_graph_already_has():
    from fastmtcnn.backends.torch_graphs import ShapeCache, bucket

    assert [bucket(n, 64) for n in (1, 3, 5, 17, 32, 33, 64)] == [1, 4, 8, 32, 32, 64, 64]
    assert bucket(12, 32, captured=(32,)) == 32  # a last partial chunk reuses the chunk's graph
    assert bucket(12, 32, captured=(16, 32)) == 16
    assert bucket(40, 32) == 40  # never below the frames asked for
    cache = ShapeCache(size=2)
    assert [cache.wanted("a") for _ in range(3)] == [False, True, True]  # "auto": captured on the second sighting
    for k in "xyz":
        cache.put((4, k), k)
    assert list(cache.entries) == [(4, "y"), (4, "z")]  # least recently used dropped


def test_a_dropped_detector_frees_its_fixed_shape_cascades_without_the_cyclic_gc(photos):
    """The backend keeps its cascades (and on CUDA their graphs, gigabytes for large batches): a
    cascade must not hold the backend back, or dropping the detector would not free them until
    the cyclic garbage collector happened to run."""
    from fastmtcnn.backends.torch_static import Shape, TiledCascade

    holder = [MTCNN(backend="torch", device="cpu")]
    be, cfg = holder[0].backend, holder[0].config
    shape = Shape(2, 4, 16, 1 << 16, be.tiles)
    cascade = TiledCascade(be, cfg, shape)
    be._graphs.put((shape, cfg), (cascade, None, None, None))
    del be, cascade
    assert freed_at_once(holder)


def freed_at_once(holder: list) -> bool:
    """Drop the detector in holder (its only reference): True if its backend went with it, the cyclic
    garbage collector off."""
    import gc
    import weakref

    alive = weakref.ref(holder[0].backend)
    gc.disable()
    try:
        holder.clear()
        return alive() is None
    finally:
        gc.enable()


def test_graph_cache_drops_the_least_recent_graphs_past_its_memory_budget():
    from fastmtcnn.backends.torch_graphs import ShapeCache

    cache = ShapeCache(size=8, budget=10)
    cache.put("a", 1, cost=4)
    cache.put("b", 2, cost=4)
    cache.get("a")  # used again: "b" is now the least recent
    cache.put("c", 3, cost=4)
    assert list(cache.entries) == ["a", "c"] and sum(cache.costs.values()) == 8
    cache.put("huge", 4, cost=50)  # over the budget alone: kept (the one just made), all others go
    assert list(cache.entries) == ["huge"]
    cache.pop("huge")
    assert not cache.entries and not cache.costs


# --------------------------------------------------------------------------- GPU


@pytest.fixture(scope="module")
def cuda_dets():
    """fp32 eager on CUDA; the reference itself (fp32 with graphs, fp16) is test_faithfulness.py's."""
    return {"fp32": MTCNN(backend="torch", device="cuda", fp16=False, graphs=False)}


@pytest.mark.gpu
@gpu
def test_gpu_fp32_gives_the_onnxruntime_results_exactly(photos, ort_detections, cuda_dets):
    for name, img in photos.items():
        assert_same_detections(ort_detections[name], cuda_dets["fp32"].detect(img), name)


@pytest.mark.gpu
@gpu
def test_gpu_frames_already_on_the_device_are_not_copied_and_give_the_same_faces(photos, cuda_dets):
    det = cuda_dets["fp32"]
    img = photos["bob_multiple-faces.jpg"]
    t = torch.from_numpy(img[None]).cuda()
    assert det.backend.images(t).data_ptr() == t.data_ptr()
    on_gpu = det.detect_batch(t)[0]
    on_host = det.detect(img)
    assert len(on_host) >= 15
    assert_same_detections(on_host, on_gpu, "device vs host")


@pytest.mark.gpu
@gpu
def test_gpu_batch_equals_frame_by_frame_with_and_without_pinned_upload(photos):
    import cv2

    imgs = [cv2.resize(im, (640, 480), interpolation=cv2.INTER_AREA) for im in photos.values()]
    det = MTCNN(backend="torch", device="cuda", fp16=False, pinned=True, graphs=False)
    plain = MTCNN(backend="torch", device="cuda", fp16=False, pinned=False, graphs=False)
    batch = det.detect_batch(np.stack(imgs))
    assert sum(len(d) for d in batch) >= 10
    for im, d, e in zip(imgs, batch, plain.detect_batch(imgs)):
        assert_same_detections(det.detect(im), d, "batch vs single")
        np.testing.assert_array_equal(d.boxes, e.boxes)


@pytest.mark.gpu
@gpu
def test_gpu_queueing_host_images_does_not_wait_for_the_batch_before(photos, monkeypatch):
    """`MTCNN.submit` of host arrays (a PNG folder, EXIF jobs, API users) queues their upload and cascade
    behind the batch already queued, without waiting for it on the host (no event or stream sync)."""
    det = MTCNN(backend="torch", device="cuda", fp16=False, pinned=True, graphs=False)
    imgs = list(photos.values())
    want = det.detect_batch(imgs)  # shapes met, kernels and plans made
    first = det.submit(imgs)
    waits, here = [], threading.get_ident()

    def waited(what):  # on this thread (the kernels' warm-up thread may sync its own stream meanwhile)
        def sync(*args, **kwargs):
            if threading.get_ident() == here:
                waits.append(what)
        return sync

    for cls in (torch.cuda.Event, torch.cuda.Stream):
        monkeypatch.setattr(cls, "synchronize", waited(cls.__name__))
    monkeypatch.setattr(torch.cuda, "synchronize", waited("device"))
    second = det.submit(imgs)
    monkeypatch.undo()
    assert waits == []
    for a, b, c in zip(want, first(), second()):
        assert_same_detections(a, b, "first batch")
        assert_same_detections(a, c, "second batch")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("minsize", [40, 20])
def test_gpu_fp32_graph_replays_give_the_eager_results_exactly(photos, minsize):
    import cv2

    imgs = [cv2.resize(im, (1280, 720), interpolation=cv2.INTER_AREA) for im in photos.values()]
    eager = MTCNN(backend="torch", device="cuda", fp16=False, minsize=minsize, graphs=False)
    graphed = MTCNN(backend="torch", device="cuda", fp16=False, minsize=minsize, graphs=True,
                    caps=(16384, 4096, 1024, 512, 256, 256))
    total = 0
    for im in imgs + imgs[:3]:  # one graph replayed on every frame, then again
        a, b = eager.detect(im), graphed.detect(im)
        assert_same_detections(a, b, "graphs vs eager")
        total += len(a)
    assert total >= 20
    stats = graphed.backend.graph_stats
    # a frame beyond the capacities is redone by the shared pipeline (exact either way): rare, not never
    assert stats["replays"] + stats["fallbacks"] == len(imgs) + 3 and stats["fallbacks"] <= 2, stats


@pytest.mark.gpu
@gpu
def test_gpu_auto_graphs_are_few_and_serve_photos_of_sizes_never_seen(photos):
    """The default: one photo at a time runs the fixed-shape cascade; a capacity bucket seen twice is
    captured once and then replayed for photos of any size that fit it; results stay exact."""
    import cv2

    # 42 photos, each size its own (some test photos share a size: a pixel more per photo sets them apart)
    imgs = [cv2.resize(im, (int(im.shape[1] * f) + k, int(im.shape[0] * f) + k), interpolation=cv2.INTER_AREA)
            for f in (0.9, 1.1, 1.3) for k, im in enumerate(photos.values())]
    assert len({im.shape for im in imgs}) == len(imgs)
    det = MTCNN(backend="torch", device="cuda", fp16=False)
    eager = MTCNN(backend="torch", device="cuda", fp16=False, graphs=False)
    assert det.backend.graph_mode == "auto" and MTCNN(backend="torch", device="cuda").backend.fp16
    # graphs are captured only with the Triton kernels in (they load aside, from the second call): wait
    assert det.backend.wait_for_kernels(300), "Triton kernels did not compile"
    for i, im in enumerate(imgs):
        assert_same_detections(eager.detect(im), det.detect(im), f"photo {i}")
    stats = det.backend.graph_stats
    shapes = {k[0] for k in det.backend._graphs.entries}
    # a capture whose capacities were short is dropped (its call ran again, or went to the shared pipeline)
    dropped = stats["fallbacks"] + stats["reruns"]
    assert stats["captures"] <= len(shapes) + dropped <= 8 + dropped, stats
    assert stats["replays"] >= len(imgs) // 2, stats  # most photos replay a graph made for other sizes
    # frames of one size in chunks of 4 and a last partial chunk
    frames = np.stack([cv2.resize(im, (960, 540), interpolation=cv2.INTER_AREA) for im in photos.values()])
    want = eager.detect_batch(frames)
    got = []
    for i in range(0, len(frames), 4):
        got += det.detect_batch(torch.from_numpy(frames[i:i + 4]).cuda())
    for i, (a, b) in enumerate(zip(want, got)):
        assert_same_detections(a, b, f"frame {i}")


@pytest.mark.gpu
@gpu
def test_gpu_fixed_shape_mode_falls_back_to_the_exact_pipeline_when_capacities_overflow(photos):
    img = photos["bob_multiple-faces.jpg"]
    tiny = MTCNN(backend="torch", device="cuda", fp16=False, graphs=True, caps=(256, 64, 16, 8, 4, 4))
    a = MTCNN(backend="torch", device="cuda", fp16=False, graphs=False).detect(img)
    assert len(a) >= 15
    for _ in range(12):  # each overflow is redone exactly and doubles the short capacity
        assert_same_detections(a, tiny.detect(img), "fallback")
    stats = tiny.backend.graph_stats
    assert 1 <= stats["fallbacks"] < 12 and stats["replays"] >= 1, stats


@pytest.mark.gpu
@gpu
def test_gpu_fixed_shape_mode_runs_large_batches_in_chunks_with_the_eager_results(photos):
    import cv2

    imgs = np.stack([cv2.resize(im, (960, 540), interpolation=cv2.INTER_AREA) for im in photos.values()][:10])
    eager = MTCNN(backend="torch", device="cuda", fp16=True, graphs=False).detect_batch(imgs)
    chunked = MTCNN(backend="torch", device="cuda", fp16=True, graphs=True, graph_batch=4)
    for _ in range(2):  # capture, then replay
        got = chunked.detect_batch(torch.from_numpy(imgs).cuda())
        for i, (a, b) in enumerate(zip(eager, got)):
            assert_same_faces(a, b, f"frame {i}", landmark_tol=0.01)
    stats = chunked.backend.graph_stats
    assert stats["replays"] + stats["fallbacks"] == 6 and stats["replays"] >= 4, stats  # chunks of 4, 4, 2 (padded)
    # the partial chunk may reuse the graph of 4
    assert stats["captures"] <= 2 + stats["fallbacks"] + stats["reruns"], stats
    assert sum(len(d) for d in eager) >= 20


@pytest.mark.gpu
@gpu
def test_gpu_grouped_nms_equals_numpy_nms_and_torchvision():
    rng = np.random.default_rng(3)
    tv = pytest.importorskip("torchvision").ops.batched_nms
    for trial in range(40):
        n = int(rng.integers(1, 3000))
        b, s = _random_boxes(rng, n, ties=False, integer=trial % 2 == 1)
        g = rng.integers(0, 50, n)
        ref = numpy_nms(b, s, 0.5, g)
        tb, ts, tg = (torch.from_numpy(a).cuda() for a in (b, s, g))
        got = grouped_nms(tb, ts, 0.5, tg, max_pairs=1 << 16 if trial % 3 == 0 else 1 << 23)
        np.testing.assert_array_equal(np.sort(got.cpu().numpy()), np.sort(ref))
        np.testing.assert_array_equal(np.sort(tv(tb, ts, tg, 0.5).cpu().numpy()), np.sort(ref))


@pytest.mark.gpu
@gpu
def test_gpu_a_dropped_detector_frees_its_graphs_at_once(photos):
    """No reference cycle keeps a detector's CUDA graphs (gigabytes for large batches) alive until the
    cyclic garbage collector happens to run: dropping the detector frees them."""
    img = next(iter(photos.values()))
    frames = torch.from_numpy(np.stack([img] * 4)).cuda()
    holder = [MTCNN(backend="torch", device="cuda", graphs=True)]
    holder[0].detect_batch(frames)
    assert holder[0].backend.graph_stats["captures"] >= 1
    assert freed_at_once(holder)


@pytest.mark.gpu
@gpu
def test_gpu_a_jobs_warm_up_runs_first_launches_beside_it_and_a_call_waits_for_them(photos):
    """A job's `wait_for_kernels(0)` starts, beside the kernels' loading, a tiny image through the cascade on
    torch ops (CUDA's module loads and cuDNN's first calls, once per process); a call made meanwhile waits
    for it instead of sharing the backend, and gives the results of a detector without kernels."""
    names = ("bob_multiple-faces.jpg", "yolov5_zidane.jpg")
    plain = MTCNN(backend="torch", device="cuda", fp16=False, kernels=False, graphs=False)
    want = {name: plain.detect(photos[name]) for name in names}  # before any warm-up thread runs
    det = MTCNN(backend="torch", device="cuda", fp16=False)
    be = det.backend
    if be.warmup is None:
        pytest.skip("no Triton here: no kernels to load")
    be.wait_for_kernels(0)
    first = be._first_launch
    assert first is not None and first.name == "fastmtcnn-first"
    for name in names:
        assert_same_detections(want[name], det.detect(photos[name]), name)
        assert be._first_launch is None and not first.is_alive()
    assert be.wait_for_kernels(300), "Triton kernels did not load"
    for name in names:
        assert_same_detections(want[name], det.detect(photos[name]), f"{name}, with the kernels")
    det2 = MTCNN(backend="torch", device="cuda", fp16=False)
    det2.detect(photos[names[1]])  # a call answered first: its warm-up starts without them
    det2.backend.wait_for_kernels(0)
    assert det2.backend._first_launch is None


def test_a_jobs_warm_up_starts_the_first_launch_once_and_not_with_graphs_always():
    """The thread orchestration of `wait_for_kernels` (on CPU torch, with a stand-in for the kernels'
    warm-up): the first launch starts with the warm-up, before any call, is waited for by a waiting call,
    and is left out where a call was answered already or where its tiny call would capture a graph."""
    def backend(graphs: str, answered: bool = False):
        be = MTCNN(backend="torch", device="cpu").backend
        be.warmup = threading.Thread(target=lambda: None)  # stands in for the Triton warm-up
        be.graph_mode, be._answered = graphs, answered
        return be

    be = backend("auto")
    be.wait_for_kernels(0)
    first = be._first_launch
    assert first is not None and first.name == "fastmtcnn-first" and be.warmup.ident is not None
    be.wait_for_kernels()
    assert be._first_launch is None and not first.is_alive()
    be.wait_for_kernels(0)  # started once per backend
    assert be._first_launch is None
    for be in (backend("always"), backend("auto", answered=True)):
        be.wait_for_kernels(0)
        assert be._first_launch is None and be.warmup.ident is not None
