"""Command-line messages in the user's terms (found by trying the CLI as a new user would).

Why: an error must name what the user typed (a flag, a path), fit on one
line and exit non-zero; a run must not silently skip an input or run
somewhere other than asked; outputs keep the user's formats; counts read
as English.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import cv2
import pytest

from fastmtcnn.cli import build_parser, in_flag_terms, main

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fastmtcnn"

PORTRAIT = "matplotlib_grace_hopper.jpg"  # one face


def _one_line_error(capsys, command: str = "detect") -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"fastmtcnn {command}: error: "), err
    return err


@pytest.fixture()
def photos(shared_data, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(shared_data / PORTRAIT, folder)
    return folder


# ------------------------------------------------------------------ flags and paths


def test_setting_errors_of_tune_name_the_flag(shared_data, capsys):
    assert main(["tune", str(shared_data / "gt.json"), str(shared_data), "--minsize", "5"]) == 2
    assert "--minsize must be >= 12" in _one_line_error(capsys, "tune")


@pytest.mark.parametrize("flag", ["--save-dir", "--json"])
def test_output_paths_that_cannot_be_written_are_one_line(photos, tmp_path, capsys, flag):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    bad = {"--save-dir": [str(a_file), str(a_file / "sub")],
           "--json": [str(tmp_path / "no" / "x.jsonl"), str(a_file / "x")]}
    for path in bad[flag]:
        assert main(["detect", str(photos), flag, path]) == 2
        err = _one_line_error(capsys)
        assert f"{flag} {path}: " in err and "Errno" not in err


def test_align_out_and_eval_json_paths_are_one_line(shared_data, photos, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["align", str(photos), "--out", str(a_file)]) == 2
    assert f"--out {a_file}: exists and is not a folder" in _one_line_error(capsys, "align")
    bad_json = str(tmp_path / "no" / "eval.json")
    assert main(["eval", str(shared_data / "gt.json"), str(shared_data), "--json", bad_json]) == 2
    assert f"--json {bad_json}: cannot write" in _one_line_error(capsys, "eval")
    assert main(["tune", str(shared_data / "gt.json"), str(shared_data), "--json", bad_json]) == 2
    assert f"--json {bad_json}: cannot write" in _one_line_error(capsys, "tune")  # before the sweep, not after


def test_unavailable_providers_are_an_error_not_a_cpu_run(photos, capsys):
    assert main(["detect", str(photos), "--providers", "NoSuchExecutionProvider"]) == 2
    assert "NoSuchExecutionProvider is not available" in _one_line_error(capsys)


def _no_cuda() -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch (the torch backend's error)")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")


@pytest.mark.parametrize("command, source", [("detect", PORTRAIT), ("video", "video/group_720p_h264.mp4")])
def test_device_cuda_alone_asks_for_the_gpu_and_says_there_is_none(shared_data, capsys, command, source):
    """--device cuda is enough to mean the GPU (the torch backend): without one it is one line, exit 2,
    the torch backend's own reason, not a complaint that --backend torch is missing."""
    _no_cuda()
    assert main([command, str(shared_data / source), "--device", "cuda", "-q"]) == 2
    err = _one_line_error(capsys, command)
    assert "torch sees no CUDA GPU" in err and "--backend" not in err


def test_the_cpu_default_keeps_device_cpu_and_torch_on_the_cpu_is_named(shared_data, capsys):
    pytest.importorskip("torch")
    assert main(["detect", str(shared_data / PORTRAIT), "--device", "cpu", "--json", "-"]) == 0
    cpu = json.loads(capsys.readouterr().out.splitlines()[0])
    assert main(["detect", str(shared_data / PORTRAIT), "--device", "cpu", "--backend", "torch", "--json", "-"]) == 0
    torch_cpu = json.loads(capsys.readouterr().out.splitlines()[0])
    assert len(cpu["faces"]) == len(torch_cpu["faces"]) == 1
    for a, b in zip(cpu["faces"][0]["box"], torch_cpu["faces"][0]["box"]):
        assert abs(a - b) < 0.05  # the same face from both engines (float32 on both)


def test_without_openvino_the_default_is_onnx_runtime_and_naming_openvino_is_one_line(shared_data, monkeypatch,
                                                                                   capsys):
    """Where no OpenVINO is installed (some platforms; the GPU test machine) the CPU default falls back to ONNX
    Runtime, and asking for OpenVINO by name is a one-line error, not a traceback."""
    from fastmtcnn import MTCNN
    from fastmtcnn.backends.onnxruntime import OrtBackend

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails, as where it is missing
    monkeypatch.delitem(sys.modules, "fastmtcnn.backends.openvino", raising=False)
    det = MTCNN()
    assert isinstance(det.backend, OrtBackend)
    assert len(det.detect(shared_data / PORTRAIT)) == 1
    assert main(["detect", str(shared_data / PORTRAIT), "-q"]) == 0
    assert capsys.readouterr().out.startswith(str(shared_data / PORTRAIT) + ": 1 face")
    assert main(["detect", str(shared_data / PORTRAIT), "--backend", "openvino"]) == 2
    assert "the openvino backend needs OpenVINO: pip install openvino" in _one_line_error(capsys)


@pytest.mark.parametrize("library, flags", [
    ("minsize must be >= 12 pixels, got 5.0", "--minsize must be >= 12 pixels, got 5.0"),
    ("max_batch must be >= 1 (or a pair of such), got 0", "--max-batch must be >= 1 (or a pair of such), got 0"),
    ("device='cuda' runs on the torch backend, not on openvino: leave backend= out, or name backend='torch'",
     "--device cuda runs on the torch backend, not on openvino: leave --backend out, or name --backend torch"),
    ("fp16= and graphs= are options of the torch backend (device='cuda:1')",
     "--fp16 and --graphs are options of the torch backend (--device cuda:1)"),
    ("fp16=False, graphs=True", "--fp32, --graphs on"),
    ("(its GPU: providers=['CUDAExecutionProvider', 'CPUExecutionProvider'])",
     "(its GPU: --providers CUDAExecutionProvider CPUExecutionProvider)"),
    ("decoder='nvdec': frames are not resized on the GPU; drop width= and height=",
     "--decoder nvdec: frames are not resized on the GPU; drop --width and --height"),
    ("actors=9: the Ray cluster's 2 CPUs fit at most 1 detector actors",
     "--actors 9: the Ray cluster's 2 CPUs fit at most 1 detector actors"),
    ("num_cpus= and object_store_mb= size a local Ray instance",
     "--num-cpus and --object-store-mb size a local Ray instance"),
    # paths and URLs are the user's words: left alone
    ("/data/minsize=40/a.jpg: no such file", "/data/minsize=40/a.jpg: no such file"),
    ("rtsp://cam/live?width=640&height=480: cannot open", "rtsp://cam/live?width=640&height=480: cannot open"),
    ("a.jpg: device 'cuda' asked for", "a.jpg: device 'cuda' asked for"),
])
def test_library_words_become_the_flags_the_user_typed(library, flags):
    assert in_flag_terms(library) == flags


def _raised_texts(tree: ast.AST):
    """The string pieces of every `raise` expression of a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    yield node.lineno, part.value


def test_library_errors_speak_argument_names_not_flags():
    """The library is used without the CLI: its errors name its arguments (`device=`); only the CLI's
    own code (cli.py, commands/) raises in flags, and `main` translates the rest (in_flag_terms)."""
    flag = re.compile(r"(?<![\w-])--[a-z]")
    found = []
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE).as_posix()
        if rel in ("cli.py", "__main__.py") or rel.startswith("commands/"):
            continue
        texts = _raised_texts(ast.parse(f.read_text()))
        found += [f"{rel}:{line}: {text}" for line, text in texts if flag.search(text)]
    assert not found, "library errors in CLI flags:\n" + "\n".join(found)


# ------------------------------------------------------------------ inputs


def test_empty_folder_among_inputs_is_reported_and_fails_the_run(photos, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "faces.jsonl"
    assert main(["detect", str(photos), str(empty), "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: {empty}: is a directory with no image files in it" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == [str(photos / PORTRAIT), str(empty)]
    assert "error" in records[1] and len(records[0]["faces"]) == 1
    assert main(["align", str(photos), str(empty), "--out", str(tmp_path / "crops")]) == 1
    assert "no image files" in capsys.readouterr().err


def test_empty_folder_in_a_batch_job_is_an_error(photos, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["batch", str(photos), str(empty), "--out", str(tmp_path / "out"), "--workers", "0", "-q"]) == 2
    assert f"{empty}: no image files in this folder" in _one_line_error(capsys, "batch")


# ------------------------------------------------------------------ outputs


def test_annotated_images_keep_the_inputs_format(shared_data, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shared_data / PORTRAIT, folder / "a.jpg")
    shutil.copy(shared_data / "skimage_astronaut.png", folder / "b.png")
    rgb = cv2.imread(str(shared_data / PORTRAIT))
    cv2.imwrite(str(folder / "c.bmp"), rgb)
    cv2.imwrite(str(folder / "d.pgm"), cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY))  # grey-only: drawn in colour as .png
    out = tmp_path / "out"
    assert main(["detect", str(folder), "--save-dir", str(out), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.png", "c.bmp", "d.png"]
    for name, src in (("a.jpg", "a.jpg"), ("b.png", "b.png"), ("c.bmp", "c.bmp")):
        assert cv2.imread(str(out / name)).shape == cv2.imread(str(folder / src)).shape
    assert f"-> {out / 'a.jpg'}" in capsys.readouterr().out


# ------------------------------------------------------------------ tune's flags


def test_tune_thresholds_take_detects_form_and_show_their_defaults(shared_data, capsys):
    parser = build_parser()
    base = ["tune", str(shared_data / "gt.json"), str(shared_data)]
    assert parser.parse_args(base + ["--thresholds", "0.6", "0.7", "0.7"]).thresholds == [(0.6, 0.7, 0.7)]
    two = parser.parse_args(base + ["--thresholds", "0.6", "0.7", "0.7", "0.7", "0.6", "0.7"]).thresholds
    assert two == [(0.6, 0.7, 0.7), (0.7, 0.6, 0.7)]
    assert parser.parse_args(base + ["--thresholds", "0.6,0.7,0.7"]).thresholds == [(0.6, 0.7, 0.7)]
    for bad in (["0.6", "0.7"], ["0.6", "x", "0.7"]):
        with pytest.raises(SystemExit):
            parser.parse_args(base + ["--thresholds", *bad])
        assert "--thresholds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["tune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 20 40 80)", "(default: 0.709 0.68 0.6)", "(default: 0.6 0.7 0.7",
                    "(default: packed)", "(default: onnxruntime)"):
        assert default in text


# ------------------------------------------------------------------ plurals


def test_counts_are_singular_for_one(shared_data, photos, tmp_path, capsys):
    assert main(["detect", str(photos), "-q"]) == 0
    assert "1 image, 1 face, 0 failed" in capsys.readouterr().out
    assert main(["align", str(photos), "--out", str(tmp_path / "crops"), "-q"]) == 0
    assert "1 image, 1 face, 2 crops, 0 failed" in capsys.readouterr().out


def test_batch_summary_says_1_error(photos, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    bad = photos / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    assert main(["batch", str(photos), "--out", str(tmp_path / "out"), "--workers", "0", "-q"]) == 1
    assert "2 rows, 1 error, 1 face" in capsys.readouterr().out
