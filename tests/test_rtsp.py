"""RTSP for real: `fastmtcnn video` and `StreamDetector` against GStreamer's RTSP server on 127.0.0.1.

The server (tests/rtsp_server.py, Debian's python3-gi and gst-rtsp-server, installed by .ci/run) serves
the H.264 clips of ../shared/data/video as they are, in real time, like a camera; OpenCV's FFmpeg reads
them. The stream's frames are the file's frames bit for bit, so what comes out is checked against the
file. The tests wait on what the reader and the CLI report (lines, counters), not on the clock.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from conftest import skip_or_fail
from fastmtcnn import MTCNN, StreamDetector
from fastmtcnn.sources import FrameReader, SourceError
from video_clips import RtspServer, rtsp_server_missing, wait_until

#: what a test waits for at most before it calls a hang a failure (it never passes by waiting)
HANG = 120


@pytest.fixture(scope="module")
def clips(shared_data):
    why = rtsp_server_missing()
    if why:
        skip_or_fail(why)
    video = shared_data / "video"
    paths = video / "group_720p_h264.mp4", video / "group_1080p_h264.mp4"
    for p in paths:
        if not p.is_file():
            skip_or_fail(f"{p} not found (../shared/data/video)")
    return paths


class FileFrames:
    """The clip's frames by index, read forward from the file (indices asked for only grow)."""

    def __init__(self, path) -> None:
        self.cap, self.next, self.last = cv2.VideoCapture(str(path)), 0, None

    def __getitem__(self, index: int) -> np.ndarray:
        while self.next <= index:
            ok, bgr = self.cap.read()
            assert ok, f"the file has no frame {self.next}"
            self.last, self.next = bgr, self.next + 1
        return cv2.cvtColor(self.last, cv2.COLOR_BGR2RGB)


def assert_same_faces(got, expect) -> None:
    assert len(got) == len(expect)
    np.testing.assert_allclose(got.boxes, expect.boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, expect.scores, atol=1e-5)


def test_stream_detector_reads_two_rtsp_cameras_and_drops_stale_frames_behind_a_slow_caller(clips):
    det, check = MTCNN(), MTCNN()  # check: the caller's own detector; its work makes it slower than the cameras
    for c in clips:  # the first call at a frame size sets the detectors up: not while the cameras run
        first = FileFrames(c)[0]
        det.detect(first)
        check.detect(first)
    files = dict(zip(("hd720", "hd1080"), (FileFrames(c) for c in clips)))
    servers = [RtspServer(c) for c in clips]
    got: dict[str, list[int]] = {name: [] for name in files}
    try:
        # max_frames: the whole clip (10 s), a slow start under load still leaves seconds after the pause
        with StreamDetector(det, [s.url for s in servers], names=list(files), max_frames=300) as sd:
            readers = {sd.names[i]: r for i, r in sd.readers.items()}
            resumed = None
            for r in sd:
                got[r.source].append(r.index)
                frame = files[r.source][r.index]
                # the stream is the file's H.264: frame number i of the stream is the file's frame i, exactly
                assert r.image.shape == frame.shape and np.array_equal(r.image, frame), (r.source, r.index)
                assert_same_faces(r.faces, check.detect(frame))
                if resumed is None:
                    # the caller stops taking results until the 720p camera has sent a second more (30 frames)
                    # than the reader could pass on: it drops them, rather than queue them for the caller
                    hd720 = readers["hd720"].stats
                    dropped = hd720.dropped
                    wait_until(lambda: hd720.dropped >= dropped + 30 or hd720.end, "dropped 30 frames", HANG)
                    assert not hd720.end, f"the 720p stream ended ({hd720.end}) before the first result came"
                    resumed = {name: (len(got[name]), rd.stats.frames) for name, rd in readers.items()}
    finally:
        for s in servers:
            s.kill()
    for name, indices in got.items():
        st = sd.stats[name]
        assert st.end == "max frames" and st.error is None and st.reconnects == 0, st
        # every frame read is handed out once, in order, or counted as dropped
        assert indices == sorted(set(indices)) and len(indices) == st.frames
        assert st.frames + st.dropped == st.read == 300 and st.dropped >= 30
        # results after the pause: besides the rest of the batch in hand, one batch that was detected
        # while the caller was away; every later one is a frame read after the pause, not a queued old one
        seen, read = resumed[name]
        later = indices[seen + 2:]
        assert later and min(later) >= read - 2, (name, resumed, indices)


def _cli(url: str, *args: str) -> subprocess.Popen:
    """`fastmtcnn video URL --json -` in a process of its own, stdout and stderr in one pipe (in the order
    written: records are JSON, messages are not)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "fastmtcnn", "video", url, "--json", "-", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _lines(proc: subprocess.Popen) -> queue.Queue:
    """The process's output lines as they come; None at the end."""
    q: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def test_cli_reads_rtsp_reconnects_to_a_restarted_server_and_exits_1_when_it_is_gone(clips):
    clip = clips[0]
    first = RtspServer(clip)
    again = RtspServer(clip, port=first.port, wait=True)  # loaded; listens on the same address when told
    cli = _cli(first.url, "--retries", "3", "--retry-delay", "0.5", "--timeout", "2")
    out, records = [], []
    phase, reconnected_at = "streaming", 0
    try:
        lines = _lines(cli)
        while True:
            line = lines.get(timeout=HANG)
            if line is None:
                break
            out.append(line)
            if line.startswith("{"):
                records.append(json.loads(line))
            if phase == "streaming" and len(records) == 3:
                first.kill()  # the camera goes away mid-stream...
                phase = "lost"
            elif phase == "lost" and ": source lost; retry" in line:
                again.listen()  # ...and comes back on the same address while the reader retries
                phase = "back"
            elif phase == "back" and line.endswith(": reconnected"):
                phase, reconnected_at = "reconnected", len(records)
            elif phase == "reconnected" and len(records) >= reconnected_at + 5:
                again.kill()  # results came through the new connection; now it is gone for good
                phase = "gone"
        rc = cli.wait(timeout=HANG)
    finally:
        for p in (cli, first, again):
            p.kill()
    text = "\n".join(x for x in out if not x.startswith("{"))
    assert phase == "gone" and rc == 1 and "Traceback" not in text, text
    frames, end = [r for r in records if "frame" in r], [r for r in records if "end" in r]
    assert len(end) == 1 and records[-1] is end[0]
    end = end[0]
    # one line says why it ended, and the end record carries the counts
    errors = [x for x in out if x.startswith("error:")]
    assert len(errors) == 1 and f"{first.url}: source lost after {end['read']} frames and not back" in errors[0]
    assert "gave up after 3 attempts" in errors[0] and end["error"] in errors[0]
    assert end["reconnects"] == text.count(": reconnected") >= 1
    assert end["frames"] == len(frames) and end["frames"] + end["dropped"] == end["read"] and end["dropped"] > 0
    indices = [r["frame"] for r in frames]
    assert indices == sorted(set(indices))  # every frame handed out once, in order, across the reconnect
    assert all((r["width"], r["height"]) == (1280, 720) for r in frames)
    summary = [x for x in out if x.startswith(f"{first.url}: {end['frames']} frames")]
    assert len(summary) == 1 and f"{end['dropped']} stale frames dropped" in summary[0]
    # the first frames are those of the file (the first connection starts at its frame 0)
    det, file = MTCNN(), FileFrames(clip)
    for r in frames[:3]:
        expect = det.detect(file[r["frame"]])
        assert len(r["faces"]) == len(expect)
        boxes = np.reshape([f["box"] for f in r["faces"]], (-1, 4))
        np.testing.assert_allclose(boxes, expect.boxes.reshape(-1, 4), atol=0.01)  # JSON has 2 decimals


def test_a_hung_server_is_given_up_on_after_the_read_and_open_timeouts(clips):
    server = RtspServer(clips[0])
    events: list[str] = []
    outcome: list = []
    reader = FrameReader(server.url, retries=1, retry_delay=0.0, timeout_s=1.0, on_event=events.append)

    def consume():
        try:
            for _ in reader:  # the first frame handed out need not be frame 0: a live reader drops stale ones
                if not outcome:
                    server.pause()  # still there, never answers: only the timeouts can end this
                    outcome.append("paused")
            outcome.append("ended without an error")
        except SourceError as e:
            outcome.append(e)

    try:
        t = threading.Thread(target=consume, daemon=True)
        t.start()
        t.join(HANG)
        assert not t.is_alive(), "the reader hung on a server that stopped answering"
    finally:
        reader.close()
        server.kill()
    assert outcome[0] == "paused" and isinstance(outcome[1], SourceError), outcome
    msg = str(outcome[1])
    assert msg.startswith(f"{server.url}: source lost after {reader.stats.frames} frames and not back: cannot open")
    assert events == [f"{server.url}: source lost; retry 1/1 in 0.0s"] and reader.stats.reconnects == 0
