"""`fastmtcnn video` in chunks and over several sources: the same faces as frame by frame, every frame of
every file accounted for, outputs per source."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fastmtcnn import MTCNN, read_image
from fastmtcnn.cli import main
from video_clips import cycling_clips, fit, read_all, write_clip


def _records(path):
    lines = [json.loads(x) for x in open(path, encoding="utf-8")]
    return [r for r in lines if "frame" in r], [r for r in lines if "end" in r]


def test_chunked_video_gives_the_same_json_as_frame_by_frame(shared_data, tmp_path):
    """The shared H.264 clip, first 11 frames: chunks of 4 (the last one partial) against chunks of 1,
    and both against detecting each decoded frame on its own."""
    clip = shared_data / "video" / "group_720p_h264.mp4"
    runs = {}
    for chunk in (1, 4):
        js = tmp_path / f"c{chunk}.jsonl"
        assert main(["video", str(clip), "--max-frames", "11", "--minsize", "40", "--chunk", str(chunk),
                     "--json", str(js), "-q"]) == 0
        runs[chunk], end = _records(js)
        assert end[0]["frames"] == 11 and end[0]["end"] == "max frames" and end[0]["decoder"] == "opencv"
    assert runs[4] == runs[1]
    det = MTCNN(minsize=40)
    cap = cv2.VideoCapture(str(clip))
    for rec in runs[4]:
        ok, bgr = cap.read()
        assert ok
        assert rec["faces"] == det.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).to_list(), rec["frame"]
    cap.release()
    assert sum(len(r["faces"]) for r in runs[4]) > 11  # a grid of faces: the comparison is not of empty lists


@pytest.fixture(scope="module")
def clips(shared_data, tmp_path_factory):
    """Lossless clips: a.avi 10 frames 320x240, b.avi 6 frames 256x192 (faces: 1, 1, 0 repeating)."""
    return cycling_clips(shared_data, tmp_path_factory.mktemp("multi"))


def test_several_files_at_once_write_per_source_outputs_with_every_frame(clips, tmp_path, capsys):
    a, b = clips
    out, js = tmp_path / "videos", tmp_path / "json"
    rc = main(["video", str(a), str(b), str(a), "--out", str(out), "--json", str(js), "--chunk", "4",
               "--minsize", "40"])
    assert rc == 0
    det = MTCNN(minsize=40)
    stdout = capsys.readouterr().out
    for name, path, n in (("a", a, 10), ("b", b, 6), ("a-2", a, 10)):
        frames, end = _records(js / f"{name}.jsonl")
        assert [r["frame"] for r in frames] == list(range(n))  # every frame, in order
        expect = [det.detect(f).to_list() for f in read_all(path)]
        assert [r["faces"] for r in frames] == expect
        assert all(r["source"] == name for r in frames)
        assert end == [{"source": name, "end": "end of file", "frames": n, "faces": sum(map(len, expect)),
                        "mean_fps": end[0]["mean_fps"], "first_s": end[0]["first_s"],
                        "read": n, "dropped": 0, "reconnects": 0, "decoder": "opencv"}]
        written = read_all(out / f"{name}.mp4")
        assert len(written) == n and written[0].shape == read_all(path)[0].shape
        assert f"{path}: {n} frames, {end[0]['faces']} faces" in stdout and f"-> {out / name}.mp4" in stdout
    assert "3 sources: 26 frames" in stdout


def test_several_sources_to_stdout_json_carry_their_source(clips, capsys):
    a, b = clips
    assert main(["video", str(a), str(b), "--json", "-", "--max-frames", "3", "--minsize", "40"]) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    for name in ("a", "b"):
        mine = [r for r in recs if r["source"] == name]
        assert [r["frame"] for r in mine if "frame" in r] == [0, 1, 2] and mine[-1]["end"] == "max frames"


def test_an_unopenable_source_among_several_gets_an_error_record_and_exit_1(clips, tmp_path, capsys):
    a, _ = clips
    js = tmp_path / "json"
    rc = main(["video", str(a), str(tmp_path / "nope.mp4"), "--json", str(js), "-q", "--minsize", "40"])
    err = capsys.readouterr().err
    assert rc == 1 and f"error: {tmp_path / 'nope.mp4'}: no such file" in err and "Traceback" not in err
    frames, end = _records(js / "a.jsonl")
    assert len(frames) == 10 and end[0]["end"] == "end of file"
    frames, end = _records(js / "nope.jsonl")
    assert frames == [] and end[0]["frames"] == 0 and "no such file" in end[0]["error"]


@pytest.mark.parametrize("extra,message", [
    (["--out", "x.mp4"], "with several sources --out is a folder"),
    (["--show"], "--show takes one source"),
    (["--chunk", "0"], "--chunk must be >= 1"),
    # the library names its arguments (track_every, timeout_s, retry_delay); the user reads the flags
    (["--track", "--track-every", "0"], "--track-every must be >= 1"),
    (["--timeout", "0"], "--timeout must be > 0"),
    (["--retry-delay", "-1"], "--retry-delay must be >= 0"),
    (["--out-fps", "0"], "--out-fps must be > 0"),
])
def test_bad_multi_source_options_are_one_line_errors(clips, tmp_path, capsys, extra, message):
    a, b = clips
    rc = main(["video", str(a), str(b), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]


@pytest.mark.parametrize("decoder", ["auto", "opencv"])
def test_cpu_decoder_errors_are_unchanged_by_the_decoder_choice(shared_data, tmp_path, capsys, decoder):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    for source, message in ((tmp_path / "missing.mp4", "no such file"), (bad, "cannot open: not a video"),
                            (tmp_path, "is a directory")):
        rc = main(["video", str(source), "--decoder", decoder])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err == [f"fastmtcnn video: error: {source}: {message}" + err[0].split(message, 1)[1]]


def test_tracking_mode_still_runs_frame_by_frame(shared_data, tmp_path):
    rgb = fit(read_image(shared_data / "skimage_astronaut.png"), 320, 240)
    clip = write_clip(tmp_path / "pan.avi", [np.roll(rgb, 2 * k, axis=1) for k in range(8)])
    js = tmp_path / "t.jsonl"
    assert main(["video", str(clip), "--track", "--track-every", "4", "--json", str(js), "-q"]) == 0
    frames, end = _records(js)
    assert [r["frame"] for r in frames] == list(range(8)) and end[0]["frames"] == 8
    assert [r["mode"] for r in frames] == ["full", "track", "track", "track"] * 2
    assert all(len(r["faces"]) == 1 for r in frames)
