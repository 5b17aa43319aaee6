"""EXIF orientation: ignored by default (as the reference), applied with exif=True / --exif.

Why: phones store photos sideways with an orientation tag. The reference
(facenet-pytorch on the decoded pixels) ignores the tag, so the faithful
default must too; a user who wants boxes in the upright photo asks for it.
The photo here is a real JPEG of ../shared/data given an orientation tag.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from fastmtcnn import MTCNN, read_image
from fastmtcnn.cli import main

PIL = pytest.importorskip("PIL.Image", reason="Pillow writes the EXIF tag (it comes with matplotlib in [test])")

# EXIF orientation 6: the stored pixels must be turned 90 degrees clockwise to stand upright
ROTATE_CW = 6


@pytest.fixture(scope="module")
def sideways(shared_data, tmp_path_factory):
    """(path of a JPEG tagged 'turn 90 degrees clockwise', its stored pixels as decoded without the tag)."""
    src = PIL.open(shared_data / "facerec_biden.jpg")
    exif = PIL.Exif()
    exif[0x0112] = ROTATE_CW
    path = tmp_path_factory.mktemp("exif") / "sideways.jpg"
    src.transpose(PIL.Transpose.ROTATE_90).save(path, exif=exif.tobytes(), quality=95)  # stored lying down
    return path, read_image(path)


def test_default_ignores_the_orientation_tag_like_the_reference(sideways, detector):
    path, stored = sideways
    assert stored.shape[:2] == (970, 2204), "stored sideways"
    a, b = detector.detect(str(path)), detector.detect(stored)
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_exif_true_turns_the_photo_upright_first(sideways, detector):
    path, stored = sideways
    upright = read_image(path, exif=True)
    np.testing.assert_array_equal(upright, np.rot90(stored, -1))
    det = MTCNN(exif=True)
    got = det.detect(str(path))
    want = detector.detect(np.ascontiguousarray(upright))
    assert len(got) == len(want) >= 1
    np.testing.assert_array_equal(got.boxes, want.boxes)
    # the face found upright is the one found sideways, turned: its eyes are now above its mouth
    lm = got.landmarks[np.argmax(got.scores)]
    assert lm[:2, 1].max() < lm[3:, 1].min()
    # arrays are taken as given: exif only concerns files
    np.testing.assert_array_equal(det.detect(stored).boxes, detector.detect(stored).boxes)


def test_cli_exif_flag_reports_the_upright_size_and_faces(sideways, tmp_path, detector):
    path, stored = sideways
    out = tmp_path / "f.jsonl"
    assert main(["detect", str(path), "--json", str(out), "--exif"]) == 0
    rec = json.loads(out.read_text())
    assert (rec["width"], rec["height"]) == (970, 2204)
    assert rec["faces"] == detector.detect(np.ascontiguousarray(np.rot90(stored, -1))).to_list()
    assert main(["detect", str(path), "--json", str(out)]) == 0
    assert (json.loads(out.read_text())["width"]) == 2204
