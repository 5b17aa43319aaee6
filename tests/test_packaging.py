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


#: how the docs name what an extra brings -> the requirement that must be in that extra
NAMED_PACKAGES = {
    r"\bPyTorch\b|\btorch\b(?![-\w])": "torch",
    r"\btorchvision\b": "torchvision",
    r"\bPyNvVideoCodec\b": "pynvvideocodec",
    r"\bpyarrow\b": "pyarrow",
    r"\bRay Data\b|\bray\[data\]": "ray",
    r"\bmatplotlib\b": "matplotlib",
    r"\bonnxruntime-gpu\b": "onnxruntime-gpu",
    r"\bonnx\b(?!runtime)": "onnx",
    r"\bsupervision\b": "supervision",
}
EXTRA = re.compile(r"(?:fastmtcnn|\.)\[([\w-]+)\]")


def _blocks(text: str) -> list[str]:
    """A doc as the units a claim stays within: each line of a code block, each sentence of prose."""
    blocks, prose, code = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            code = not code
            blocks.append(" ".join(prose))
            prose = []
        elif code:
            blocks.append(line)
        elif line.strip():
            prose.append(line.strip())
        else:
            blocks.append(" ".join(prose))
            prose = []
    blocks.append(" ".join(prose))
    return [s for b in blocks for s in re.split(r"(?<=[.;:])\s(?=[A-Z`])", b)]


def _extra_claims() -> list[tuple[str, str, str]]:
    """(file, extra, package) for every package the docs say an extra brings: the words after
    `fastmtcnn[X]` / `.[X]`, up to the next extra named or the end of the line or sentence."""
    claims = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in _blocks(path.read_text()):
            marks = list(EXTRA.finditer(block))
            for m, nxt in zip(marks, marks[1:] + [None]):
                said = block[m.end():nxt.start() if nxt else len(block)]
                claims += [(path.name, m.group(1), pkg) for rx, pkg in NAMED_PACKAGES.items() if re.search(rx, said)]
    return claims


def _names(requirements: list[str]) -> set[str]:
    return {re.match(r"[\w.-]+", r).group(0).lower() for r in requirements}


def test_every_extra_brings_what_the_docs_say_it_brings():
    """README's GPU section said `.[gpu]` brings torchvision (nvJPEG) while the extra listed torch only:
    photos were then decoded on the CPU without a word. Every such statement is read from the docs."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    claims = _extra_claims()
    wrong = [c for c in claims if c[1] not in extras or c[2] not in _names(extras[c[1]])]
    assert not wrong, f"the docs name packages their extra does not install: {wrong}"
    # the reader found the statements it is there for (it cannot pass by finding none)
    assert {("README.md", "gpu", "torchvision"), ("gpu.md", "gpu", "torchvision"), ("README.md", "gpu", "torch"),
            ("video.md", "nvdec", "pynvvideocodec"), ("batch.md", "ray", "ray")} <= set(claims)
