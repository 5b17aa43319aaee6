"""`fastmtcnn video SOURCE...`: faces in video files, cameras, RTSP/HTTP streams or GStreamer pipelines.

The job is the library's `video.VideoJob` (decoding, batched or tracked
detection, annotated videos, JSON Lines, the window); this module turns the
flags into its arguments and prints the per-frame lines, the summaries and
the progress bar.
"""
from __future__ import annotations

import argparse
import sys
import time

from ..cli import add_detector_args, detector_from_args, in_flag_terms
from . import plural


def register(sub) -> None:
    p = sub.add_parser(
        "video",
        description="Detect faces in every SOURCE: video files, camera indices (0), RTSP/HTTP URLs, or "
                    "GStreamer pipelines ending in appsink. Frames of all sources are detected together in "
                    "chunks; outputs are per source. Draws boxes, scores, landmarks and the current FPS. "
                    "Every frame of a file is processed, in order; live sources drop frames that arrive "
                    "while the detector is busy, rather than lag, and reconnect when lost.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="video file, camera index, URL or GStreamer pipeline (several: processed at once)")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="FILE|DIR",
                     help="write the annotated video here (.mp4, .avi, .mkv); with several sources a folder, "
                          "which gets NAME.mp4 per source (NAME: the file's stem, camera0, the URL's host/path)")
    out.add_argument("--show", action="store_true",
                     help="show the annotated video in a window (q or Esc quits; one source)")
    out.add_argument("--json", metavar="FILE|DIR", help="write JSON Lines: one record per frame, then an end record "
                                                         "('-' for stdout); with several sources a folder that "
                                                         "gets NAME.jsonl per source, or '-' (records carry 'source')")
    out.add_argument("--out-fps", type=float, help="frame rate of --out (default: the source's, else 25)")
    out.add_argument("--fourcc", help="codec of --out as a FourCC, e.g. mp4v, MJPG, XVID (default by extension)")
    out.add_argument("-q", "--quiet", action="store_true", help="no per-frame lines, only the summary")
    src = p.add_argument_group("source")
    src.add_argument("--width", type=int, help="frame width to detect on (frames are resized; cameras are asked "
                                               "for it); with only one of --width/--height the aspect is kept")
    src.add_argument("--height", type=int, help="frame height to detect on")
    src.add_argument("--max-frames", type=int, help="stop each source after this many frames")
    src.add_argument("--no-drop", action="store_true",
                     help="live sources: queue every frame instead of dropping stale ones (output lags)")
    src.add_argument("--retries", type=int, default=5,
                     help="live sources: reconnect attempts when opening fails or the source is lost (default 5)")
    src.add_argument("--retry-delay", type=float, default=0.5,
                     help="first reconnect delay in seconds, doubled per attempt up to 8 s (default 0.5)")
    src.add_argument("--timeout", type=float, default=5.0, help="stream open/read timeout in seconds (default 5)")
    src.add_argument("--verbose", action="store_true", help="show OpenCV/FFmpeg's own log messages")
    bat = p.add_argument_group("decoding and batching")
    bat.add_argument("--chunk", type=int, metavar="N",
                     help="most frames per detector call, from all sources (default 32 on a CUDA device, else 4); "
                          "results are the same for any N")
    bat.add_argument("--decoder", choices=["auto", "opencv", "nvdec"], default="auto",
                     help="auto (default): NVDEC on the GPU for files when --device cuda and "
                          "PyNvVideoCodec is installed (pip install 'fastmtcnn[nvdec]'), else OpenCV")
    bat.add_argument("--nvdec-sessions", type=int, metavar="K",
                     help="NVDEC decoder sessions per file, each over every K-th keyframe segment "
                          "(default: 4 shared among the files)")
    trk = p.add_argument_group("tracking")
    trk.add_argument("--track", action="store_true",
                     help="tracking mode: between full detections run only RNet/ONet around each source's "
                          "previous faces (much faster; new faces appear at the next full detection)")
    trk.add_argument("--track-every", type=int, default=10, metavar="K",
                     help="tracking mode: full detection every K frames (default 10), and whenever a face is lost")
    add_detector_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, RuntimeError, OSError) as e:  # the library's words for what went wrong, as flags
        raise type(e)(in_flag_terms(str(e))) from None


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..records import mode
    from ..sources import parse_source
    from ..video import VideoJob, quiet_video_logs

    if not args.verbose:
        quiet_video_logs()
    specs = [parse_source(s) for s in args.sources]
    several = len(specs) > 1
    text = sys.stderr if args.json == "-" else sys.stdout
    lines = not args.quiet and not (args.out or args.show or args.json)  # only when nothing else shows results
    failed = False

    def summary(st) -> None:
        nonlocal failed
        if st.error:
            failed = True
            print(f"error: {in_flag_terms(st.error)}", file=sys.stderr)
        line = f"{st.spec}: {st.frames} frames, {st.faces} faces, mean {st.fps:.2f} FPS ({st.wall_s:.1f}s"
        line += f", first result after {st.first_result_s:.2f}s)" if st.first_result_s is not None else ")"
        if st.spec.live:
            line += f", {st.dropped} stale frames dropped"
            if st.reconnects:
                line += f", {st.reconnects} reconnects"
        if st.tracking:
            t = st.tracking
            line += f"; tracking: {t.full} full, {t.tracked} tracked, {t.redetect} re-detected"
        if job.outputs[st.name].written:
            line += f" -> {job.outputs[st.name].written}"
        print(line, file=text, flush=True)

    det = detector_from_args(args)
    job = VideoJob(det, specs, out=args.out, json=args.json, show=args.show, out_fps=args.out_fps,
                   fourcc=args.fourcc, track_every=args.track_every if args.track else None, skip_failed=several,
                   on_end=summary, chunk=args.chunk, decoder=args.decoder, max_frames=args.max_frames,
                   width=args.width, height=args.height, drop_stale=False if args.no_drop else None,
                   retries=args.retries, retry_delay=args.retry_delay, timeout_s=args.timeout,
                   nvdec_sessions=args.nvdec_sessions)
    for st in job.stats.values():
        if st.spec.live and not st.error and not args.no_drop:
            print(f"{st.spec}: live source: frames that arrive while the detector is busy are dropped, "
                  f"not queued (--no-drop to keep them)", file=text)
    bar = tqdm(total=job.expected_frames, unit="frame", file=sys.stderr, leave=False,
               disable=True if lines else None)
    t0 = time.perf_counter()
    try:
        for r in job:
            if lines:
                m = mode(r.tracked)
                print(f"{r.source + ' ' if several else ''}frame {r.index} ({r.time:.2f}s): "
                      f"{plural(len(r.faces), 'face')}" + (f" [{m}]" if m else ""), file=text, flush=True)
            bar.update(1)
    except KeyboardInterrupt:
        job.close(end="interrupted")
        return 130
    finally:
        bar.close()
    if several:
        dt = time.perf_counter() - t0
        n = sum(st.frames for st in job.stats.values())
        print(f"{len(specs)} sources: {n} frames in {dt:.1f}s, {n / dt if dt > 0 else 0:.1f} frames/s in all",
              file=text)
    return 1 if failed else 0
