"""The backend hook contract of `pipeline.submit_images`: a backend may answer some images and leave the rest.

Why: the torch backend's fixed-shape mode answers a chunk of images only when
its capacities were enough; an image it leaves (None) must still get the exact
shared cascade's result, never a gap or a shifted order.
"""
from __future__ import annotations

import numpy as np

from fastmtcnn import MTCNN, read_image
from fastmtcnn.pipeline import detect_images


class PartialBackend:
    """The ONNX Runtime backend plus a `submit_images` hook that answers odd images with a marker."""

    MARK = (np.full((1, 5), -7.0, np.float32), np.zeros((1, 5, 2), np.float32))

    def __init__(self, inner):
        self.inner = inner
        self.seen = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def submit_images(self, images, cfg, timer=None):
        self.seen.append(len(images))
        out = [self.MARK if i % 2 else None for i in range(len(images))]
        return lambda: out


def test_images_a_backend_leaves_get_the_shared_cascade_in_order(shared_data):
    det = MTCNN()
    names = ["bob_multiple-faces.jpg", "yolov5_zidane.jpg", "insightface_t1.jpg", "dlib_2007_007763.jpg"]
    import cv2

    images = [cv2.resize(read_image(shared_data / n), (480 + 40 * i, 360)) for i, n in enumerate(names)]
    want = detect_images(det.backend, images, det.config)
    be = PartialBackend(det.backend)
    got = detect_images(be, images, det.config)
    assert be.seen == [4]
    for i, ((wb, wl), (gb, gl)) in enumerate(zip(want, got)):
        if i % 2:
            assert gb is PartialBackend.MARK[0]
        else:
            np.testing.assert_array_equal(gb, wb)
            np.testing.assert_array_equal(gl, wl)
    assert sum(len(b) for b, _ in want[::2]) >= 5
