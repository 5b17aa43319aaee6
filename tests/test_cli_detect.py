"""`fastmtcnn detect`: what a user sees on the command line.

Why: the CLI is a thin layer over the API, so its results must be the API's
results; its records must be machine-readable (JSON Lines); options must
reach the detector; and mistakes (bad option values, no inputs) must give a
one-line message and a non-zero exit code, never a traceback. Bad image
files are covered in test_bad_inputs.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from fastmtcnn import MTCNN
from fastmtcnn.cli import main

GROUP = "bob_multiple-faces.jpg"  # 18 faces
PORTRAIT = "matplotlib_grace_hopper.jpg"  # 1 face
NO_FACE = "skimage_coffee.png"


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_detect_prints_faces_and_writes_the_apis_results_as_json_lines(shared_data, detector, tmp_path, capsys):
    out = tmp_path / "faces.jsonl"
    paths = [shared_data / PORTRAIT, shared_data / GROUP, shared_data / NO_FACE]
    assert main(["detect", *map(str, paths), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    recs = _records(out.read_text())
    assert [r["path"] for r in recs] == [str(p) for p in paths]
    for p, r in zip(paths, recs):
        img = cv2.imread(str(p))
        assert (r["width"], r["height"]) == (img.shape[1], img.shape[0])
        assert r["faces"] == detector.detect(p).to_list()
    assert [len(r["faces"]) for r in recs] == [1, 18, 0]
    assert f"{paths[0]}: 1 face (512x600)" in text
    assert f"{paths[1]}: 18 faces (520x385)" in text
    assert f"{paths[2]}: 0 faces (600x400)" in text
    assert text.count("  face ") == 19  # one line per face
    assert "3 images, 19 faces, 0 failed" in text


def test_json_to_stdout_keeps_stdout_machine_readable(shared_data, capsys):
    assert main(["detect", str(shared_data / PORTRAIT), str(shared_data / GROUP), "--json", "-"]) == 0
    cap = capsys.readouterr()
    recs = _records(cap.out)  # every stdout line is a record
    assert [len(r["faces"]) for r in recs] == [1, 18]
    assert "2 images, 19 faces" in cap.err


def test_quiet_prints_one_line_per_image(shared_data, capsys):
    assert main(["detect", str(shared_data / GROUP), "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "18 faces" in out[0] and "face 1:" not in "\n".join(out)


def test_save_dir_writes_annotated_copies_with_unique_names(shared_data, tmp_path, capsys):
    # the same file name in two folders must not overwrite each other's drawing
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copy(shared_data / PORTRAIT, a / "photo.jpg")
    shutil.copy(shared_data / GROUP, b / "photo.jpg")
    save, out = tmp_path / "drawn", tmp_path / "o.jsonl"
    assert main(["detect", str(a / "photo.jpg"), str(b / "photo.jpg"), "--save-dir", str(save),
                 "--json", str(out)]) == 0
    recs = _records(out.read_text())
    drawn = [Path(r["annotated"]) for r in recs]
    assert len(set(drawn)) == 2 and all(p.parent == save and p.is_file() for p in drawn)
    for r, p in zip(recs, drawn):
        src = cv2.imread(r["path"])
        img = cv2.imread(str(p))
        assert img.shape == src.shape
        assert (img != src).any(axis=2).mean() > 0.001, "boxes and landmarks are drawn"


def test_folders_and_globs_expand_to_their_images(shared_data, tmp_path, capsys):
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    shutil.copy(shared_data / PORTRAIT, d / "one.jpg")
    shutil.copy(shared_data / GROUP, d / "sub" / "two.JPG")
    (d / "notes.txt").write_text("not an image suffix: not an input")
    out = tmp_path / "o.jsonl"
    assert main(["detect", str(d), str(tmp_path / "photos" / "*.jpg"), "--json", str(out), "-q"]) == 0
    names = [Path(r["path"]).relative_to(d).as_posix() for r in _records(out.read_text())]
    assert names == ["one.jpg", "sub/two.JPG", "one.jpg"]


def test_glob_matching_nothing_is_an_error_record(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    pattern = str(tmp_path / "nothing-*.jpg")
    assert main(["detect", pattern, "--json", str(out)]) == 1
    (rec,) = _records(out.read_text())
    assert rec["path"] == pattern and "no such file" in rec["error"]


def test_empty_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["detect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fastmtcnn detect: error: no input images found"


def test_detector_options_reach_the_detector(shared_data, tmp_path, capsys):
    path = shared_data / "yolov5_zidane.jpg"

    def faces(*opts: str) -> list[dict]:
        out = tmp_path / "o.jsonl"
        assert main(["detect", str(path), "--json", str(out), "-q", *opts]) == 0
        return _records(out.read_text())[0]["faces"]

    default = faces()
    assert faces("--per-scale") == default  # same detections, other PNet schedule
    assert faces("--max-batch", "2", "3") == default
    jetson = faces("--preset", "jetson")
    assert jetson == MTCNN(preset="jetson").detect(path).to_list() and jetson != default
    assert faces("--thresholds", "0.6", "0.7", "0.9999") == MTCNN(thresholds=(0.6, 0.7, 0.9999)).detect(path).to_list()
    assert faces("--minsize", "300") == []  # both faces are smaller than 300 px


@pytest.mark.parametrize("opts, words", [
    (["--minsize", "5"], "--minsize must"),  # the flag the user typed, not the library's argument name
    (["--factor", "1.5"], "--factor must"),
    (["--thresholds", "0.6", "0.7", "1.5"], "--thresholds must"),
    (["--max-batch", "0"], "--max-batch must"),
    (["--threads", "0"], "--threads must"),
    (["--backend", "onnxruntime", "--device", "cuda"], "--device cuda runs on the torch backend, not on onnxruntime"),
    (["--backend", "torch", "--providers", "CPUExecutionProvider"], "--providers is for the onnxruntime backend"),
    (["--graphs"], "--graphs is an option of the torch backend (--device cuda)"),
])
def test_bad_option_values_give_one_line_and_exit_2(shared_data, capsys, opts, words):
    rc = main(["detect", str(shared_data / PORTRAIT), *opts])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "\n" not in err and err.startswith("fastmtcnn detect: error: ")
    assert words in err


def test_more_than_two_max_batch_values_are_rejected(shared_data, capsys):
    assert main(["detect", str(shared_data / PORTRAIT), "--max-batch", "1", "2", "3"]) == 2


def test_negative_threads_are_rejected(shared_data, capsys):
    assert main(["detect", str(shared_data / PORTRAIT), "--threads", "-1"]) == 2


def test_python_m_fastmtcnn_detect_exits_nonzero_without_traceback(shared_data, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    shutil.copy(shared_data / PORTRAIT, d / "a_portrait.jpg")
    (d / "b_broken.jpg").write_bytes((shared_data / PORTRAIT).read_bytes()[:5000])
    (d / "c_empty.png").write_bytes(b"")
    cv2.imwrite(str(d / "d_gray.png"), cv2.imread(str(shared_data / PORTRAIT), cv2.IMREAD_GRAYSCALE))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "fastmtcnn", "detect", str(d), str(d / "e_missing.jpg"), "--json", "-"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    recs = _records(p.stdout)
    assert [Path(r["path"]).name for r in recs] == ["a_portrait.jpg", "b_broken.jpg", "c_empty.png", "d_gray.png",
                                                    "e_missing.jpg"]
    assert [len(r["faces"]) if "faces" in r else r["error"].split(": ", 1)[1] for r in recs] == [
        1, "truncated or corrupt JPEG (no end of image after the scan data)", "empty file", 1, "no such file"]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 3
    assert "5 images, 2 faces, 3 failed" in p.stderr
    # and a bad option: exit 2, one line
    p = subprocess.run([sys.executable, "-m", "fastmtcnn", "detect", str(d), "--minsize", "3"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "minsize" in p.stderr
    assert p.stdout == ""
