"""Faithfulness: the reference MTCNN's detections, on every real photo, by every engine.

Why: "faithful" is the project's promise (README, DESIGN.md). The reference is
facenet-pytorch 2.6.0 `MTCNN(keep_all=True)` with its defaults; its outputs for
every photo in ../shared/data are stored in ref/. Each engine is held to it on
its own, as README states it:

- both CPU engines, ONNX Runtime and OpenVINO (the default), and the torch
  backend on CUDA in float32 (eager, and replaying CUDA graphs): the same faces
  on each photo, the same number, boxes and landmarks within PX pixels, scores
  within SCORE;
- fp16 on CUDA (the GPU default): every reference face paired at IoU >= 0.7 and
  no other face, landmarks at most FP16_LANDMARKS_MEAN of the box side apart on
  average and FP16_LANDMARKS_MAX for any face (README, docs/gpu.md).

The per-image differences are printed (pytest -s). GPU tests skip without CUDA.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import load_reference, reference_names
from fastmtcnn import MTCNN, Detections, read_image
from fastmtcnn.metrics import greedy_match, iou_matrix
from same_faces import assert_same_detections, difference

# Measured on the 14 photos (2-core Xeon, ONNX Runtime 1.32): boxes and landmarks at most 1.22e-4 px
# apart (one float32 step at ~1000 px), scores at most 2.4e-7. The bounds leave room for another CPU's
# rounding, and none for a real change: the image shifted by one pixel, or factor 0.71 for 0.709,
# moves some box by 9-11 px and changes the face count of some photo (measured the same way).
PX = 1e-2
SCORE = 1e-4
MIN_IOU = 0.7
CPU_ENGINES = ("onnxruntime", "openvino")
# fp16 landmarks vs the reference, as a fraction of the box side: README and docs/gpu.md say 0.28% on
# average and 1.9% at most (H200, tiled cascade); held at those figures as printed (to their last digit, rounded)
FP16_LANDMARKS_MEAN = 0.00285
FP16_LANDMARKS_MAX = 0.0195


def reference(name: str) -> Detections:
    return Detections.from_list(load_reference(name))


@pytest.fixture(scope="module")
def photos(shared_data) -> dict[str, np.ndarray]:
    return {name: read_image(shared_data / name) for name in reference_names()}


@pytest.fixture(scope="module")
def detections(photos, detector) -> dict[str, Detections]:
    """The default detector's faces on every reference photo, computed once for the module."""
    return {name: detector.detect(img) for name, img in photos.items()}


@pytest.fixture(scope="module", params=CPU_ENGINES)
def engine_detections(request, photos) -> tuple[str, dict[str, Detections]]:
    """(engine, its faces on every reference photo): each CPU engine named explicitly."""
    pytest.importorskip(request.param)
    det = MTCNN(backend=request.param)
    assert det.backend.name == request.param
    return request.param, {name: det.detect(img) for name, img in photos.items()}


@pytest.mark.parametrize("name", reference_names())
def test_each_cpu_engine_gives_the_reference_detections(engine_detections, name):
    engine, dets = engine_detections
    assert_same_detections(reference(name), dets[name], px=PX, score=SCORE, name=f"{engine} {name}")


def test_the_reference_set_holds_the_faces_it_should(engine_detections):
    """A guard on the data the test above reads: ~50 faces in 14 photos, and a printed table of differences."""
    engine, dets = engine_detections
    print(f"\n{engine} vs facenet-pytorch 2.6.0 MTCNN: largest differences per photo\n"
          f"{'image':30s} {'ref':>4s} {'ours':>4s} {'paired':>6s} {'box px':>9s} {'lm px':>9s} {'score':>9s}")
    diffs = {name: difference(reference(name), dets[name]) for name in reference_names()}
    for name, d in diffs.items():
        print(f"{name:30s} {d.n_expected:4d} {d.n_actual:4d} {d.n_paired:6d} {d.box_px:9.2e} "
              f"{d.landmark_px:9.2e} {d.score:9.2e}")
    assert len(diffs) == 14
    assert sum(d.n_expected for d in diffs.values()) == 50


def test_the_default_detector_is_one_of_the_engines_held_to_the_reference(detector):
    assert detector.backend.name in CPU_ENGINES


def test_no_face_photos_give_no_detections(detections):
    # the reference finds nothing on these (coffee cup, dogs): neither may we
    for name in ("skimage_coffee.png", "dlib_dogs.jpg"):
        assert load_reference(name) == []
        assert len(detections[name]) == 0, name


def test_reference_false_positives_are_reproduced(detections):
    # insightface_t1.jpg: the reference also "finds" a hand and a table object; faithful means we do too
    ref = Detections.from_list(load_reference("insightface_t1.jpg"))
    ours = detections["insightface_t1.jpg"]
    assert len(ours) == len(ref) == 8
    assert len(greedy_match(ref.boxes, ours.boxes, MIN_IOU)) == len(ref)


def test_grayscale_photos_are_detected_like_the_reference(detections):
    # both files decode as single-channel images: conversion to RGB must not lose the face
    for name in ("skimage_camera.png", "opencv_basketball1.png"):
        ref = Detections.from_list(load_reference(name))
        pairs = greedy_match(ref.boxes, detections[name].boxes, MIN_IOU)
        assert len(pairs) == len(ref) >= 1, name


def test_hand_labelled_faces_are_found_as_often_as_by_the_reference(shared_data, detections):
    """gt.json: 18 hand-labelled faces; the reference finds 17 (it misses a blurred 37 px face)."""
    gt = json.loads((shared_data / "gt.json").read_text())
    found = total = 0
    for name, boxes in gt.items():
        boxes = np.asarray(boxes, np.float64)
        ours = detections[name].boxes.astype(np.float64)
        total += len(boxes)
        if not len(ours):
            continue
        # tight brow-to-chin boxes: pair at IoU >= 0.3 or when our box centre lies inside the labelled box
        iou = iou_matrix(boxes, ours)
        cx, cy = (ours[:, 0] + ours[:, 2]) / 2, (ours[:, 1] + ours[:, 3]) / 2
        inside = ((cx[None] >= boxes[:, :1]) & (cx[None] <= boxes[:, 2:3])
                  & (cy[None] >= boxes[:, 1:2]) & (cy[None] <= boxes[:, 3:4]))
        found += int(((iou >= 0.3) | inside).any(axis=1).sum())
    assert total == 18
    assert found >= 17, f"found {found} of {total} hand-labelled faces (the reference finds 17)"


# --------------------------------------------------------------------------- GPU


def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_gpu_fp32_gives_the_reference_detections(photos, graphs):
    """README: `--fp32` gives the CPU engines' numbers, so the reference's at PX / SCORE, with CUDA graphs
    too. With graphs every photo is detected until a graph replay gave its result (a first call whose
    replay overflowed the graph's slots is redone exactly by the shared pipeline, and the next capture
    has more room), and every call's faces are checked."""
    _cuda()
    det = MTCNN(backend="torch", device="cuda", fp16=False, graphs=graphs)
    stats = det.backend.graph_stats
    for name, img in photos.items():
        replays = stats["replays"]
        for call in range(4 if graphs else 1):
            assert_same_detections(reference(name), det.detect(img), px=PX, score=SCORE, name=f"{name} call {call}")
            if stats["replays"] > replays:
                break
        if graphs:
            assert stats["replays"] > replays, f"{name}: no graph replay gave its faces ({stats})"
    print(f"\nfp32 graphs={graphs}: {stats}")
    # graphs are made per capacity bucket, not per photo size: a few serve every photo
    assert 1 <= stats["captures"] <= len(photos) if graphs else stats["captures"] == stats["replays"] == 0


@pytest.mark.gpu
@pytest.mark.parametrize("graphs", ["auto", True], ids=["default", "graphs"])
def test_gpu_fp16_finds_every_reference_face_and_nothing_else(photos, graphs):
    """The GPU default (fp16) by README's claim: every reference face paired at IoU >= 0.7 and no other
    face on any photo; matched landmarks at most FP16_LANDMARKS_MEAN / MAX of the box side apart."""
    _cuda()
    det = MTCNN(backend="torch", device="cuda", graphs=graphs)
    assert det.backend.fp16, "fp16 is the CUDA default"
    errs = []
    for name, img in photos.items():
        ref, ours = reference(name), det.detect(img)
        pairs = greedy_match(ref.boxes, ours.boxes, MIN_IOU)
        assert len(pairs) == len(ref) == len(ours), f"{name}: {len(ref)} reference faces, {len(ours)} found, " \
                                                    f"{len(pairs)} paired at IoU >= {MIN_IOU}"
        for i, j in pairs:
            side = float(ref.boxes[i, 2] - ref.boxes[i, 0])
            errs.append(float(np.abs(ref.landmarks[i] - ours.landmarks[j]).mean()) / side)
    print(f"\nfp16 graphs={graphs}: landmarks mean {np.mean(errs):.5f}, max {np.max(errs):.5f} of the box side")
    assert len(errs) == 50
    assert np.mean(errs) <= FP16_LANDMARKS_MEAN and np.max(errs) <= FP16_LANDMARKS_MAX, (np.mean(errs), np.max(errs))
