"""NVDEC (GPU) decoding: the pieces that run anywhere (colour conversion, segment planning and ordering,
error messages), and the GPU paths against OpenCV's decode (marked gpu: skipped without CUDA or
without PyNvVideoCodec)."""
from __future__ import annotations

import json
import threading

import cv2
import numpy as np
import pytest

from fastmtcnn.cli import main
from fastmtcnn.nvdec import ordered_segments, plan_segments

CLIPS = ["group_720p_h264.mp4", "group_1080p_h264.mp4"]


def _write_y4m(path, planes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Raw yuv420p frames in a .y4m file: OpenCV reads it through FFmpeg's same YUV -> BGR conversion
    as a decoded H.264 frame, so it shows what that conversion gives for chosen Y, U, V values."""
    h, w = planes[0][0].shape
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\n".encode())
        for y, u, v in planes:
            f.write(b"FRAME\n" + y.tobytes() + u.tobytes() + v.tobytes())


def test_nv12_conversion_is_bit_exact_with_opencv_video_decoding_for_all_chroma_values(tmp_path):
    torch = pytest.importorskip("torch")
    from fastmtcnn.nvdec import nv12_to_rgb

    u = np.tile(np.arange(256, dtype=np.uint8), (256, 1))  # every (U, V) pair once per frame
    v = np.ascontiguousarray(u.T)
    frames = []
    for k in range(4):
        yy, xx = np.mgrid[:512, :512]
        frames.append((((yy * 7 + xx * 3 + k * 61) % 256).astype(np.uint8), u, v))
    _write_y4m(tmp_path / "all.y4m", frames)
    cap = cv2.VideoCapture(str(tmp_path / "all.y4m"))
    for y, u_, v_ in frames:
        ok, bgr = cap.read()
        assert ok
        nv12 = np.concatenate([y, np.stack([u_, v_], axis=-1).reshape(256, 512)])
        padded = np.zeros((768, 640), np.uint8)  # decoder surfaces have a row pitch wider than the frame
        padded[:, :512] = nv12
        rgb = nv12_to_rgb(torch.from_numpy(padded)[:, :512])
        assert rgb.shape == (1, 512, 512, 3) and rgb.dtype == torch.uint8
        np.testing.assert_array_equal(rgb[0].numpy(), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()


def test_nv12_conversion_rejects_what_is_not_8bit_nv12():
    torch = pytest.importorskip("torch")
    from fastmtcnn.nvdec import nv12_to_rgb

    with pytest.raises(ValueError, match="not 8-bit NV12"):
        nv12_to_rgb(torch.zeros((1, 100, 64), dtype=torch.uint8))  # 100 rows is not 1.5 x an even height
    with pytest.raises(ValueError, match="10-bit"):
        nv12_to_rgb(torch.zeros((96, 64), dtype=torch.int16))


def test_segments_start_on_keyframes_and_cover_every_frame_once():
    keys = list(range(0, 300, 60))
    assert plan_segments(300, keys, 32) == [(0, 60), (60, 120), (120, 180), (180, 240), (240, 300)]
    assert plan_segments(300, keys, 100) == [(0, 120), (120, 240), (240, 300)]
    assert plan_segments(300, [0], 32) == [(0, 300)]  # one GOP: nothing to split
    assert plan_segments(70, None, 32) == [(0, 32), (32, 64), (64, 70)]  # no keyframe list: cut anywhere
    assert plan_segments(10, keys, 32) == [(0, 10)]


@pytest.mark.parametrize("sessions", [1, 2, 3, 5])
def test_several_sessions_yield_the_segments_pieces_in_frame_order(sessions):
    segments = plan_segments(250, list(range(0, 250, 30)), 30)
    seen = []
    lock = threading.Lock()

    def decode(j, start, end):  # pieces of up to 8 frame numbers; records which session decoded what
        for a in range(start, end, 8):
            with lock:
                seen.append((j, a))
            yield a, np.arange(a, min(end, a + 8))

    pieces = list(ordered_segments(segments, sessions, decode, depth=1))
    assert np.concatenate([p for _, p in pieces]).tolist() == list(range(250))
    assert {j for j, _ in seen} == set(range(min(sessions, len(segments))))  # every session took its share
    for j, a in seen:  # session j decoded exactly segments j, j+k, ...
        seg = next(i for i, (s, e) in enumerate(segments) if s <= a < e)
        assert seg % min(sessions, len(segments)) == j


def test_a_session_failure_is_raised_where_it_happened_in_the_stream():
    segments = [(0, 10), (10, 20), (20, 30)]

    def decode(j, start, end):
        if start == 20:
            raise RuntimeError("decoder broke")
        yield start, list(range(start, end))

    got = []
    with pytest.raises(RuntimeError, match="decoder broke"):
        for _, piece in ordered_segments(segments, 2, decode):
            got.extend(piece)
    assert got == list(range(20))  # everything before the broken segment came through, in order


def test_nvdec_needs_the_torch_cuda_backend_in_one_line(shared_data, capsys):
    clip = shared_data / "video" / CLIPS[0]
    rc = main(["video", str(clip), "--decoder", "nvdec", "--max-frames", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("fastmtcnn video: error: --decoder nvdec:") and "--device cuda" in err[0]


def test_missing_pynvvideocodec_says_how_to_install_it():
    from fastmtcnn.nvdec import import_nvc

    try:
        import PyNvVideoCodec  # noqa: F401
    except Exception:  # noqa: BLE001 - without a driver its import raises more than ImportError
        with pytest.raises(RuntimeError, match=r"pip install 'fastmtcnn\[nvdec\]'"):
            import_nvc()
    else:
        pytest.skip("PyNvVideoCodec is installed here")


# ---------------------------------------------------------------------------------------------- GPU

def _gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from fastmtcnn.nvdec import unavailable

    why = unavailable(torch.device("cuda"))
    if why:
        pytest.skip(why)
    return torch


def _opencv_frames(path):
    """The clip's frames as OpenCV decodes them (RGB), one at a time: a 1080p clip would not fit in memory."""
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def _assert_frames_equal(got, path, what: str) -> None:
    """got: (index, RGB uint8 CUDA tensor) as they come (compared one by one, not kept); equal to OpenCV's
    frames, every one of the clip's 300, in order."""
    import torch

    n = 0
    want = _opencv_frames(path)
    for index, g in got:
        r = next(want, None)
        assert r is not None, f"{what}: more frames than OpenCV decodes"
        assert index == n, f"{what}: frame {n} came as {index}"
        assert g.is_cuda and g.dtype == torch.uint8 and tuple(g.shape) == r.shape, (what, n)
        diff = np.abs(g.cpu().numpy().astype(int) - r.astype(int))
        assert diff.max() == 0, (what, n, diff.mean(), diff.max())
        n += 1
    assert next(want, None) is None and n == 300, (what, n)


@pytest.mark.gpu
@pytest.mark.parametrize("clip", CLIPS)
def test_nvdec_with_its_default_sessions_gives_opencvs_frames_over_the_whole_clip(shared_data, clip, monkeypatch):
    """What `fastmtcnn video` and StreamDetector do by default on a CUDA detector: NVDEC with 4 sessions for
    one file, each decoding keyframe segments; every frame of the clip, in order, bit-exact with OpenCV."""
    _gpu()
    from fastmtcnn import MTCNN, StreamDetector, nvdec

    opened = []

    class Recorded(nvdec.NvdecFile):  # the decoder StreamDetector opens, to see its sessions and segments
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(nvdec, "NvdecFile", Recorded)
    path = shared_data / "video" / clip
    sd = StreamDetector(MTCNN(backend="torch", device="cuda"), [str(path)])
    assert sd.stats[path.stem].decoder == "nvdec" and len(opened) == 1
    assert len(opened[0]._streams) == 4 and len(opened[0].segments) >= 4, opened[0].segments  # sessions at work
    _assert_frames_equal(((r.index, r.image) for r in sd), path, f"{clip}, 4 sessions")
    assert sd.stats[path.stem].frames == 300


@pytest.mark.gpu
@pytest.mark.parametrize("clip", CLIPS)
def test_nvdec_one_session_gives_opencvs_frames_over_the_whole_clip(shared_data, clip):
    torch = _gpu()
    from fastmtcnn.nvdec import NvdecFile

    path = shared_data / "video" / clip
    cap = NvdecFile(str(path), torch.device("cuda"))

    def frames():
        n = 0
        while True:
            ok, f = cap.read()
            if not ok:
                return
            yield n, f
            n += 1

    try:
        _assert_frames_equal(frames(), path, f"{clip}, 1 session")
    finally:
        cap.release()


@pytest.mark.gpu
@pytest.mark.parametrize("sessions", [2, 4])
def test_nvdec_sessions_over_keyframe_segments_yield_every_frame_in_order(shared_data, sessions):
    torch = _gpu()
    from fastmtcnn.nvdec import NvdecFile

    path = str(shared_data / "video" / CLIPS[1])

    def checksums(cap):
        sums = []
        while True:
            ok, f = cap.read()
            if not ok:
                break
            sums.append(int(f.to(torch.int64).sum()) * 1000003 + int(f[::7, ::5].to(torch.int64).sum()))
        cap.release()
        return sums

    one = checksums(NvdecFile(path, torch.device("cuda"), sessions=1, piece=16))
    multi = NvdecFile(path, torch.device("cuda"), sessions=sessions, piece=16)
    assert len(multi.segments) > 1 and multi.segments[0][0] == 0 and multi.segments[-1][1] == 300
    assert len(one) == 300 and checksums(multi) == one


@pytest.mark.gpu
@pytest.mark.parametrize("clip", CLIPS)
def test_nvdec_and_opencv_paths_give_the_same_faces(shared_data, tmp_path, clip):
    _gpu()
    from fastmtcnn.metrics import greedy_match

    runs = {}
    for decoder in ("nvdec", "opencv"):
        js = tmp_path / f"{decoder}.jsonl"
        # --fp32: in fp16 a frame's faces may move with the frames sharing its batch, which the decoders
        # group differently (docs/gpu.md); this test is about the decoders' frames
        assert main(["video", str(shared_data / "video" / clip), "--device", "cuda", "--fp32",
                     "--decoder", decoder, "--max-frames", "90", "--minsize", "40", "--json", str(js), "-q"]) == 0
        recs = [json.loads(x) for x in open(js, encoding="utf-8")]
        assert recs[-1]["decoder"] == decoder and recs[-1]["frames"] == 90
        runs[decoder] = [r for r in recs if "frame" in r]
    assert [r["frame"] for r in runs["nvdec"]] == [r["frame"] for r in runs["opencv"]] == list(range(90))
    faces = matched = 0
    for a, b in zip(runs["nvdec"], runs["opencv"]):
        ba = np.array([f["box"] for f in a["faces"]]).reshape(-1, 4)
        bb = np.array([f["box"] for f in b["faces"]]).reshape(-1, 4)
        faces += max(len(ba), len(bb))
        matched += len(greedy_match(bb, ba, min_iou=0.99))
    assert faces > 0 and matched == faces
