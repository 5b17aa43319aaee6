"""fastmtcnn.compat.mtcnn.MTCNN: the `mtcnn` package's (v1) detect_faces, on our detector.

Why: mtcnn users change one import and keep their code. The output must have
mtcnn's documented layout and types ({"box": [x, y, w, h] ints, "confidence",
"keypoints": {...}}, best first, boxes clipped to the image), its knobs must
reach our cascade, and the faces must be the reference MTCNN's
(../shared/data/ref) at mtcnn's default ONet threshold of 0.8.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_reference, reference_names
from fastmtcnn import MTCNN as Ours
from fastmtcnn import Detections, read_image
from fastmtcnn.compat.mtcnn import MTCNN
from fastmtcnn.metrics import greedy_match
from test_faithfulness import MIN_IOU

KEYPOINTS = {"left_eye": 0, "right_eye": 1, "nose": 2, "mouth_left": 3, "mouth_right": 4}
GROUP = "dlib_2008_001322.jpg"
PORTRAIT = "matplotlib_grace_hopper.jpg"
NO_FACE = "skimage_coffee.png"


@pytest.fixture(scope="module")
def mt():
    return MTCNN()


def _xyxy(faces: list[dict]) -> np.ndarray:
    b = np.array([f["box"] for f in faces], np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def test_faces_have_mtcnns_layout_and_types(shared_data, mt):
    faces = mt.detect_faces(read_image(shared_data / GROUP))
    assert isinstance(faces, list) and len(faces) == 3
    for f in faces:
        assert list(f) == ["box", "confidence", "keypoints"]
        assert len(f["box"]) == 4 and all(type(v) is int for v in f["box"])
        assert isinstance(f["confidence"], np.float64) and 0.8 < f["confidence"] <= 1
        assert list(f["keypoints"]) == ["nose", "mouth_right", "right_eye", "left_eye", "mouth_left"]
        assert all(len(p) == 2 and all(isinstance(v, np.integer) for v in p) for p in f["keypoints"].values())
    conf = [f["confidence"] for f in faces]
    assert conf == sorted(conf, reverse=True)  # best first, as mtcnn sorts


def test_boxes_and_keypoints_are_the_reference_faces_on_every_photo(shared_data, mt):
    n_ref = n_pairs = 0
    for name in reference_names():
        img = read_image(shared_data / name)
        ref = Detections.from_list(load_reference(name))
        ref = ref[ref.scores > 0.8]  # mtcnn's default ONet threshold
        h, w = img.shape[:2]
        ref_boxes = np.clip(ref.boxes, 0, [w - 1, h - 1, w - 1, h - 1])  # fit_to_image
        faces = mt.detect_faces(img)
        pairs = greedy_match(ref_boxes, _xyxy(faces), MIN_IOU)
        assert len(faces) == len(ref), name
        n_ref, n_pairs = n_ref + len(ref), n_pairs + len(pairs)
        for i, j in pairs:
            assert np.abs(_xyxy([faces[j]])[0] - ref_boxes[i]).max() <= 1.0  # rounded to whole pixels
            for key, k in KEYPOINTS.items():
                assert np.abs(np.array(faces[j]["keypoints"][key]) - ref.landmarks[i, k]).max() <= 0.51, (name, key)
    assert n_ref >= 40 and n_pairs == n_ref


def test_paths_bytes_and_lists_are_taken_as_mtcnn_takes_them(shared_data, mt):
    path = shared_data / PORTRAIT
    want = mt.detect_faces(read_image(path))
    assert mt.detect_faces(str(path)) == want
    assert mt.detect_faces(path.read_bytes()) == want
    batch = mt.detect_faces([str(path), read_image(shared_data / NO_FACE)])
    assert batch == [want, []]  # a list in, one list per image out
    assert mt.detect_faces(read_image(shared_data / NO_FACE)) == []
    assert mt.predict(str(path)) == want


def test_numpy_output_rows_and_box_formats(shared_data, mt):
    img = read_image(shared_data / GROUP)
    faces = mt.detect_faces(img)
    rows = mt.detect_faces(img, output_type="numpy", box_format="xyxy")
    assert rows.shape == (3, 16) and rows.dtype == np.float64 and (rows[:, 0] == 0).all()
    assert np.array_equal(np.round(rows[:, 1:3]).astype(int), [f["box"][:2] for f in faces])
    assert np.allclose(rows[:, 5], [f["confidence"] for f in faces])
    xywh = mt.detect_faces(img, output_type="numpy")
    assert np.allclose(xywh[:, 3:5], rows[:, 3:5] - rows[:, 1:3])
    xyxy = mt.detect_faces(img, box_format="xyxy")
    assert [f["box"][2:] for f in xyxy] == [list(np.round(r[3:5]).astype(int)) for r in rows]
    two = mt.detect_faces([img, img], output_type="numpy")
    assert two.shape == (6, 16) and list(two[:, 0]) == [0, 0, 0, 1, 1, 1]


def test_fit_to_image_clips_boxes_and_landmarks_like_mtcnn(shared_data, mt):
    cut = read_image(shared_data / PORTRAIT)[:, 200:]  # the face runs off the left edge
    raw = Ours(thresholds=(0.6, 0.7, 0.8)).detect(cut)
    assert len(raw) == 1 and raw.boxes[0, 0] < 0
    fitted = mt.detect_faces(cut, output_type="numpy", box_format="xyxy")
    assert fitted[0, 1] == 0 and fitted[0, 3] == pytest.approx(raw.boxes[0, 2], abs=1e-3)
    loose = mt.detect_faces(cut, postprocess=False, output_type="numpy", box_format="xyxy")
    assert loose[0, 1] == pytest.approx(raw.boxes[0, 0], abs=1e-3)
    assert mt.detect_faces(cut, fit_to_image=False, output_type="numpy")[0, 1] < 0
    limited = mt.detect_faces(cut, limit_boundaries_landmarks=True, output_type="numpy")
    assert (limited[:, 6:11] >= 0).all() and (limited[:, 6:11] <= cut.shape[1] - 1).all()


def test_knobs_map_to_our_settings(shared_data, mt):
    img = read_image(shared_data / "insightface_t1.jpg")

    def boxes(faces):
        return _xyxy(faces)

    def ours(**kw):
        d = Ours(**kw).detect(img)
        d = d[np.argsort(-d.scores, kind="stable")]
        return np.round(np.clip(d.boxes, 0, [img.shape[1] - 1, img.shape[0] - 1] * 2))

    assert np.allclose(boxes(mt.detect_faces(img)), ours(thresholds=(0.6, 0.7, 0.8)), atol=1)
    got = mt.detect_faces(img, min_face_size=40, scale_factor=0.6, threshold_pnet=0.7, threshold_rnet=0.6,
                          threshold_onet=0.9)
    assert np.allclose(boxes(got), ours(minsize=40, factor=0.6, thresholds=(0.7, 0.6, 0.9)), atol=1)
    # min_size: mtcnn's smallest pyramid window; 24 with min_face_size 40 looks for faces of 20 px and up
    assert np.allclose(boxes(mt.detect_faces(img, min_face_size=40, min_size=24)), ours(thresholds=(0.6, 0.7, 0.8)),
                       atol=1)


def test_unsupported_arguments_are_clear_errors(shared_data, mt):
    img = read_image(shared_data / PORTRAIT)
    with pytest.raises(TypeError, match="threshold_onett"):
        mt.detect_faces(img, threshold_onett=0.9)  # a typo is not silently ignored
    with pytest.raises(ValueError, match="nms_onet"):
        mt.detect_faces(img, nms_onet=0.5)
    assert mt.detect_faces(img, nms_onet=0.7, nms_pnet1=0.5) == mt.detect_faces(img)  # the fixed values are fine
    with pytest.raises(ValueError, match="box_format"):
        mt.detect_faces(img, box_format="cxcywh")
    with pytest.raises(ValueError, match="stages"):
        MTCNN(stages=["StagePNet"])
    with pytest.raises(ValueError, match="device"):
        MTCNN(device="TPU:0")


def test_face_detection_only_gives_boxes_without_keypoints(shared_data, mt):
    img = read_image(shared_data / GROUP)
    faces = MTCNN(stages="face_detection_only").detect_faces(img)
    assert [f["box"] for f in faces] == [f["box"] for f in mt.detect_faces(img)]
    assert all("keypoints" not in f for f in faces)


def test_devices_map_to_our_backends():
    assert MTCNN()._detector.backend.name == MTCNN(device="cpu:0")._detector.backend.name == Ours().backend.name
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: the GPU:0 -> torch backend mapping is not run here")
    assert MTCNN(device="GPU:0")._detector.backend.name == "torch"
