"""Photos in flight at once (`overlap.overlapped`): same results, input order, errors kept with their photo.

Why: `detect` over a folder and `detect_batch` run two photos side by side on
the CPU backends so the cores never wait on one photo's single-threaded
stages. That must change nothing a user sees: each photo's faces are the ones
it gets alone, in the order given, and a bad photo is reported where it is.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import DEADLOCK_S, reference_names
from fastmtcnn import ImageError, MTCNN, read_image
from fastmtcnn.overlap import overlapped


def test_results_come_back_in_input_order_whatever_finishes_first():
    """Each even item waits until the odd item after it has finished: the later item finishes first (so
    two workers really run side by side), yet results come back in input order."""
    finished: list[int] = []
    done = {i: threading.Event() for i in range(8)}

    def f(i):
        if i % 2 == 0:
            assert done[i + 1].wait(DEADLOCK_S), f"item {i + 1} never ran while item {i} waited: one worker?"
        finished.append(i)
        done[i].set()
        return i * 10

    out = list(overlapped(f, range(8), workers=2))
    assert out == [(i, i * 10) for i in range(8)]
    assert [finished.index(i + 1) < finished.index(i) for i in range(0, 8, 2)] == [True] * 4


def test_an_exception_stays_with_its_item_and_the_others_still_run():
    def f(i):
        if i == 2:
            raise ValueError("bad 2")
        return i

    out = list(overlapped(f, range(5), workers=2))
    assert [i for i, _ in out] == [0, 1, 2, 3, 4]
    assert isinstance(out[2][1], ValueError) and str(out[2][1]) == "bad 2"
    assert [r for i, r in out if i != 2] == [0, 1, 3, 4]
    assert list(overlapped(f, range(3), workers=1))[1] == (1, 1)


def test_at_most_ahead_items_are_taken_before_the_oldest_is_handed_back():
    """Memory stays bounded: the input is read `ahead` items at a time, not all at once. Counted at the
    input (items taken from it), so nothing depends on how fast the workers run."""
    taken: list[int] = []

    def items():
        for i in range(10):
            taken.append(i)
            yield i

    it = overlapped(lambda i: i, items(), workers=2, ahead=3)
    assert taken == []  # a generator: nothing is read before the first result is asked for
    for k in range(10):
        assert next(it) == (k, k)
        assert len(taken) == min(10, 3 + k), f"after result {k}: {len(taken)} items taken"
    assert next(it, None) is None


def test_detect_batch_gives_each_photo_its_own_faces_in_order(shared_data):
    names = reference_names()[:8]
    paths = [str(shared_data / n) for n in names]
    det = MTCNN()
    alone = [det.detect(p) for p in paths]
    together = det.detect_batch(paths + paths[::-1])
    for a, b in zip(alone + alone[::-1], together):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
    frames = np.stack([read_image(shared_data / "yolov5_zidane.jpg")] * 3)
    one = det.detect(frames[0])
    for r in det.detect_batch(frames):
        np.testing.assert_array_equal(r.boxes, one.boxes)


def test_detect_batch_raises_the_first_bad_input(shared_data, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="bad.jpg"):
        MTCNN().detect_batch([str(shared_data / "skimage_astronaut.png"), str(bad)])


def test_submit_gives_detect_batchs_faces_and_raises_a_bad_input_at_once(shared_data, tmp_path):
    """`MTCNN.submit` is `detect_batch` in two steps (queue now, wait later): same inputs (paths, arrays,
    an (N, H, W, 3) array), same faces in order; a bad input raises when it is submitted, not later."""
    paths = [str(shared_data / n) for n in reference_names()[:4]]
    det = MTCNN()
    want = det.detect_batch(paths)
    wait = det.submit(paths[:2] + [read_image(p) for p in paths[2:]])
    for a, b in zip(want, wait()):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
    frames = np.stack([read_image(shared_data / "yolov5_zidane.jpg")] * 2)
    assert [len(r) for r in det.submit(frames)()] == [len(det.detect(frames[0]))] * 2
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="bad.jpg"):
        det.submit([paths[0], str(bad)])
