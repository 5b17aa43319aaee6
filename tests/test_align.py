"""Aligned face crops (5-point similarity to the 112x112 template) and margin crops."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fastmtcnn import read_image
from fastmtcnn.align import TEMPLATE_112, align_faces, margin_crops, similarity_transform, template
from fastmtcnn.cli import main


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2)).astype(np.float32)
    a = np.deg2rad(25)
    m = np.array([[1.7 * np.cos(a), -1.7 * np.sin(a), 12], [1.7 * np.sin(a), 1.7 * np.cos(a), -40]], np.float32)
    dst = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(similarity_transform(src, dst), m, atol=1e-3)


def test_similarity_transform_is_the_least_squares_fit_of_noisy_points():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    dst = TEMPLATE_112 + rng.normal(0, 2, (5, 2))
    # x' = a x - b y + tx, y' = b x + a y + ty, solved as a linear least-squares problem
    A = np.zeros((10, 4))
    A[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(5), np.zeros(5)]
    A[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(5), np.ones(5)]
    a, b, tx, ty = np.linalg.lstsq(A, dst.reshape(-1), rcond=None)[0]
    np.testing.assert_allclose(similarity_transform(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-3)


@pytest.mark.parametrize("name", ["skimage_astronaut.png", "matplotlib_grace_hopper.jpg", "bob_multiple-faces.jpg"])
def test_eyes_of_aligned_crops_land_on_the_template(detector, shared_data, name):
    img = read_image(shared_data / name)
    faces = detector.detect(img)
    crops, mats = align_faces(img, faces.landmarks, 112)
    assert crops.shape == (len(faces), 112, 112, 3) and crops.dtype == np.uint8
    eyes = template(112)[:2]
    again_err = []
    for lm, m, crop in zip(faces.landmarks, mats, crops):
        mapped = lm @ m[:, :2].T + m[:, 2]
        assert np.abs(mapped[:2] - eyes).max() < 3.0  # the fit puts the detected eyes on the template
        # and the crop really shows the eyes there: detect again on the crop (2x, well above minsize)
        again = detector.detect(cv2.resize(crop, (224, 224), interpolation=cv2.INTER_LINEAR))
        assert len(again) >= 1
        again_err.append(np.abs(again.landmarks[np.argmax(again.scores)][:2] / 2 - eyes).max())
    assert np.median(again_err) < 5.0 and max(again_err) < 8.0  # MTCNN's own landmark noise is a few px


def test_aligned_crop_size_is_configurable_and_template_scales(detector, shared_data):
    img = read_image(shared_data / "skimage_astronaut.png")
    faces = detector.detect(img)
    crops, mats = align_faces(img, faces.landmarks, 224)
    assert crops.shape == (1, 224, 224, 3)
    mapped = faces.landmarks[0] @ mats[0][:, :2].T + mats[0][:, 2]
    np.testing.assert_allclose(template(224), TEMPLATE_112 * 2)
    assert np.abs(mapped[:2] - template(224)[:2]).max() < 2 * 3.0  # eyes, at twice the scale


def test_margin_crop_is_a_square_around_the_face_padded_outside_the_image(shared_data):
    img = read_image(shared_data / "skimage_astronaut.png")
    box = np.array([[-20, 100, 60, 180]], np.float32)  # hangs over the left edge
    crop = margin_crops(img, box, size=100, margin=0.25)[0]
    assert crop.shape == (100, 100, 3)
    # side 100 px around the centre (20, 140): x from -30, so the left 30% is black padding
    assert crop[:, :28].max() == 0 and crop[:, 32:].mean() > 20
    inside = margin_crops(img, np.array([[200, 100, 300, 200]], np.float32), size=100, margin=0.0)[0]
    np.testing.assert_array_equal(inside, img[100:200, 200:300])


def test_align_command_writes_one_crop_per_face_and_an_index(shared_data, tmp_path):
    out = tmp_path / "crops"
    paths = [str(shared_data / "bob_multiple-faces.jpg"), str(shared_data / "skimage_coffee.png"),
             str(tmp_path / "missing.jpg")]
    rc = main(["align", *paths, "--out", str(out), "--size", "96", "--margin-size", "80", "-q"])
    assert rc == 1  # one input failed, the others were still done
    index = json.loads((out / "index.json").read_text())
    recs = {r["path"]: r for r in index["images"]}
    assert list(recs) == paths
    assert "no such file" in recs[paths[2]]["error"]
    assert recs[paths[1]]["faces"] == []
    faces = recs[paths[0]]["faces"]
    assert len(faces) == 18
    assert index["aligned_size"] == 96 and np.allclose(index["template"], template(96), atol=1e-3)
    for f in faces:
        a = cv2.imread(str(out / f["aligned"]))
        m = cv2.imread(str(out / f["margin"]))
        assert a.shape == (96, 96, 3) and m.shape == (80, 80, 3)
        mapped = np.array(f["landmarks"]) @ np.array(f["transform"])[:, :2].T + np.array(f["transform"])[:, 2]
        assert np.abs(mapped[:2] - template(96)[:2]).max() < 8
    assert len(list((out / "aligned").iterdir())) == len(list((out / "margin").iterdir())) == 18


def test_align_command_only_aligned_crops_and_bad_size(shared_data, tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["align", str(shared_data / "skimage_astronaut.png"), "--out", str(out), "--crops", "aligned"]) == 0
    assert [p.name for p in (out / "aligned").iterdir()] == ["skimage_astronaut_0.png"]
    assert not (out / "margin").exists()
    assert main(["align", str(shared_data / "skimage_astronaut.png"), "--out", str(out), "--size", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--size" in err[0]
