"""Video files to faces, end to end: the video part of the GPU benchmark, as a function and a small CLI.

`run_video_job(paths, detector, decoder, chunk)` runs `StreamDetector` over
the files (several paths, or one path repeated, are decoded and detected at
once, frames sharing detector calls) and returns what a user waits for:
frames, wall seconds from opening the files to the last result, seconds to
the first result, frames per second in all and per source. Building the
detector is not in the time (time it around the call if it should be).
`detector=None` times decoding alone (frames are decoded and handed over, no
detection).

    python benchmarks/e2e_video.py --backend torch --device cuda --decoder nvdec opencv
    python benchmarks/e2e_video.py --backend torch --device cuda --decode-only --sessions 1 2 4
    python benchmarks/e2e_video.py --copies 16 --minsize 40 --backend torch --device cuda

(the clips default to ../shared/data/video/*.mp4; on the CPU machine use
--max-frames to keep it short).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = Path(os.environ.get("FASTMTCNN_SHARED_DATA", ROOT.parent / "shared" / "data"))

from fastmtcnn.detections import Detections  # noqa: E402
from fastmtcnn.streams import StreamDetector  # noqa: E402


@dataclass
class VideoJob:
    """What one run took: every frame of every file, from opening them to the last result."""

    frames: int
    faces: int
    wall_s: float
    first_result_s: float | None
    decoders: dict[str, str] = field(default_factory=dict)  # source name -> "nvdec" / "opencv"

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


class _Backend:
    def __init__(self, device) -> None:
        self.device = device


class DecodeOnly:
    """Stands in for the detector to time decoding alone: takes each batch, finds nothing."""

    def __init__(self, device=None) -> None:
        self.backend = _Backend(device)

    def detect_batch(self, frames):
        if type(frames).__module__.startswith("torch") and frames.is_cuda:
            import torch

            torch.cuda.synchronize(frames.device)
        return [Detections.empty() for _ in range(len(frames))]


def run_video_job(paths, detector, decoder: str = "auto", chunk: int | None = None, *,
                  max_frames: int | None = None, nvdec_sessions: int | None = None, device=None) -> VideoJob:
    """Detect faces in every frame of every path at once; timings from opening the files to the last result.

    detector: an MTCNN, or None to time decoding alone (then `device` says where NVDEC frames go).
    """
    det = detector if detector is not None else DecodeOnly(device)
    t0 = time.perf_counter()
    streams = StreamDetector(det, [str(p) for p in paths], chunk=chunk, decoder=decoder, max_frames=max_frames,
                             nvdec_sessions=nvdec_sessions, on_event=lambda m: None)
    first = None
    frames = faces = 0
    for r in streams:
        if first is None:
            first = time.perf_counter() - t0
        frames += 1
        faces += len(r.faces)
    wall = time.perf_counter() - t0
    for st in streams.stats.values():
        if st.error:
            raise RuntimeError(st.error)
    return VideoJob(frames, faces, wall, first, {n: s.decoder for n, s in streams.stats.items()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", nargs="+", help="video files (default: ../shared/data/video/*.mp4)")
    p.add_argument("--copies", type=int, nargs="+", default=[1], help="run each clip N times at once (16: 16 streams)")
    p.add_argument("--decoder", nargs="+", default=["auto"], choices=["auto", "opencv", "nvdec"])
    p.add_argument("--sessions", type=int, nargs="+", default=[None], help="NVDEC sessions per file")
    p.add_argument("--chunk", type=int, nargs="+", default=[None])
    p.add_argument("--max-frames", type=int)
    p.add_argument("--decode-only", action="store_true", help="time decoding alone (no detector)")
    p.add_argument("--minsize", type=float, default=20)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--device")
    p.add_argument("--fp16", action="store_const", const=True, help="torch: half precision (default on CUDA)")
    p.add_argument("--fp32", action="store_const", const=False, dest="fp16", help="torch: full precision")
    p.add_argument("--graphs", choices=["auto", "on", "off"], default="auto", help="torch on CUDA: CUDA graphs")
    p.add_argument("--rounds", type=int, default=1, help="repeat every job (the first round includes warm-up)")
    args = p.parse_args(argv)
    clips = [Path(c) for c in args.clips] if args.clips else sorted((DATA / "video").glob("*.mp4"))
    if not clips:
        p.error(f"no clips: give --clips, or put them in {DATA / 'video'}")
    det = device = None
    if args.backend == "torch":
        import torch

        device = torch.device(args.device or "cpu")
    if not args.decode_only:
        from fastmtcnn import MTCNN

        opts = {}
        if args.backend == "torch":
            opts["graphs"] = {"auto": "auto", "on": True, "off": False}[args.graphs]
            if args.fp16 is not None:
                opts["fp16"] = args.fp16
        det = MTCNN(minsize=args.minsize, backend=args.backend, device=args.device, **opts)
    what = "decode only" if args.decode_only else f"{det!r}"
    print(f"# {platform.node()} {platform.processor() or platform.machine()}; {what}")
    if device is not None and device.type == "cuda":
        import torch

        print(f"# GPU: {torch.cuda.get_device_name(device)}")
    print("| clip | copies | decoder | sessions | chunk | round | frames | wall s | first result s | fps in all "
          "| fps per stream |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for clip in clips:
        for copies in args.copies:
            for decoder in args.decoder:
                for sessions in args.sessions:
                    for chunk in args.chunk:
                        for rnd in range(args.rounds):
                            job = run_video_job([clip] * copies, det, decoder, chunk, max_frames=args.max_frames,
                                                nvdec_sessions=sessions, device=device)
                            used = "/".join(sorted(set(job.decoders.values())))
                            print(f"| {clip.name} | {copies} | {used} | {sessions or 'auto'} | {chunk or 'auto'} | "
                                  f"{rnd} | {job.frames} | {job.wall_s:.2f} | {job.first_result_s:.2f} | "
                                  f"{job.fps:.1f} | {job.fps / copies:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
