"""Video as a library: `VideoJob` (the job `fastmtcnn video` runs) and tracking over many sources
(`StreamDetector(track_every=K)`, `track.track_many`), checked against the tracker frame by frame."""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from fastmtcnn import MTCNN, StreamDetector, VideoJob, read_image
from fastmtcnn.cli import main
from fastmtcnn.track import Tracker, track_many
from video_clips import CYCLE, cycling_clips, fit, read_all, write_clip


@pytest.fixture(scope="module")
def det():
    return MTCNN(minsize=40)


@pytest.fixture(scope="module")
def clips(shared_data, tmp_path_factory):
    return cycling_clips(shared_data, tmp_path_factory.mktemp("job"))


def _tracked_alone(det, frames, every):
    """(tracked, faces as lists) per frame: one Tracker, frame by frame, the independent computation."""
    tracker = Tracker(det, every=every)
    return [(tracked, faces.to_list()) for faces, tracked in map(tracker.detect, frames)]


def test_track_many_gives_each_video_its_own_faces_and_shares_full_detections(det, shared_data):
    a = fit(read_image(shared_data / CYCLE[0]), 320, 240)
    b = fit(read_image(shared_data / CYCLE[1]), 256, 192)
    ta, tb = Tracker(det, every=2), Tracker(det, every=2)
    items = [(ta, a), (tb, b), (ta, a), (tb, b), (ta, a), (tb, b)]  # two videos of 3 frames, interleaved
    calls = []

    def detect(positions):
        calls.append(positions)
        return [det.detect(items[p][1]) for p in positions]

    out = track_many(items, detect)
    # frames 0 and 2 of each video are full detections (every 2): each step's two go in one call
    assert calls == [[0, 1], [4, 5]]
    got = {k: [(t, f.to_list()) for f, t in out[k::2]] for k in (0, 1)}
    assert got[0] == _tracked_alone(det, [a] * 3, 2) and got[1] == _tracked_alone(det, [b] * 3, 2)
    assert [t for t, _ in got[0]] == [False, True, False] and len(got[0][1][1]) == 1


def test_tracking_many_sources_gives_each_the_faces_it_gets_alone(det, shared_data, tmp_path):
    """A real H.264 clip (a grid of faces) and a panning lossless clip, tracked together in chunks of 4,
    against each run alone frame by frame, and against a Tracker over the decoded frames."""
    real = shared_data / "video" / "group_720p_h264.mp4"
    astronaut = fit(read_image(shared_data / CYCLE[0]), 320, 240)
    pan = write_clip(tmp_path / "pan.avi", [np.roll(astronaut, 5 * k, axis=1) for k in range(8)])

    def run(sources, chunk):
        got = defaultdict(list)
        with StreamDetector(det, [str(s) for s in sources], track_every=3, chunk=chunk, max_frames=8) as streams:
            for r in streams:
                got[r.source].append((r.index, r.tracked, r.faces.to_list()))
        return dict(got), streams.stats

    together, stats = run([real, pan], 4)
    alone = {**run([real], 1)[0], **run([pan], 1)[0]}
    assert together == alone
    for name, path in (("group_720p_h264", real), ("pan", pan)):
        expect = _tracked_alone(det, read_all(path, 8), 3)
        assert [(t, f) for _, t, f in together[name]] == expect, name
        assert [i for i, _, _ in together[name]] == list(range(8))
        s = stats[name].tracking
        assert s.frames == 8 and s.tracked == sum(t for t, _ in expect) > 0
    assert sum(len(f) for _, _, f in together["group_720p_h264"]) > 8  # many faces: not a comparison of empties


def _records(path):
    lines = [json.loads(x) for x in open(path, encoding="utf-8")]
    return [r for r in lines if "frame" in r], [r for r in lines if "end" in r]


def test_video_job_writes_the_cli_records_and_videos(det, clips, tmp_path, capsys):
    a, b = clips
    job = VideoJob(det, [str(a), str(b)], json=str(tmp_path / "lib"), out=str(tmp_path / "videos"), track_every=3,
                   chunk=4)
    stats = job.run()
    assert main(["video", str(a), str(b), "--json", str(tmp_path / "cli"), "--track", "--track-every", "3",
                 "--chunk", "4", "--minsize", "40", "-q"]) == 0
    assert "a.avi: 10 frames" in capsys.readouterr().out
    for name, path in (("a", a), ("b", b)):
        frames, end = _records(tmp_path / "lib" / f"{name}.jsonl")
        cli_frames, cli_end = _records(tmp_path / "cli" / f"{name}.jsonl")
        assert frames == cli_frames
        timeless = {"mean_fps": 0, "first_s": 0}
        assert [{**e, **timeless} for e in end] == [{**e, **timeless} for e in cli_end]
        images = read_all(path)
        expect = [{"source": name, "frame": i, "time": i / 10, "width": im.shape[1], "height": im.shape[0],
                   "mode": "track" if tracked else "full", "faces": faces}
                  for i, (im, (tracked, faces)) in enumerate(zip(images, _tracked_alone(det, images, 3)))]
        assert frames == expect
        n_faces = sum(len(r["faces"]) for r in frames)
        assert n_faces > 0 and end == [{"source": name, "end": "end of file", "frames": len(images),
                                        "faces": n_faces, "mean_fps": end[0]["mean_fps"],
                                        "first_s": end[0]["first_s"], "read": len(images),
                                        "dropped": 0,
                                        "reconnects": 0, "decoder": "opencv"}]
        # the first result comes after the start and before the last one (mean_fps counts from the start)
        assert 0 < end[0]["first_s"] <= len(images) / end[0]["mean_fps"] + 1e-3
        assert stats[name].frames == len(images) and stats[name].tracking.frames == len(images)
        assert job.outputs[name].written == str(tmp_path / "videos" / f"{name}.mp4")
        assert len(read_all(job.outputs[name].written)) == len(images)


@pytest.mark.parametrize("how", ["break", "interrupted"])
def test_stopping_a_job_early_still_ends_every_output(det, clips, tmp_path, how):
    a, b = clips
    with VideoJob(det, [str(a), str(b)], json=str(tmp_path / "js"), out=str(tmp_path / "v"), chunk=2) as job:
        if how == "break":  # leaving the loop closes the job
            for k, _ in enumerate(job):
                if k == 3:
                    break
        else:  # what the command line does on Ctrl-C
            results = iter(job)
            for _ in range(4):
                next(results)
            job.close(end="interrupted")
    seen = 0
    for name in ("a", "b"):
        frames, end = _records(tmp_path / "js" / f"{name}.jsonl")
        assert end[0]["end"] == ("stopped" if how == "break" else "interrupted")
        assert end[0]["frames"] == len(frames) and "error" not in end[0]
        assert len(read_all(tmp_path / "v" / f"{name}.mp4")) == len(frames)  # the video was finished, readable
        seen += len(frames)
    assert seen == 4


class _BreaksOnCall:
    """A detector whose n-th detector call fails (a GPU that runs out of memory, say)."""

    def __init__(self, det, n: int) -> None:
        self.det, self.backend, self.n = det, det.backend, n

    def detect_batch(self, frames):
        self.n -= 1
        if self.n == 0:
            raise RuntimeError("detector broke")
        return self.det.detect_batch(frames)


def test_a_failed_detector_call_keeps_what_was_written_readable(det, clips, tmp_path):
    a, _ = clips
    js, out = tmp_path / "a.jsonl", tmp_path / "a.avi"
    job = VideoJob(_BreaksOnCall(det, 3), [str(a)], json=str(js), out=str(out), chunk=2)
    with pytest.raises(RuntimeError, match="detector broke"):
        job.run()
    frames, end = _records(js)
    assert [r["frame"] for r in frames] == [0, 1, 2, 3] and end == []  # no end record: the job did not end
    assert len(read_all(out)) == 4


def test_output_errors_name_the_library_arguments(det, clips, tmp_path):
    a, b = clips
    with pytest.raises(ValueError, match="with several sources out= is a folder"):
        VideoJob(det, [str(a), str(b)], out=str(tmp_path / "x.mp4"))
    with pytest.raises(ValueError, match="show= takes one source"):
        VideoJob(det, [str(a), str(b)], show=True)
    with pytest.raises(ValueError, match="track_every must be >= 1"):
        VideoJob(det, [str(a)], track_every=0)


@pytest.mark.gpu
def test_tracking_on_nvdec_frames_gives_the_faces_of_opencv_frames(shared_data):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from fastmtcnn.metrics import greedy_match
    from fastmtcnn.nvdec import unavailable

    if unavailable(torch.device("cuda")):
        pytest.skip(unavailable(torch.device("cuda")))
    # fp32: in fp16 a frame's faces may move with the frames that share its batch, which the two decoders
    # group differently (docs/gpu.md); the frames themselves are bit-identical (tests/test_nvdec.py)
    gpu = MTCNN(minsize=40, backend="torch", device="cuda", fp16=False)
    clip = str(shared_data / "video" / "group_720p_h264.mp4")
    runs = {}
    for decoder in ("nvdec", "opencv"):
        with StreamDetector(gpu, [clip, clip], decoder=decoder, track_every=5, max_frames=30) as streams:
            runs[decoder] = [(r.source, r.index, r.tracked, r.faces) for r in streams]
        assert {st.decoder for st in streams.stats.values()} == {decoder}
        for source in {x[0] for x in runs[decoder]}:  # each source's frames in order, each once
            assert [x[1] for x in runs[decoder] if x[0] == source] == list(range(30))
        # the two sources' results interleave as their decoders deliver: compared source by source
        runs[decoder].sort(key=lambda x: (x[0], x[1]))
    assert [x[:3] for x in runs["nvdec"]] == [x[:3] for x in runs["opencv"]]
    assert sum(t for _, _, t, _ in runs["nvdec"]) > 30  # most frames tracked
    for (*_, fa), (*_, fb) in zip(runs["nvdec"], runs["opencv"]):
        assert len(fa) == len(fb) and len(greedy_match(fa.boxes, fb.boxes, min_iou=0.99)) == len(fb)


class _TensorCapture:
    """OpenCV's decoder handing out RGB torch tensors, as NVDEC does on the GPU (`gives_rgb`)."""

    gives_rgb = True

    def __init__(self, path: str) -> None:
        import cv2

        self.cv2, self.cap = cv2, cv2.VideoCapture(path)

    def read(self):
        import torch

        ok, bgr = self.cap.read()
        return (True, torch.from_numpy(self.cv2.cvtColor(bgr, self.cv2.COLOR_BGR2RGB))) if ok else (False, None)

    def get(self, prop):
        return self.cap.get(prop)

    def isOpened(self):
        return self.cap.isOpened()

    def release(self):
        self.cap.release()


def test_tracking_and_outputs_take_frames_that_are_tensors(clips, shared_data, tmp_path):
    """The path of NVDEC frames, on the CPU: tensors through tracking, records and the video writer."""
    pytest.importorskip("torch")
    from fastmtcnn.sources import FrameReader

    try:
        det = MTCNN(minsize=40, backend="torch", device="cpu")
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"torch backend not available: {e}")
    a, _ = clips
    astronaut = fit(read_image(shared_data / CYCLE[0]), 320, 240)
    b = write_clip(tmp_path / "b.avi", [np.roll(astronaut, 5 * k, axis=1) for k in range(6)])  # a pan: tracked

    def readers():
        return [FrameReader(str(p), opener=lambda spec, *_: _TensorCapture(spec.text)) for p in (a, b)]

    def run(sources):
        with StreamDetector(det, sources, track_every=3, chunk=4) as streams:
            return sorted((r.source, r.index, r.tracked, r.faces.to_list()) for r in streams)

    from_tensors = run(readers())
    assert from_tensors == run([str(a), str(b)]) and len(from_tensors) == 16
    assert {t for _, _, t, _ in from_tensors} == {True, False}
    job = VideoJob(det, readers(), out=str(tmp_path / "v"), json=str(tmp_path / "js"), track_every=3)
    stats = job.run()
    for name, path in (("a", a), ("b", b)):
        frames, _ = _records(tmp_path / "js" / f"{name}.jsonl")
        assert [(r["frame"], r["width"]) for r in frames] == [(i, read_all(path)[0].shape[1])
                                                              for i in range(stats[name].frames)]
        assert len(read_all(tmp_path / "v" / f"{name}.mp4")) == stats[name].frames == len(read_all(path))
