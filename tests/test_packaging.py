"""Packaging: one version, package data that exists, extras that README's instructions name."""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

import fastmtcnn

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI's); 3.10 has no TOML reader built in

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_is_written_once_and_installed_as_written():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fastmtcnn.__version__"}
    assert importlib.metadata.version("fastmtcnn") == fastmtcnn.__version__


def test_package_data_names_only_files_that_exist():
    package = ROOT / "src" / "fastmtcnn"
    for pattern in PYPROJECT["tool"]["setuptools"]["package-data"]["fastmtcnn"]:
        assert [p for p in package.glob(pattern) if p.is_file()], f"package-data {pattern!r} matches no file"


def test_readme_gpu_runtime_steps_name_the_extra_and_the_swap():
    """onnxruntime-gpu shares the `onnxruntime` module with the CPU wheel: README must say to swap them."""
    extra = PYPROJECT["project"]["optional-dependencies"]["ort-gpu"]
    assert any(re.match(r"onnxruntime-gpu\b", req) for req in extra)
    readme = (ROOT / "README.md").read_text()
    assert "pip install 'fastmtcnn[ort-gpu]'" in readme
    assert "pip uninstall -y onnxruntime" in readme and "--force-reinstall --no-deps onnxruntime-gpu" in readme
