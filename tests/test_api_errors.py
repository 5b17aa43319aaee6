"""The API never loses a batch to one bad input, and says clearly what is wrong.

Why: a collection with one corrupt file must still give every other file's
faces (errors="keep"); a single path handed to detect_batch must not be
walked character by character; a missing optional package or execution
provider must say how to get it instead of failing obscurely or silently
running elsewhere.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fastmtcnn import MTCNN, Detections, ImageError, read_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bad_files(tmp_path) -> dict[str, Path]:
    files = {"missing": tmp_path / "missing.jpg", "empty": tmp_path / "empty.jpg", "text": tmp_path / "notes.png"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("not an image")
    return files


def test_keep_returns_one_entry_per_input_with_errors_in_place(shared_data, detector, bad_files):
    good = [shared_data / "matplotlib_grace_hopper.jpg", read_image(shared_data / "dlib_2008_001322.jpg")]
    inputs = [good[0], bad_files["missing"], bad_files["empty"], good[1], bad_files["text"]]
    out = detector.detect_batch(inputs, errors="keep")
    assert len(out) == len(inputs)
    for i, path in ((1, "missing"), (2, "empty"), (4, "text")):
        assert isinstance(out[i], ImageError) and str(bad_files[path]) in str(out[i])
    for i, image in ((0, good[0]), (3, good[1])):
        assert isinstance(out[i], Detections) and out[i].to_list() == detector.detect(image).to_list()
        assert len(out[i]) >= 1


def test_raise_stays_the_default(detector, bad_files, shared_data):
    with pytest.raises(ImageError, match="no such file"):
        detector.detect_batch([shared_data / "matplotlib_grace_hopper.jpg", bad_files["missing"]])
    with pytest.raises(ValueError, match="errors must be 'raise' or 'keep'"):
        detector.detect_batch([], errors="skip")


@pytest.mark.parametrize("single", ["photo.jpg", Path("photo.jpg"), b"photo.jpg"])
def test_a_single_path_is_a_type_error_not_a_walk_over_its_characters(detector, single):
    with pytest.raises(TypeError, match=r"list of images or paths.*detect_batch\(\[x\]\)"):
        detector.detect_batch(single)


def test_a_single_image_array_is_a_type_error(detector, shared_data):
    with pytest.raises(TypeError, match="single image"):
        detector.detect_batch(read_image(shared_data / "matplotlib_grace_hopper.jpg"))
    stack = np.zeros((2, 64, 64, 3), np.uint8)  # a real batch still runs
    assert [len(d) for d in detector.detect_batch(stack)] == [0, 0]


def test_to_supervision_without_supervision_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'fastmtcnn\[supervision\]'"):
        Detections.empty().to_supervision()
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("supervision") for req in extras["supervision"])


def test_unavailable_execution_provider_is_an_error_not_a_cpu_fallback():
    with pytest.raises(ValueError, match="NoSuchExecutionProvider is not available.*CPUExecutionProvider"):
        MTCNN(providers=["NoSuchExecutionProvider"])
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ValueError, match="onnxruntime-gpu"):
            MTCNN(providers=["CUDAExecutionProvider"])
    assert MTCNN(providers=["CPUExecutionProvider"]).backend.providers == ["CPUExecutionProvider"]
