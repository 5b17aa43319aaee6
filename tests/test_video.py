"""`fastmtcnn video` and the frame sources: files, live streams, lost and truncated sources."""
from __future__ import annotations

import json
import re
import socket
import sys

import cv2
import numpy as np
import pytest

from conftest import DEADLOCK_S
from fastmtcnn import read_image
from fastmtcnn.cli import main
from fastmtcnn.metrics import greedy_match
from fastmtcnn.sources import FrameReader, parse_source
from video_clips import MjpegServer, fit, read_all, wait_until, write_clip

# frame i of the clip shows PHOTOS[i % 3]: one face, one face, no face
PHOTOS = ["skimage_astronaut.png", "skimage_camera.png", "skimage_coffee.png"]


def _records(path):
    lines = [json.loads(x) for x in open(path, encoding="utf-8")]
    return [r for r in lines if "frame" in r], [r for r in lines if "end" in r]


@pytest.fixture(scope="module")
def clip(shared_data, tmp_path_factory):
    """12 lossless 512x512 frames cycling through the photos (unscaled, so the reference applies)."""
    photos = [fit(read_image(shared_data / n), 512, 512) for n in PHOTOS]
    return write_clip(tmp_path_factory.mktemp("video") / "clip.avi", [photos[i % 3] for i in range(12)])


def test_video_file_gives_reference_faces_in_every_frame_and_writes_annotated_video(clip, tmp_path, capsys):
    from conftest import load_reference

    out, js = tmp_path / "result.mp4", tmp_path / "faces.jsonl"
    assert main(["video", str(clip), "--out", str(out), "--json", str(js)]) == 0
    frames, end = _records(js)
    assert [r["frame"] for r in frames] == list(range(12))  # files: every frame, in order
    for r in frames:
        name = PHOTOS[r["frame"] % 3]
        ref = load_reference(name)
        got = np.array([f["box"] for f in r["faces"]]).reshape(-1, 4)
        assert len(got) == len(ref), (r["frame"], name)
        if ref:
            assert len(greedy_match(np.array([f["box"] for f in ref]), got, min_iou=0.7)) == len(ref)
    assert end == [end[0]] and end[0]["frames"] == 12 and end[0]["faces"] == 8 and end[0]["end"] == "end of file"
    summary = capsys.readouterr().out
    assert "12 frames, 8 faces" in summary
    # the summary says when the first result came, as the end record does
    first = re.search(r"first result after ([0-9.]+)s\)", summary)
    assert first and abs(float(first.group(1)) - end[0]["first_s"]) <= 0.006
    written = read_all(out)
    assert len(written) == 12 and written[0].shape == (512, 512, 3)
    # the overlay is there: the face box edge is drawn in green
    x1, y1, x2, y2 = (int(round(v)) for v in frames[0]["faces"][0]["box"])
    edge = written[0][(y1 + y2) // 2, x1 - 1:x1 + 2].astype(int)
    assert (edge[:, 1] - edge[:, 0] > 100).any() and (edge[:, 1] - edge[:, 2] > 100).any()


def test_video_resizes_frames_to_requested_width_keeping_aspect(clip, tmp_path):
    js = tmp_path / "f.jsonl"
    assert main(["video", str(clip), "--width", "256", "--max-frames", "3", "--json", str(js), "-q"]) == 0
    frames, end = _records(js)
    assert [(r["width"], r["height"]) for r in frames] == [(256, 256)] * 3
    assert end[0]["end"] == "max frames"
    assert len(frames[0]["faces"]) == 1  # the astronaut is still found at half size


def test_truncated_video_ends_cleanly_with_the_frames_it_has(shared_data, tmp_path, capsys):
    rgb = fit(read_image(shared_data / "skimage_astronaut.png"), 320, 240)
    path = write_clip(tmp_path / "cut.avi", [np.roll(rgb, 4 * k, axis=1) for k in range(20)], fourcc="MJPG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    js = tmp_path / "f.jsonl"
    assert main(["video", str(path), "--json", str(js), "-q"]) == 0
    frames, end = _records(js)
    assert 3 <= len(frames) < 20
    assert all(len(r["faces"]) == 1 for r in frames)
    assert "truncated" in end[0]["end"] and end[0]["frames"] == len(frames)
    err = capsys.readouterr().err
    assert f"ended after {len(frames)} of 20 frames" in err and "Traceback" not in err


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_dead_rtsp_url_fails_with_one_line_after_bounded_retries(capsys):
    url = f"rtsp://127.0.0.1:{_closed_port()}/live"
    rc = main(["video", url, "--retries", "2", "--retry-delay", "0.1", "--timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert [line for line in err.splitlines() if "retry" in line] == [  # back-off doubles
        f"{url}: cannot open; retry 1/2 in 0.1s", f"{url}: cannot open; retry 2/2 in 0.2s"]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"fastmtcnn video: error: {url}: cannot open") and "gave up after 3 attempts" in last
    assert "Traceback" not in err


# The two tests below lose their stream when the server closes the connection (at once, an end of file to
# FFmpeg) or answers 404: no open or read ever has to time out, so the timeouts are only DEADLOCK_S guards
# (a loaded machine must not turn a slow open into a "lost" source).


def test_live_stream_that_drops_is_reconnected_and_reported(shared_data):
    server = MjpegServer(fit(read_image(shared_data / "skimage_astronaut.png"), 320, 240), per_connection=8)
    events: list[str] = []
    try:
        reader = FrameReader(server.url, retries=3, retry_delay=0.05, timeout_s=DEADLOCK_S, max_frames=20,
                             on_event=events.append)
        with reader:
            frames = list(reader)
    finally:
        server.stop()
    assert reader.stats.reconnects >= 1 and server.connections >= 2
    assert any("source lost; retry 1/3" in e for e in events) and any(e.endswith("reconnected") for e in events)
    assert len(frames) + reader.stats.dropped == reader.stats.frames == 20
    assert [f.index for f in frames] == sorted({f.index for f in frames})


def test_live_source_lost_for_good_ends_with_summary_and_error(shared_data, tmp_path, capsys):
    server = MjpegServer(fit(read_image(shared_data / "skimage_astronaut.png"), 320, 240), per_connection=6,
                         max_connections=1)
    js = tmp_path / "f.jsonl"
    try:
        rc = main(["video", server.url, "--json", str(js), "--retries", "1", "--retry-delay", "0.05",
                   "--timeout", str(DEADLOCK_S), "-q"])
    finally:
        server.stop()
    frames, end = _records(js)
    out = capsys.readouterr()
    assert rc == 1 and 1 <= len(frames) <= 6
    assert "source lost after 6 frames" in end[0]["error"] and end[0]["frames"] == len(frames)
    assert end[0]["dropped"] == 6 - len(frames)
    assert "stale frames dropped" in out.out and "live source" in out.out
    assert "source lost; retry 1/1" in out.err and "Traceback" not in out.err


def test_live_reader_keeps_only_the_newest_frame_when_the_consumer_lags(clip):
    reader = FrameReader(clip, drop_stale=True).start()
    with reader:
        # the consumer takes nothing until the reader has decoded the whole clip
        wait_until(lambda: reader.stats.end, "reached the end of the clip")
        got = [f.index for f in reader]
    assert reader.stats.end == "end of file" and reader.stats.frames == 12
    assert got == [11] and reader.stats.dropped == 11  # each frame replaced the one before it


def test_file_reader_queue_stays_bounded_and_keeps_every_frame(clip):
    reader = FrameReader(clip, queue_size=2).start()
    with reader:
        # nobody consumes: the reader fills the queue (2) and waits with one more frame in hand
        wait_until(lambda: reader.stats.frames >= 3, "filled its queue")
        assert reader.stats.frames == 3 and not reader.stats.end
        got = []
        for f in reader:
            got.append(f.index)
            # every decoded frame is consumed, queued or in the reader's hand: memory does not grow
            assert reader.stats.frames <= len(got) + 3
    assert got == list(range(12)) and reader.stats.dropped == 0


@pytest.mark.parametrize("text,kind", [("0", "camera"), ("rtsp://cam.local/stream", "stream"),
                                       ("http://127.0.0.1:8080/video.mjpg", "stream"),
                                       ("videotestsrc ! videoconvert ! appsink", "gstreamer"),
                                       ("clips/a.mp4", "file"), ("file:///tmp/a.mp4", "file")])
def test_source_kind_is_told_from_its_form(text, kind):
    spec = parse_source(text)
    assert spec.kind == kind and spec.live == (kind != "file")


@pytest.mark.parametrize("source,message", [("missing.mp4", "no such file"),
                                            ("videotestsrc ! appsink", "GStreamer")])
def test_unusable_source_is_one_line_error_without_retries(source, message, capsys):
    if "!" in source and cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        pytest.skip("this OpenCV has GStreamer")
    rc = main(["video", source])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0] and err[0].startswith("fastmtcnn video: error:")


def test_not_a_video_file_is_one_line_error(shared_data, capsys):
    rc = main(["video", str(shared_data / "README.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot open" in err[0]


def test_show_without_display_says_so(clip, capsys, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("display detection is checked on Linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["video", str(clip), "--show"]) == 2
    assert "--show needs a display" in capsys.readouterr().err

