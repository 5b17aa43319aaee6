"""fastmtcnn.compat.facenet_pytorch.MTCNN: facenet-pytorch users change one import and keep their code.

Why: the class must give what facenet-pytorch 2.6.0's MTCNN gives. Detections
are checked against the reference outputs in ../shared/data/ref with the
faithfulness rule; face crops against what facenet-pytorch's extract_face
computes from the *reference* boxes, written out independently below (the
margin arithmetic and each input type's resize: PIL bilinear, OpenCV area,
torch area truncated to uint8); the return types and None conventions
against facenet-pytorch's documented behaviour. And against facenet-pytorch
itself, run in its own Python (FASTMTCNN_FACENET_PYTHON; .ci/run makes one):
its detect() and its face crop tensors on every photo.

Face crops are torch tensors, so the tests of crops take the `torch` fixture
(skipped without torch); detection runs without it.
"""
from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import load_reference, reference_names, skip_or_fail
from fastmtcnn import Detections
from fastmtcnn.compat.facenet_pytorch import MTCNN, extract_face
from fastmtcnn.metrics import greedy_match
from same_faces import assert_same_detections
from test_faithfulness import MIN_IOU, PX, SCORE

GROUP = "dlib_2008_001322.jpg"  # 3 faces of different sizes and probabilities
PORTRAIT = "matplotlib_grace_hopper.jpg"
NO_FACE = "skimage_coffee.png"


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="face crops are torch tensors (pip install torch)")


@pytest.fixture(scope="module")
def mtcnn_all():
    return MTCNN(keep_all=True)


def _pil(shared_data, name: str) -> Image.Image:
    return Image.open(shared_data / name)  # as facenet-pytorch's README opens images (not converted)


def _ref(name: str) -> Detections:
    return Detections.from_list(load_reference(name))


def _expected_crop(img, box, size: int, margin: float, post_process: bool) -> np.ndarray:
    """facenet-pytorch's extract_face (+ fixed_image_standardization) on one box, per input type."""
    mx, my = margin * (box[2] - box[0]) / (size - margin), margin * (box[3] - box[1]) / (size - margin)
    w, h = img.size if isinstance(img, Image.Image) else (img.shape[1], img.shape[0])
    x1, y1 = int(max(box[0] - mx / 2, 0)), int(max(box[1] - my / 2, 0))
    x2, y2 = int(min(box[2] + mx / 2, w)), int(min(box[3] + my / 2, h))
    if isinstance(img, Image.Image):
        face = np.asarray(img.crop((x1, y1, x2, y2)).resize((size, size), Image.BILINEAR))
    elif isinstance(img, np.ndarray):
        face = cv2.resize(img[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA)
    else:
        import torch

        patch = img[y1:y2, x1:x2].permute(2, 0, 1)[None].float()
        face = torch.nn.functional.interpolate(patch, size=(size, size), mode="area").byte()[0].permute(1, 2, 0).numpy()
    chw = face.astype(np.float32).transpose(2, 0, 1)
    return (chw - 127.5) / 128.0 if post_process else chw


def _as_detections(boxes, probs, points) -> Detections:
    if boxes is None:
        return Detections.empty()
    return Detections(boxes.astype(np.float32), probs.astype(np.float32), points.astype(np.float32))


# ------------------------------------------------------------------ detect()


@pytest.mark.parametrize("name", reference_names())
def test_detect_gives_the_reference_faces_on_every_photo(shared_data, mtcnn_all, name):
    # the same rule as tests/test_faithfulness.py: same faces, boxes and landmarks within PX, scores within SCORE
    boxes, probs, points = mtcnn_all.detect(_pil(shared_data, name).convert("RGB"), landmarks=True)
    assert_same_detections(_ref(name), _as_detections(boxes, probs, points), px=PX, score=SCORE, name=name)


def test_detect_types_and_order_are_facenet_pytorchs(shared_data, mtcnn_all):
    boxes, probs, points = mtcnn_all.detect(_pil(shared_data, GROUP), landmarks=True)
    # facenet-pytorch returns object arrays of Python floats: (n, 4), (n,), (n, 5, 2)
    assert boxes.dtype == probs.dtype == points.dtype == object
    assert boxes.shape == (3, 4) and probs.shape == (3,) and points.shape == (3, 5, 2)
    assert all(type(v) is float for v in (boxes[0, 0], probs[0], points[0, 0, 0]))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert list(area) == sorted(area, reverse=True)  # select_largest: largest face first
    by_prob = MTCNN(keep_all=True, select_largest=False).detect(_pil(shared_data, GROUP))[1]
    assert list(by_prob) == sorted(by_prob, reverse=True) and sorted(by_prob) == sorted(probs)
    two = mtcnn_all.detect(_pil(shared_data, GROUP))
    assert len(two) == 2 and np.array_equal(two[0], boxes)  # landmarks=False: (boxes, probs)


def test_no_face_is_none_and_a_list_of_none(shared_data, mtcnn_all, torch):
    boxes, probs, points = mtcnn_all.detect(_pil(shared_data, NO_FACE), landmarks=True)
    assert boxes is None and points is None
    assert probs.dtype == object and probs.shape == (1,) and probs[0] is None  # facenet-pytorch's (None, [None])
    assert mtcnn_all(_pil(shared_data, NO_FACE)) is None
    faces, p = MTCNN()(_pil(shared_data, NO_FACE), return_prob=True)
    assert faces is None and p is None


def test_every_input_type_gives_the_same_faces(shared_data, mtcnn_all, torch):
    img = _pil(shared_data, GROUP).convert("RGB")
    rgb = np.asarray(img)
    want = mtcnn_all.detect(img, landmarks=True)
    for other in (rgb, torch.from_numpy(rgb.copy()), rgb.astype(np.float32)):
        got = mtcnn_all.detect(other, landmarks=True)
        assert all(np.array_equal(a, b) for a, b in zip(want, got)), type(other)
    # batches: a list of images, a 4-D array or tensor -> one entry per image, with an extra first axis
    for batch in ([img, img], np.stack([rgb, rgb]), torch.from_numpy(np.stack([rgb, rgb]))):
        boxes, probs, points = mtcnn_all.detect(batch, landmarks=True)
        assert boxes.shape == (2, 3, 4) and probs.shape == (2, 3) and points.shape == (2, 3, 5, 2)
        assert np.array_equal(boxes[1], want[0]) and np.array_equal(points[0], want[2])


def test_batch_with_a_faceless_image_keeps_none_in_its_place(shared_data, mtcnn_all, torch):
    face, empty = _pil(shared_data, PORTRAIT), Image.new("RGB", (512, 600))
    boxes, probs, points = mtcnn_all.detect([face, empty], landmarks=True)
    assert boxes.shape == (2,) and boxes[1] is None and points[1] is None and boxes[0].shape == (1, 4)
    assert probs.shape == (2, 1) and probs[1, 0] is None
    faces, p = MTCNN()([face, empty], return_prob=True)
    assert isinstance(faces, list) and faces[0].shape == (3, 160, 160) and faces[1] is None
    assert p[1][0] is None and p[0][0] == pytest.approx(float(_ref(PORTRAIT).scores[0]), abs=1e-4)


def test_images_of_different_sizes_run_in_one_list(shared_data, mtcnn_all):
    # facenet-pytorch refuses this ("equal-dimension images"); the compat class runs each at its size
    a, b = _pil(shared_data, PORTRAIT).convert("RGB"), _pil(shared_data, GROUP).convert("RGB")
    boxes, _ = mtcnn_all.detect([a, b])
    assert np.array_equal(boxes[0], mtcnn_all.detect(a)[0]) and np.array_equal(boxes[1], mtcnn_all.detect(b)[0])


def test_settings_changed_on_the_instance_apply_to_the_next_call(shared_data):
    m = MTCNN(keep_all=True)
    assert len(m.detect(_pil(shared_data, GROUP))[0]) == 3
    m.min_face_size = 400  # facenet-pytorch reads its attributes at each call
    assert m.detect(_pil(shared_data, GROUP))[0] is None


# ------------------------------------------------------------------ forward(): face crops


@pytest.mark.parametrize("margin, post_process", [(0, True), (20, False), (20, True)])
def test_face_crops_equal_extract_face_on_the_reference_boxes(shared_data, margin, post_process, torch):
    m = MTCNN(keep_all=True, margin=margin, post_process=post_process)
    for name in reference_names():
        ref = _ref(name)
        img = _pil(shared_data, name).convert("RGB")
        faces = m(img)
        if not len(ref):
            assert faces is None
            continue
        boxes = m.detect(img)[0].astype(np.float32)
        pairs = greedy_match(boxes, ref.boxes, MIN_IOU)
        assert faces.shape == (len(boxes), 3, 160, 160) and faces.dtype == torch.float32 and len(pairs) == len(ref)
        for i, j in pairs:
            want = _expected_crop(img, ref.boxes[j].astype(np.float64), 160, margin, post_process)
            assert np.array_equal(faces[i].numpy(), want), (name, j)


@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_crops_of_arrays_and_tensors_use_their_own_resize(shared_data, kind, torch):
    m = MTCNN(keep_all=True, image_size=112, margin=14)
    rgb = np.asarray(_pil(shared_data, GROUP).convert("RGB"))
    img = rgb if kind == "numpy" else torch.from_numpy(rgb.copy())
    faces = m(img)
    boxes = m.detect(img)[0].astype(np.float32)
    ref = _ref(GROUP)
    for i, j in greedy_match(boxes, ref.boxes, MIN_IOU):
        assert np.array_equal(faces[i].numpy(), _expected_crop(img, ref.boxes[j].astype(np.float64), 112, 14, True))


def test_readme_usage_runs_unchanged(shared_data, tmp_path, torch):
    # facenet-pytorch's README: mtcnn = MTCNN(image_size=<image_size>, margin=<margin>);
    # img = Image.open(<image path>); img_cropped = mtcnn(img, save_path=<optional save path>)
    mtcnn = MTCNN(image_size=160, margin=20)
    img = Image.open(shared_data / GROUP)
    img_cropped = mtcnn(img, save_path=str(tmp_path / "crops" / "face.png"))
    ref = _ref(GROUP)
    largest = ref.boxes[np.argmax((ref.boxes[:, 2] - ref.boxes[:, 0]) * (ref.boxes[:, 3] - ref.boxes[:, 1]))]
    assert img_cropped.shape == (3, 160, 160)
    want = _expected_crop(img.convert("RGB"), largest.astype(np.float64), 160, 20, True)
    assert np.array_equal(img_cropped.numpy(), want)
    saved = np.asarray(Image.open(tmp_path / "crops" / "face.png"), np.float32).transpose(2, 0, 1)
    assert np.array_equal(saved, img_cropped.numpy() * 128.0 + 127.5)  # the file is not post-processed
    assert img_cropped.unsqueeze(0).shape == (1, 3, 160, 160)  # resnet(img_cropped.unsqueeze(0))


@pytest.mark.parametrize("kind", ["pil", "numpy"])
def test_keep_all_save_path_writes_every_face(shared_data, tmp_path, kind, torch):
    img = _pil(shared_data, GROUP).convert("RGB")
    if kind == "numpy":
        img = np.asarray(img)
    faces = MTCNN(keep_all=True, post_process=False)(img, save_path=str(tmp_path / "face.png"))
    files = [tmp_path / "face.png", tmp_path / "face_2.png", tmp_path / "face_3.png"]
    assert sorted(tmp_path.iterdir()) == sorted(files)
    for face, f in zip(faces, files):
        assert np.array_equal(np.asarray(Image.open(f)).transpose(2, 0, 1), face.numpy().astype(np.uint8))


def test_extract_with_given_boxes(shared_data, tmp_path, torch):
    img = _pil(shared_data, GROUP).convert("RGB")
    m = MTCNN(keep_all=True, margin=10)
    ref = _ref(GROUP)
    faces = m.extract(img, ref.boxes.astype(np.float64), str(tmp_path / "f.png"))
    for i, box in enumerate(ref.boxes.astype(np.float64)):
        assert np.array_equal(faces[i].numpy(), _expected_crop(img, box, 160, 10, True))
    assert len(list(tmp_path.iterdir())) == len(ref)
    one = extract_face(img, ref.boxes[0].astype(np.float64), 160, 10)  # facenet_pytorch.extract_face
    assert np.array_equal(one.numpy(), _expected_crop(img, ref.boxes[0].astype(np.float64), 160, 10, False))


# ------------------------------------------------------------------ facenet-pytorch itself

#: a Python with facenet-pytorch 2.6.0 installed (its own virtualenv: it needs torchvision); .ci/run makes one
FACENET_PYTHON = os.environ.get("FASTMTCNN_FACENET_PYTHON")

#: run by FACENET_PYTHON: facenet-pytorch's detect() and face crops (margin 0 and 20, PIL and tensor input) of
#: each photo given, into one .npz (argv[1])
FACENET_RUN = """
import sys
import numpy as np
import torch
from PIL import Image
from facenet_pytorch import MTCNN
out = {}
plain, margin = MTCNN(keep_all=True), MTCNN(keep_all=True, margin=20)
for k, path in enumerate(sys.argv[2:]):
    img = Image.open(path).convert("RGB")  # facenet-pytorch takes RGB PIL images only
    boxes, probs, points = plain.detect(img, landmarks=True)
    out[f"{k}/boxes"] = np.zeros((0, 4)) if boxes is None else boxes.astype(np.float64)
    out[f"{k}/probs"] = np.zeros(0) if boxes is None else probs.astype(np.float64)
    out[f"{k}/points"] = np.zeros((0, 5, 2)) if boxes is None else points.astype(np.float64)
    for m, det in (("0", plain), ("20", margin)):
        for kind, x in (("pil", img), ("tensor", torch.from_numpy(np.array(img)))):
            faces = det(x)
            out[f"{k}/{m}/{kind}"] = np.zeros((0, 3, 160, 160), np.float32) if faces is None else faces.numpy()
np.savez(sys.argv[1], **out)
"""


@pytest.fixture(scope="module")
def facenet_itself(shared_data, tmp_path_factory) -> dict:
    """facenet-pytorch's own outputs on every reference photo (see FACENET_RUN)."""
    if not FACENET_PYTHON:
        skip_or_fail("facenet-pytorch itself is not run: FASTMTCNN_FACENET_PYTHON names no Python that has it "
                     "(.ci/run makes one)")
    out = tmp_path_factory.mktemp("facenet") / "out.npz"
    paths = [str(shared_data / name) for name in reference_names()]
    proc = subprocess.run([FACENET_PYTHON, "-c", FACENET_RUN, str(out), *paths], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as f:
        return dict(f)


def test_detections_and_crops_are_facenet_pytorchs_own(shared_data, facenet_itself, torch):
    """README and docs/compat.md: checked against facenet-pytorch itself on the 14 photos: the same faces
    (boxes, landmarks within PX, probabilities within SCORE) and every face crop tensor equal, element for
    element, for PIL images and tensors, margin 0 and 20."""
    plain, margin = MTCNN(keep_all=True), MTCNN(keep_all=True, margin=20)
    worst = 0.0
    crops = 0
    for k, name in enumerate(reference_names()):
        img = _pil(shared_data, name).convert("RGB")
        theirs = Detections(*(facenet_itself[f"{k}/{a}"].astype(np.float32) for a in ("boxes", "probs", "points")))
        ours = _as_detections(*plain.detect(img, landmarks=True))
        worst = max(worst, assert_same_detections(theirs, ours, px=PX, score=SCORE, name=name).box_px)
        for m, det in (("0", plain), ("20", margin)):
            for kind, x in (("pil", img), ("tensor", torch.from_numpy(np.array(img)))):
                faces = det(x)
                want = facenet_itself[f"{k}/{m}/{kind}"]
                got = np.zeros((0, 3, 160, 160), np.float32) if faces is None else faces.numpy()
                assert got.shape == want.shape and np.array_equal(got, want), (name, f"margin {m}", kind)
                crops += len(got)
    print(f"\nvs facenet-pytorch itself: boxes at most {worst:.2e} px apart; {crops} crop tensors equal")
    assert crops == 4 * 50


# ------------------------------------------------------------------ selecting one face


def _selected_ref_index(ref: Detections, method: str, size: tuple[int, int], threshold: float = 0.9) -> int:
    b, p = ref.boxes.astype(np.float64), ref.scores.astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    if method == "probability":
        return int(np.argmax(p))
    if method == "largest":
        return int(np.argmax(area))
    if method == "largest_over_threshold":
        return int(np.argmax(np.where(p > threshold, area, -1)))
    centre = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1) - np.array(size) / 2
    return int(np.argmax(area - 2.0 * (centre ** 2).sum(1)))


@pytest.mark.parametrize("method", ["probability", "largest", "largest_over_threshold", "center_weighted_size"])
@pytest.mark.parametrize("name", [GROUP, "bob_multiple-faces.jpg", "insightface_t1.jpg"])
def test_selection_methods_pick_the_face_facenet_pytorch_picks(shared_data, method, name, torch):
    img = _pil(shared_data, name).convert("RGB")
    ref = _ref(name)
    k = _selected_ref_index(ref, method, img.size)
    face, prob = MTCNN(selection_method=method, margin=8)(img, return_prob=True)
    assert face.shape == (3, 160, 160) and type(prob) is float
    assert prob == pytest.approx(float(ref.scores[k]), abs=1e-4)
    assert np.array_equal(face.numpy(), _expected_crop(img, ref.boxes[k].astype(np.float64), 160, 8, True))


def test_largest_over_threshold_returns_the_picked_faces_probability_and_landmarks(shared_data, mtcnn_all):
    img = _pil(shared_data, GROUP).convert("RGB")
    boxes, _, points = mtcnn_all.detect(img, landmarks=True)  # largest first
    probs = np.array([0.85, 0.95, 0.99], dtype=object)  # the largest face under the threshold
    box, prob, point = mtcnn_all.select_boxes(boxes, probs, points, img, method="largest_over_threshold")
    # the second largest face, with its own probability and landmarks (facenet-pytorch 2.6.0 pairs
    # that box with the probability and landmarks of the largest face: a bug not reproduced)
    assert np.array_equal(box[0], boxes[1]) and prob == 0.95 and np.array_equal(point[0], points[1])
    none = mtcnn_all.select_boxes(boxes, probs, points, img, method="largest_over_threshold", threshold=0.999)
    assert none == (None, None, None)


# ------------------------------------------------------------------ device and dependencies


def test_device_maps_to_our_backends(torch):
    from fastmtcnn import MTCNN as Ours

    default = Ours().backend.name
    for device in (None, "cpu", torch.device("cpu")):
        assert MTCNN(device=device).detector.backend.name == default
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: the cuda -> torch backend mapping is not run here")
    assert MTCNN(device=torch.device("cuda")).detector.backend.name == "torch"


def test_detect_needs_neither_torch_nor_pil_and_crops_say_how_to_get_torch(shared_data):
    code = f"""
import sys
sys.modules["torch"] = None  # as if not installed
import numpy as np
from fastmtcnn import read_image
from fastmtcnn.compat.facenet_pytorch import MTCNN
m = MTCNN()
boxes, probs = m.detect(read_image({str(shared_data / PORTRAIT)!r}))
assert boxes.shape == (1, 4) and "PIL" not in sys.modules
try:
    m(read_image({str(shared_data / PORTRAIT)!r}))
except ModuleNotFoundError as e:
    print(e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install torch" in out.stdout
