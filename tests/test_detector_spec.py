"""DetectorSpec: the detector as data for worker processes and Ray actors builds what MTCNN builds."""
from __future__ import annotations

import pickle

import pytest

from fastmtcnn import MTCNN, PRESETS
from fastmtcnn.backends import cpu_default
from fastmtcnn.cli import build_parser, detector_spec
from fastmtcnn.detector_spec import DetectorSpec


def test_spec_builds_the_detector_mtcnn_builds_from_the_same_arguments():
    kwargs = dict(minsize=30, thresholds=(0.5, 0.6, 0.7), packed=False, preset="jetson", threads=1)
    spec = DetectorSpec(preset="jetson", minsize=30, thresholds=(0.5, 0.6, 0.7), packed=False,
                        options={"threads": 1})
    built = pickle.loads(pickle.dumps(spec)).build()   # as a worker receives it
    assert built.config == MTCNN(**kwargs).config == spec.config
    assert spec.config.max_batch == PRESETS["jetson"].max_batch   # left to the preset, not reset


def test_cli_flags_become_a_spec_without_argparse_in_it():
    args = build_parser().parse_args(["detect", "x.jpg", "--preset", "jetson", "--max-batch", "8", "9",
                                      "--per-scale", "--threads", "2"])
    spec = detector_spec(args)
    assert spec == DetectorSpec(preset="jetson", max_batch=(8, 9), packed=False, options={"threads": 2})
    assert spec.with_options(threads=1).options == {"threads": 1} and spec.options == {"threads": 2}


def test_gpu_is_read_from_the_device_or_the_providers():
    assert not DetectorSpec().uses_gpu
    assert DetectorSpec(backend="torch", options={"device": "cuda:1"}).uses_gpu
    assert DetectorSpec(options={"providers": ["TensorrtExecutionProvider", "CPUExecutionProvider"]}).uses_gpu


def test_bad_settings_fail_where_the_spec_is_made():
    with pytest.raises(ValueError, match="minsize"):
        DetectorSpec(minsize=5)
    with pytest.raises(ValueError, match="unknown preset"):
        DetectorSpec(preset="nope")


def test_device_alone_chooses_the_backend_in_the_spec_as_in_mtcnn():
    """Batch workers and Ray actors build from the spec: device="cuda" alone must mean the GPU there too."""
    assert DetectorSpec(options={"device": "cuda"}).choice.backend == "torch"
    assert DetectorSpec(options={"device": "cuda:1"}).uses_gpu
    assert DetectorSpec(options={"device": "cpu"}).choice.backend == cpu_default()
    assert not DetectorSpec(options={"device": "cpu"}).uses_gpu
    assert DetectorSpec(options={"providers": ["CPUExecutionProvider"]}).choice.backend == "onnxruntime"
    args = build_parser().parse_args(["detect", "x.jpg", "--device", "cuda", "--fp32", "--graphs", "off"])
    spec = detector_spec(args)
    assert spec.backend is None and spec.options == {"device": "cuda", "fp16": False, "graphs": False}
    assert spec.choice.backend == "torch" and spec.uses_gpu


def test_contradicting_options_fail_where_the_spec_is_made():
    with pytest.raises(ValueError, match="device='cuda' runs on the torch backend, not on openvino"):
        DetectorSpec(backend="openvino", options={"device": "cuda"})
    with pytest.raises(ValueError, match="device= and providers= both given"):
        DetectorSpec(options={"device": "cuda", "providers": ["CUDAExecutionProvider"]})


def test_exif_travels_in_the_spec_to_the_detector():
    spec = detector_spec(build_parser().parse_args(["detect", "x.jpg", "--exif"]))
    assert spec.exif and spec.options == {} and spec.build().exif
    assert not DetectorSpec().build().exif
