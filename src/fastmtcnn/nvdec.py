"""Video decoding on the GPU (NVDEC, through PyNvVideoCodec): frames stay on the device.

`pip install 'fastmtcnn[nvdec]'` adds PyNvVideoCodec; NVDEC itself comes with
the NVIDIA driver (libnvcuvid). Nothing here imports it, or torch, until a
decoder is opened, so the module loads on any machine.

Frames leave the decoder as NV12 (its native 4:2:0 output) and become RGB
with FFmpeg's BT.601 limited-range conversion in the fixed-point form its x86
code uses, which is what OpenCV's `VideoCapture` gives for untagged H.264:
bit-exact (checked on every Y, U, V value through OpenCV's FFmpeg backend),
so NVDEC and OpenCV frames, and their faces, are the same. The decoder's own
RGB output uses BT.709 for such streams, a few levels off.

One NVDEC session decodes about 400 1080p frames/s; a file can be decoded by
several sessions at once, each taking every k-th segment of keyframe-aligned
frames, and read back in frame order (`ordered_segments`).
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, Sequence

from .sources import SourceError, SourceSpec, check_file, put_until

INSTALL = "pip install 'fastmtcnn[nvdec]'"

#: BT.601 limited range (Y 16-235, chroma 16-240) -> RGB as FFmpeg's x86 converter computes it: coefficients
#: in 1/8192 units, samples pre-shifted by 3 bits, each product's high 16 bits (floored) added up
_CY, _CRV, _CGU, _CGV, _CBU = (round(c * 8192) for c in (1.164383, 1.596027, -0.391762, -0.812968, 2.017232))


_import_error: str | None = None


def import_nvc():
    """The PyNvVideoCodec module, or RuntimeError saying how to get it (one line). A failed import is
    not retried: PyNvVideoCodec logs its own diagnostics on every attempt."""
    global _import_error
    if _import_error:
        raise RuntimeError(_import_error)
    try:
        import PyNvVideoCodec as nvc
    except ImportError as e:
        _import_error = f"NVDEC decoding needs PyNvVideoCodec: {INSTALL} ({e})"
        raise RuntimeError(_import_error) from None
    except Exception as e:  # noqa: BLE001 - its import checks the driver and raises when NVDEC is not usable
        _import_error = f"PyNvVideoCodec is installed but cannot start NVDEC: {_one_line(e)}"
        raise RuntimeError(_import_error) from None
    return nvc


def unavailable(device) -> str | None:
    """Why NVDEC cannot feed frames on `device` (a torch device or None), or None when it can."""
    if device is None or getattr(device, "type", None) != "cuda":
        return "NVDEC frames go to the torch backend on a CUDA device (backend= torch device= cuda)"
    try:
        import_nvc()
    except RuntimeError as e:
        return str(e)
    return None


def nv12_to_rgb(nv12):
    """NV12 frames (N, H*3/2, W) or (H*3/2, W) uint8 tensor -> (N, H, W, 3) uint8 RGB, on the same device.

    Luma rows first, then H/2 rows of interleaved U, V; each chroma pair serves a 2x2 block of pixels.
    """
    import torch

    x = nv12 if nv12.ndim == 3 else nv12.unsqueeze(0)
    n, rows, w = x.shape
    h = rows * 2 // 3
    if x.dtype != torch.uint8 or rows != h * 3 // 2 or h % 2 or w % 2:
        raise ValueError(f"not 8-bit NV12: {x.dtype} {tuple(x.shape)} (10-bit and 4:4:4 video: use decoder= opencv)")
    # luma as (n, h/2, 2, w/2, 2) 2x2 blocks, chroma as (n, h/2, 1, w/2, 1): broadcasting shares each
    # chroma pair over its block without materialising full-size chroma planes
    y = (((x[:, :h].to(torch.int32) - 16) * (8 * _CY)) >> 16).reshape(n, h // 2, 2, w // 2, 2)
    uv = (x[:, h:].reshape(n, h // 2, 1, w // 2, 2).to(torch.int32) - 128) * 8
    u, v = uv[..., 0:1], uv[..., 1:2]
    out = torch.empty((n, h, w, 3), dtype=torch.uint8, device=x.device)
    for ch, chroma in enumerate(((v * _CRV) >> 16, ((u * _CGU) >> 16) + ((v * _CGV) >> 16), (u * _CBU) >> 16)):
        out[..., ch] = (y + chroma).clamp_(0, 255).reshape(n, h, w)
    return out


def as_rgb(t):
    """A decoder frame tensor as (N, H, W, 3) RGB: NV12 is converted, RGB (HWC or CHW) passed through."""
    if t.ndim == 4 and t.shape[-1] == 1:  # NV12 as (N, H*3/2, W, 1)
        t = t[..., 0]
    if t.ndim == 4 and t.shape[-1] == 3:
        return t
    if t.ndim == 4 and t.shape[1] == 3:
        return t.permute(0, 2, 3, 1).contiguous()
    return nv12_to_rgb(t)


def plan_segments(n: int, keyframes: Sequence[int] | None, min_len: int) -> list[tuple[int, int]]:
    """Split frames [0, n) into segments that start on keyframes and hold at least min_len frames
    (the last may be shorter). Without keyframe positions the cuts are every min_len frames: still
    correct, a seek decodes from the keyframe before, only slower."""
    min_len = max(1, int(min_len))
    keys = sorted({int(k) for k in keyframes or () if 0 < int(k) < n})
    if not keyframes:
        keys = list(range(min_len, n, min_len))
    out: list[tuple[int, int]] = []
    start = 0
    for k in keys:
        if k - start >= min_len:
            out.append((start, k))
            start = k
    if start < n:
        out.append((start, n))
    return out


_DONE = object()


def ordered_segments(segments: Sequence[tuple[int, int]], sessions: int,
                     decode: Callable[[int, int, int], Iterable], depth: int = 2,
                     stop: threading.Event | None = None) -> Iterator:
    """Decode segments with `sessions` workers at once and yield their pieces in frame order.

    Worker j decodes segments j, j+k, j+2k... (k = sessions) by calling decode(j, start, end), an
    iterable of pieces (each a batch of consecutive frames), into its own queue of `depth` pieces,
    so every worker runs ahead by a bounded amount while the reader drains the segments in order.
    A worker's exception is raised here, at the point of the stream where it happened.
    """
    k = max(1, min(int(sessions), len(segments)))
    stop = stop or threading.Event()
    queues = [queue.Queue(maxsize=max(1, depth)) for _ in range(k)]

    def work(j: int) -> None:
        try:
            for start, end in segments[j::k]:
                for piece in decode(j, start, end):
                    if not put_until(queues[j], piece, stop):
                        return
                if not put_until(queues[j], _DONE, stop):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the reader, in stream order
            put_until(queues[j], e, stop)

    threads = [threading.Thread(target=work, args=(j,), name=f"fastmtcnn-nvdec-{j}", daemon=True)
               for j in range(k)]
    for t in threads:
        t.start()
    try:
        for i in range(len(segments)):
            q = queues[i % k]
            while True:
                item = q.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
    finally:
        stop.set()
        for t, q in zip(threads, queues):
            while t.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(timeout=0.05)


def _gpu_index(device) -> int:
    import torch

    return device.index if device.index is not None else torch.cuda.current_device()


def _indexed(device):
    """torch.device('cuda') -> torch.device('cuda', n): set_device and the decoder need the index."""
    import torch

    device = torch.device(device)
    return torch.device(device.type, _gpu_index(device))


class NvdecFile:
    """A video file decoded on the GPU, cv2.VideoCapture-style: read() -> (ok, (H, W, 3) uint8 CUDA tensor).

    `sessions` SimpleDecoder sessions decode keyframe-aligned segments of at least `segment` frames
    in parallel, each into a queue of `depth` pieces of up to `piece` frames; by default deep enough
    to hold a whole segment (at most MAX_AHEAD frames), so GPU memory is about sessions x
    min(segment + piece, MAX_AHEAD) frames (4 sessions, 1080p, 60-frame GOPs: 2.3 GB). Frames come out
    in order. A segment that yields fewer frames than the container announced (a cut file) ends the
    stream there.
    """

    gives_rgb = True
    MAX_AHEAD = 256  # frames one session may decode ahead of the reader

    def __init__(self, path: str, device, *, sessions: int = 1, piece: int = 32, segment: int = 60,
                 depth: int | None = None, max_frames: int | None = None) -> None:
        import torch

        nvc = import_nvc()
        self._nvc, self.device, self.path = nvc, _indexed(device), str(path)
        self.piece = max(1, int(piece))
        self._streams = [torch.cuda.Stream(self.device) for _ in range(max(1, int(sessions)))]
        try:
            first = self._decoder(0, scan=sessions > 1)
            meta = first.get_stream_metadata()
            n = len(first)
        except Exception as e:  # noqa: BLE001 - PyNvVideoCodec's errors have no common type: one line for any
            raise SourceError(f"{path}: NVDEC cannot decode it: {_one_line(e)}", retry=False) from None
        keys = None
        if sessions > 1:
            try:  # segments start on keyframes; without their positions, cuts anywhere are still exact
                keys = list(first.get_scanned_stream_metadata().key_frame_indices)
            except Exception:  # noqa: BLE001 - keyframe positions are optional (see above)
                keys = None
        if n <= 0:
            raise SourceError(f"{path}: NVDEC cannot decode it: no frame count in the container", retry=False)
        self.frame_count = min(n, max_frames) if max_frames else n
        self.fps = float(getattr(meta, "average_fps", 0.0) or 0.0)
        self.segments = plan_segments(self.frame_count, keys, max(segment, self.piece)) if sessions > 1 \
            else [(0, self.frame_count)]
        if sessions > 1 and depth is None:
            # a session must hold a whole segment ahead, or it waits while the reader drains the others
            longest = max(e - s for s, e in self.segments)
            depth = min(-(-longest // self.piece) + 1, max(2, self.MAX_AHEAD // self.piece))
        self._decoders = {0: first}
        self._stop = threading.Event()
        self._pieces = ordered_segments(self.segments, len(self._streams), self._decode_segment, depth or 2,
                                        self._stop)
        self._current = None
        self._at = 0
        self._next_index = 0

    def _decoder(self, j: int, scan: bool = False):
        nvc = self._nvc
        return nvc.SimpleDecoder(self.path, gpu_id=_gpu_index(self.device), cuda_stream=self._streams[j].cuda_stream,
                                 use_device_memory=True, need_scanned_stream_metadata=scan,
                                 output_color_type=nvc.OutputColorType.NATIVE)

    def _decode_segment(self, j: int, start: int, end: int) -> Iterator[tuple[int, object]]:
        """(first frame index, (n, H, W, 3) RGB tensor) pieces of frames [start, end), by session j."""
        import torch

        torch.cuda.set_device(self.device)
        dec = self._decoders.get(j)
        if dec is None:
            dec = self._decoders[j] = self._decoder(j)
        stream = self._streams[j]
        dec.seek_to_index(start)
        pos = start
        while pos < end:
            frames = dec.get_batch_frames(min(self.piece, end - pos))
            if not frames:
                return
            with torch.cuda.stream(stream):
                rgb = as_rgb(torch.stack([torch.from_dlpack(f) for f in frames]))
            stream.synchronize()  # ready for the detector's stream; the decoder may now reuse its surfaces
            del frames
            yield pos, rgb
            pos += len(rgb)

    # -- cv2.VideoCapture's interface, as FrameReader uses it ----------------------------------------
    def isOpened(self) -> bool:
        return not self._stop.is_set()

    def get(self, prop: int) -> float:
        import cv2

        if prop == cv2.CAP_PROP_FPS:
            return self.fps
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return float(self.frame_count)
        return 0.0

    def read(self):
        """(True, frame) for the next frame in order; (False, None) at the end (or where a segment ran short)."""
        while self._current is None or self._at >= len(self._current):
            try:
                start, self._current = next(self._pieces)
            except StopIteration:
                return False, None
            if start != self._next_index:  # a segment ran short: what follows would skip frames
                self.release()
                return False, None
            self._at = 0
        frame = self._current[self._at]
        self._at += 1
        self._next_index += 1
        return True, frame

    def release(self) -> None:
        self._stop.set()
        self._pieces.close()
        self._current = None


class NvdecStream:
    """A network stream (RTSP/HTTP) decoded on the GPU, frame by frame, cv2.VideoCapture-style.

    PyNvVideoCodec's demuxer has no open/read timeouts, so a stream that stalls without closing
    blocks its reader; use it only where the OpenCV decoder is too slow (not tested here).
    """

    gives_rgb = True

    def __init__(self, url: str, device) -> None:
        import torch

        nvc = import_nvc()
        self.device = _indexed(device)
        self._stream = torch.cuda.Stream(self.device)
        try:
            self._dmx = nvc.CreateDemuxer(filename=url)
            self._dec = nvc.CreateDecoder(gpuid=_gpu_index(self.device), codec=self._dmx.GetNvCodecId(),
                                          cudacontext=0, cudastream=self._stream.cuda_stream, usedevicememory=True)
            self.fps = float(self._dmx.FrameRate() or 0.0)
        except Exception as e:  # noqa: BLE001 - PyNvVideoCodec's errors have no common type: one line for any
            raise SourceError(f"{url}: cannot open with NVDEC: {_one_line(e)}") from None
        self._frames = self._generate()
        self._open = True

    def _generate(self):
        import torch

        torch.cuda.set_device(self.device)
        for packet in self._dmx:
            for f in self._dec.Decode(packet):
                with torch.cuda.stream(self._stream):
                    rgb = as_rgb(torch.from_dlpack(f).unsqueeze(0))[0]
                self._stream.synchronize()
                yield rgb

    def isOpened(self) -> bool:
        return self._open

    def get(self, prop: int) -> float:
        import cv2

        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        try:
            return True, next(self._frames)
        except StopIteration:
            return False, None

    def release(self) -> None:
        self._open = False
        self._frames.close()


def opener(device, *, sessions: int = 1, piece: int = 32, max_frames: int | None = None):
    """A FrameReader opener that decodes files and network streams with NVDEC onto `device`."""

    def open_nvdec(spec: SourceSpec, width=None, height=None, timeout_s: float = 5.0):
        if width or height:
            raise SourceError("NVDEC frames are not resized: drop width=/height=, or use decoder= opencv",
                              retry=False)
        if spec.kind == "file":
            check_file(spec)
            return NvdecFile(spec.text, device, sessions=sessions, piece=piece, max_frames=max_frames)
        if spec.kind == "stream":
            return NvdecStream(spec.text, device)
        raise SourceError(f"{spec}: NVDEC decodes files and network streams, not {spec.kind} sources "
                          f"(use decoder= opencv)", retry=False)

    return open_nvdec


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
