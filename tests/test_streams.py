"""StreamDetector and the reader logic under it: several sources in shared detector calls, live sources that
drop stale frames and reconnect, tested with fake captures (no sleeps, no timing races)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import DEADLOCK_S
from fastmtcnn import MTCNN, StreamDetector, read_image
from fastmtcnn.sources import FrameReader, SourceError, SourceSpec, parse_source, backoff_delay
from fastmtcnn.streams import source_names
from video_clips import fit, write_clip

PHOTOS = ["skimage_astronaut.png", "skimage_camera.png", "skimage_coffee.png"]


class FakeCapture:
    """cv2.VideoCapture's interface over a list of BGR frames; read() fails after the last one."""

    def __init__(self, frames, fps=10.0, eof: threading.Event | None = None, gate: threading.Event | None = None):
        self.frames, self.fps, self.eof, self.gate = list(frames), fps, eof, gate
        self.released = False

    def isOpened(self):
        return True

    def get(self, prop):
        import cv2

        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        if self.gate is not None:  # a camera whose frames come when the test says so
            self.gate.wait(DEADLOCK_S)
        if self.frames:
            return True, self.frames.pop(0)
        if self.eof is not None:
            self.eof.set()
        return False, None

    def release(self):
        self.released = True


def scripted_opener(script):
    """An opener that answers each open with the next scripted capture, or raises the scripted error."""
    calls = []

    def open_(spec, width, height, timeout_s):
        calls.append(spec.text)
        step = script.pop(0) if script else SourceError(f"{spec}: cannot open: gone")
        if isinstance(step, Exception):
            raise step
        return step() if callable(step) else step

    open_.calls = calls
    return open_


def bgr_frames(n, value=0, shape=(48, 64)):
    return [np.full((*shape, 3), (value + i) % 256, np.uint8) for i in range(n)]


def test_live_reader_keeps_only_the_newest_frame_and_counts_the_rest_as_dropped():
    eof = threading.Event()
    cap = FakeCapture(bgr_frames(7), eof=eof)
    reader = FrameReader(SourceSpec("fake.mp4", "file"), opener=scripted_opener([cap]), drop_stale=True,
                         on_event=lambda m: None)
    reader.start()
    assert eof.wait(DEADLOCK_S)  # all 7 decoded while nobody consumed
    frames = list(reader)
    reader.close()
    assert [f.index for f in frames] == [6] and reader.stats.dropped == 6 and reader.stats.frames == 7
    assert int(frames[0].image[0, 0, 0]) == 6  # the newest frame's pixels, not a stale one's


def test_lost_live_source_reconnects_with_backoff_then_gives_up_with_its_frame_count():
    spec = parse_source("rtsp://camera.invalid/live")
    events: list[str] = []
    opener = scripted_opener([FakeCapture(bgr_frames(3)), SourceError(f"{spec}: cannot open: refused"),
                              FakeCapture(bgr_frames(2, value=50))])
    reader = FrameReader(spec, opener=opener, drop_stale=False, retries=2, retry_delay=0.0, on_event=events.append)
    with pytest.raises(SourceError) as err:
        with reader:
            got = []
            for f in reader:
                got.append(f)
    assert [f.index for f in got] == [0, 1, 2, 3, 4]  # frame numbers run on across the reconnect
    assert [int(f.image[0, 0, 0]) for f in got] == [0, 1, 2, 50, 51]
    assert reader.stats.reconnects == 1 and len(opener.calls) == 5  # first open, 2 retries, then 2 failed ones
    assert events == [f"{spec}: source lost; retry 1/2 in 0.0s", f"{spec}: source lost; retry 2/2 in 0.0s",
                      f"{spec}: reconnected",
                      f"{spec}: source lost; retry 1/2 in 0.0s", f"{spec}: source lost; retry 2/2 in 0.0s"]
    assert str(err.value).startswith(f"{spec}: source lost after 5 frames and not back:")
    assert "gave up after 2 attempts" in str(err.value)


def test_live_source_that_cannot_open_is_retried_before_it_counts_as_failed():
    spec = parse_source("rtsp://camera.invalid/live")
    events: list[str] = []
    opener = scripted_opener([SourceError(f"{spec}: cannot open: refused"), FakeCapture(bgr_frames(2))])
    reader = FrameReader(spec, opener=opener, drop_stale=False, retries=3, retry_delay=0.0, on_event=events.append)
    assert events == [f"{spec}: cannot open; retry 1/3 in 0.0s"] and reader.stats.reconnects == 0
    reader.close()


def test_reconnect_delays_double_up_to_the_cap():
    assert [backoff_delay(a, 0.5, 8.0) for a in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_sources_are_named_for_their_outputs_uniquely():
    specs = [parse_source(s) for s in ["a/clip.mp4", "b/clip.mp4", "0", "/dev/video2",
                                       "rtsp://cam.local:554/live/1", "clip.mp4"]]
    assert source_names(specs) == ["clip", "clip-2", "camera0", "camera2", "cam.local_554_live_1", "clip-3"]


@pytest.fixture(scope="module")
def clips(shared_data, tmp_path_factory):
    """Two lossless clips of different frame sizes: 9 frames at 320x240, 7 at 256x256."""
    photos = [read_image(shared_data / n) for n in PHOTOS]
    root = tmp_path_factory.mktemp("streams")
    a = write_clip(root / "a.avi", [fit(photos[i % 3], 320, 240) for i in range(9)])
    b = write_clip(root / "b.avi", [fit(photos[(i + 1) % 3], 256, 256) for i in range(7)])
    return a, b


def _per_frame(det, path):
    from video_clips import read_all

    return [det.detect(f) for f in read_all(path)]


def test_stream_detector_gives_every_frame_of_every_source_in_order_with_frame_by_frame_faces(clips):
    det = MTCNN(minsize=40)
    a, b = clips
    ended = []
    sd = StreamDetector(det, [str(a), str(b), str(a)], chunk=4,
                        on_end=lambda st: ended.append((st.name, st.frames)))
    got: dict[str, list] = {}
    seen: dict[str, list[float]] = {}  # when this loop got each source's results, seconds from before the start
    t_before = time.perf_counter()
    for r in sd:
        got.setdefault(r.source, []).append(r)
        seen.setdefault(r.source, []).append(time.perf_counter() - t_before)
    assert sorted(got) == ["a", "a-2", "b"]
    for name, path in (("a", a), ("a-2", a), ("b", b)):
        expect = _per_frame(det, path)
        assert [r.index for r in got[name]] == list(range(len(expect)))
        for r, faces in zip(got[name], expect):
            np.testing.assert_allclose(r.faces.boxes, faces.boxes, atol=1e-3)
            np.testing.assert_allclose(r.faces.scores, faces.scores, atol=1e-5)
        st = sd.stats[name]
        assert st.frames == len(expect) == st.expected_frames and st.end == "end of file" and st.error is None
        assert st.decoder == "opencv"
        # the times are the source's own: its first and last results, counted from the start (which came
        # after t_before), so no later than this loop received them; fps is frames over that span
        assert 0 < st.first_result_s <= seen[name][0] and st.first_result_s <= st.wall_s <= seen[name][-1]
        assert st.fps == pytest.approx(st.frames / st.wall_s)
    assert sorted(ended) == [("a", 9), ("a-2", 9), ("b", 7)]  # each after its last result


def test_stream_detector_run_calls_back_per_source(clips):
    a, b = clips
    counts = {"a": 0, "b": 0}

    def count(name):
        def cb(r):
            counts[name] += 1
        return cb

    stats = StreamDetector(MTCNN(minsize=40), [str(a), str(b)], chunk=3).run({"a": count("a"), "b": count("b")})
    assert counts == {"a": 9, "b": 7} and stats["a"].frames == 9


def test_a_missing_source_is_reported_and_the_others_still_run_when_skipping_failures(clips, tmp_path):
    a, _ = clips
    missing = tmp_path / "missing.mp4"
    with pytest.raises(SourceError, match="no such file"):
        StreamDetector(MTCNN(minsize=40), [str(a), str(missing)])
    sd = StreamDetector(MTCNN(minsize=40), [str(a), str(missing)], skip_failed=True)
    n = sum(1 for _ in sd)
    assert n == 9 and "no such file" in sd.stats["missing"].error and sd.stats["a"].error is None


def test_a_lost_live_source_does_not_stall_a_file_while_it_reconnects(clips):
    """The camera's reconnect can only finish once the file has delivered its last result: if the file
    waited for the camera, this would never end. The wait is on that event; its DEADLOCK_S limit only
    turns such a hang into a failure and is never reached when the code works."""
    a, _ = clips
    file_done = threading.Event()
    gave_up = []

    def reconnect():
        if not file_done.wait(DEADLOCK_S):
            gave_up.append(True)
        return FakeCapture(bgr_frames(2, value=100))

    spec = parse_source("rtsp://camera.invalid/live")
    camera = FrameReader(spec, opener=scripted_opener([FakeCapture(bgr_frames(3)), reconnect]), drop_stale=False,
                         retries=1, retry_delay=0.0, on_event=lambda m: None)

    def on_end(st):
        if st.name == "a":
            file_done.set()

    sd = StreamDetector(MTCNN(minsize=40), [str(a), camera], chunk=4, on_end=on_end)
    order = [(r.source, r.index) for r in sd]
    assert not gave_up
    cam = [i for s, i in order if s != "a"]
    assert cam == [0, 1, 2, 3, 4] and [i for s, i in order if s == "a"] == list(range(9))
    assert order.index(("camera.invalid_live", 3)) > order.index(("a", 8))  # reconnected after the file ended
    st = sd.stats["camera.invalid_live"]
    assert st.reconnects == 1 and "source lost after 5 frames" in st.error


def test_frames_in_flight_are_bounded_by_the_queues_whatever_the_length(shared_data, tmp_path):
    """README / docs/video.md: stages joined by bounded queues, so memory depends on the chunk size and the
    number of sources, not on how long they run. The consumer stops after its first result and waits until
    every stage is blocked on a full queue (the reader's, the detector's input and output): then frames
    decoded but not yet handed out are at most what those queues and the stages between them hold."""
    photos = [fit(read_image(shared_data / n), 160, 120) for n in PHOTOS]
    clip = write_clip(tmp_path / "long.avi", [photos[i % 3] for i in range(90)])
    chunk = 4
    sd = StreamDetector(MTCNN(minsize=40), [str(clip)], chunk=chunk)
    reader = sd.readers[0]
    # the reader's queue + a frame in its hand, a batch in the gatherer's hand, the detector's input queue,
    # a batch in the detector's hand, its output queue, and the batch the consumer is being handed
    bound = reader._queue.maxsize + 1 + chunk * (1 + sd._work.maxsize + 1 + sd._done.maxsize + 1)
    handed = []
    for r in sd:
        handed.append(r.index)
        if len(handed) == 1:
            deadline = time.monotonic() + DEADLOCK_S  # a hang guard, not a time the test expects to wait
            while not (reader._queue.full() and sd._work.full() and sd._done.full()):
                assert time.monotonic() < deadline, "the stages never filled their queues"
                time.sleep(0.005)
            held = reader.stats.frames - len(handed)
            assert chunk < held <= bound, (held, bound)  # they did read ahead, and no further than the queues
        assert reader.stats.frames - len(handed) <= bound
    assert handed == list(range(90)) and sd.stats["long"].frames == 90


def test_a_file_job_loads_cached_gpu_kernels_from_its_start_and_waits_for_them_before_detecting_a_live_one_never(
        clips):
    """As a folder job: a job of files starts loading the kernels an earlier process compiled when it is
    made (while its sources open) and waits for them before its first detection (else its first chunk runs
    on torch ops, paying their one-time costs, and the job waits after it anyway); a camera's frames would
    go stale meanwhile, so a job with a live source never waits. The backend here is the CPU engine with
    the two GPU-backend methods the stream job asks for put on it."""
    a, b = clips
    for sources, waits in (([str(a), str(b)], True), ([str(a), "live"], False)):
        det = MTCNN(minsize=40)
        events: list = []
        det.backend.kernels_cached = lambda: True
        det.backend.wait_for_kernels = lambda timeout=None, events=events: events.append(("wait", timeout))
        detect_batch = det.detect_batch
        det.detect_batch = lambda frames, events=events, f=detect_batch: events.append("detect") or f(frames)
        if sources[-1] == "live":
            sources[-1] = FrameReader(parse_source("rtsp://camera.invalid/live"),
                                      opener=scripted_opener([FakeCapture(bgr_frames(3))]), drop_stale=False,
                                      retries=0, on_event=lambda m: None)
        job = StreamDetector(det, sources, chunk=4, skip_failed=True)
        assert events == ([("wait", 0)] if waits else [])  # loading from the start, not waited for yet
        n = sum(1 for _ in job)
        waited = [e for e in events if e != "detect"]
        assert n == 9 + (7 if waits else 3) and events.count("detect") > 1
        if waits:
            assert waited == [("wait", 0), ("wait", None)] and events[2] == "detect"
        else:
            assert waited == []
