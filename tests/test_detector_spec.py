"""DetectorSpec: the detector as data for worker processes and Ray actors builds what MTCNN builds."""
from __future__ import annotations

import pickle

import pytest

from fastmtcnn import MTCNN, PRESETS
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
