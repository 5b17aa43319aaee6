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
from fastmtcnn.backends import cpu_default

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


# ------------------------------------------------------------------ device= and which backend


def _torch_without_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_device_alone_asks_for_the_gpu(device):
    """device="cuda" means the GPU: it selects the torch backend, whose own reason comes back here
    (no GPU), not a complaint that backend="torch" was not named."""
    _torch_without_cuda()
    with pytest.raises(RuntimeError, match="torch sees no CUDA GPU"):
        MTCNN(device=device)


@pytest.mark.gpu
def test_a_cuda_device_alone_runs_the_torch_backend_on_the_gpu(shared_data):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    det = MTCNN(device="cuda")
    assert det.backend.name == "torch" and det.backend.device.type == "cuda"
    assert det.config.max_batch == (8192, 4096)  # the GPU's batches, as with backend="torch"
    assert len(det.detect(shared_data / "matplotlib_grace_hopper.jpg")) == 1


def test_device_cpu_keeps_the_cpu_default_and_torch_on_the_cpu_is_named(shared_data, detector):
    """A user writing device="cpu" wants the CPU: the fast default engine, unless torch is named."""
    photo = shared_data / "matplotlib_grace_hopper.jpg"
    cpu = MTCNN(device="cpu")
    assert cpu.backend.name == detector.backend.name == cpu_default()
    assert cpu.detect(photo).to_list() == detector.detect(photo).to_list()
    assert MTCNN(backend="onnxruntime", device="cpu").backend.name == "onnxruntime"
    pytest.importorskip("torch")
    torch_cpu = MTCNN(device="cpu", backend="torch")
    assert torch_cpu.backend.name == "torch" and torch_cpu.backend.device.type == "cpu"
    faces, want = torch_cpu.detect(photo), detector.detect(photo)
    assert len(faces) == len(want) == 1
    np.testing.assert_allclose(faces.boxes, want.boxes, atol=0.05)


@pytest.mark.parametrize("options, words", [
    (dict(device="cuda", backend="openvino"), "device='cuda' runs on the torch backend, not on openvino"),
    (dict(device="cuda:1", backend="onnxruntime"), "providers=['CUDAExecutionProvider']"),
    (dict(device="cuda", providers=["CUDAExecutionProvider"]), "device= and providers= both given"),
    (dict(device="cpu", providers=["CPUExecutionProvider"]), "device= and providers= both given"),
    (dict(fp16=True), f"fp16= is an option of the torch backend (device='cuda'), not of {cpu_default()}"),
    (dict(graphs=True, pinned=True, backend="onnxruntime"), "graphs= and pinned= are options of the torch backend"),
    (dict(backend="torch", fp16=True), "fp16= needs a CUDA device (device='cuda'), got device='cpu'"),
    (dict(backend="torch", device="cpu", graphs=True), "graphs= needs a CUDA device"),
    (dict(backend="torch", providers=["CPUExecutionProvider"]), "providers= is for the onnxruntime backend"),
    (dict(threads=0), "threads must be >= 1"),
])
def test_options_that_contradict_each_other_are_one_line_value_errors(options, words):
    """Checked before any engine loads (so without torch too), in the API's own argument names."""
    with pytest.raises(ValueError) as e:
        MTCNN(**options)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and "--" not in msg


def test_options_that_ask_for_nothing_are_accepted_by_every_backend():
    # fp16=False is what the CPU engines do anyway; graphs "auto"/False: no graphs where there are none
    assert MTCNN(fp16=False, graphs=False).backend.name == cpu_default()
    assert MTCNN(backend="onnxruntime", graphs="auto").backend.name == "onnxruntime"
