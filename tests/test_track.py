"""Tracking mode: RNet/ONet around the previous faces, full detection every K frames or on loss."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fastmtcnn import MTCNN, read_image
from fastmtcnn.cli import main
from fastmtcnn.metrics import greedy_match, iou_matrix
from fastmtcnn.track import Tracker, candidate_boxes, refine_candidates
from video_clips import fit, write_clip


@pytest.fixture(scope="module")
def group(shared_data):
    """A real group photo (many faces) at 640x360."""
    return fit(read_image(shared_data / "bob_multiple-faces.jpg"), 640, 360)


def test_rnet_onet_tail_matches_the_full_cascade_given_its_own_candidates(detector, shared_data, monkeypatch):
    # the tracking path's RNet/ONet stages are the cascade's: fed PNet's candidates, it gives the same faces
    from fastmtcnn import pipeline

    seen = []
    real = pipeline.refine

    def spy(be, ii, b, f, size, *rest):
        if size == 24:
            seen.append(be.to_numpy(b).copy())
        return real(be, ii, b, f, size, *rest)

    img = read_image(shared_data / "bob_multiple-faces.jpg")
    monkeypatch.setattr(pipeline, "refine", spy)
    full = detector.detect(img)
    monkeypatch.setattr(pipeline, "refine", real)
    assert len(seen) == 1 and len(seen[0]) > len(full)
    again = refine_candidates(detector, img, seen[0])
    assert len(again) == len(full) == 18
    np.testing.assert_allclose(again.boxes, full.boxes, atol=1e-3)
    np.testing.assert_allclose(again.landmarks, full.landmarks, atol=1e-3)
    np.testing.assert_allclose(again.scores, full.scores, atol=1e-6)


def test_static_clip_tracks_the_same_faces_as_full_detection(detector, group, tmp_path):
    full = detector.detect(group)
    assert len(full) >= 15
    tracker = Tracker(detector, every=5)
    for _ in range(12):
        faces, _ = tracker.detect(group)
        pairs = greedy_match(full.boxes, faces.boxes, min_iou=0.7)
        assert len(pairs) == len(full) == len(faces)
        iou = iou_matrix(full.boxes, faces.boxes)
        assert min(iou[i, j] for i, j in pairs) > 0.8
    s = tracker.stats
    assert (s.full, s.tracked, s.redetect) == (3, 9, 0)  # frames 0, 5, 10 full; the rest tracked


def test_tracking_follows_a_moving_face(detector, shared_data):
    img = read_image(shared_data / "skimage_astronaut.png")
    tracker = Tracker(detector, every=100)
    for k in range(8):  # pan 6 px and zoom 2% per frame
        s = 1 + 0.02 * k
        frame = cv2.warpAffine(img, np.float32([[s, 0, -6 * k], [0, s, -3 * k]]), (512, 512))
        faces, tracked = tracker.detect(frame)
        ref = detector.detect(frame)
        assert tracked == (k > 0)
        assert len(faces) == len(ref) == 1
        assert iou_matrix(faces.boxes, ref.boxes)[0, 0] > 0.8
    assert tracker.stats.redetect == 0


def test_lost_face_triggers_full_detection_at_once(detector, shared_data):
    face = read_image(shared_data / "skimage_astronaut.png")
    empty = fit(read_image(shared_data / "skimage_coffee.png"), 512, 512)
    tracker = Tracker(detector, every=100)
    assert len(tracker.detect(face)[0]) == 1
    faces, tracked = tracker.detect(empty)
    assert (len(faces), tracked, tracker.stats.redetect) == (0, False, 1)
    # nothing left to track: the next frame is a full detection and finds the face again
    faces, tracked = tracker.detect(face)
    assert (len(faces), tracked) == (1, False)


def test_new_face_is_found_at_the_next_scheduled_full_detection(detector, shared_data):
    one = read_image(shared_data / "skimage_astronaut.png")
    two = np.concatenate([one, read_image(shared_data / "skimage_camera.png")], axis=1)
    one_wide = np.concatenate([one, np.zeros_like(one)], axis=1)
    tracker = Tracker(detector, every=3)
    counts = [len(tracker.detect(f)[0]) for f in [one_wide, two, two, two]]
    assert counts == [1, 1, 1, 2]  # frames 1-2 tracked (the new face unseen), frame 3 full


def test_candidate_boxes_are_squares_around_each_previous_face():
    prev = np.array([[10, 20, 50, 80], [100, 100, 120, 110]], np.float32)
    c = candidate_boxes(prev)
    assert c.shape == (12, 5)
    w, h = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
    np.testing.assert_allclose(w, h, rtol=1e-5)
    np.testing.assert_allclose(c[0, :4], [0, 20, 60, 80])  # the squared box itself comes first
    np.testing.assert_allclose(w[:6].max(), 60 * 1.25)
    assert candidate_boxes(np.zeros((0, 4))).shape == (0, 5)


def test_track_interval_must_be_positive(detector):
    with pytest.raises(ValueError, match="track interval"):
        Tracker(detector, every=0)


def test_video_track_mode_reports_modes_and_same_faces(shared_data, group, tmp_path, capsys):
    clip = write_clip(tmp_path / "static.avi", [group] * 10)
    js = tmp_path / "t.jsonl"
    assert main(["video", str(clip), "--track", "--track-every", "4", "--json", str(js), "-q"]) == 0
    recs = [json.loads(x) for x in open(js)]
    frames = [r for r in recs if "frame" in r]
    assert [r["mode"] for r in frames] == ["full", "track", "track", "track"] * 2 + ["full", "track"]
    n = len(MTCNN().detect(group))
    assert all(len(r["faces"]) == n for r in frames)
    assert "tracking: 3 full, 7 tracked, 0 re-detected" in capsys.readouterr().out


def test_tracking_runs_on_the_torch_backend_with_the_same_faces(detector, group):
    pytest.importorskip("torch")
    try:
        det = MTCNN(backend="torch", device="cpu")
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"torch backend not available: {e}")
    ours, theirs = Tracker(det, every=3), Tracker(detector, every=3)
    for _ in range(3):
        (a, ta), (b, tb) = ours.detect(group), theirs.detect(group)
        assert ta == tb and len(a) == len(b) >= 15
        assert len(greedy_match(a.boxes, b.boxes, min_iou=0.95)) == len(b)
