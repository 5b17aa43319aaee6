"""End to end on one GPU: from files on disk to results, ours vs facenet-pytorch doing the same job.

Run on a CUDA machine (facenet-pytorch 2.6.0 installed; PyNvVideoCodec for
the NVDEC rows):

    python benchmarks/bench_e2e_gpu.py [--data ../shared/data] [--jobs video streams folder start]

Jobs (each printed as a table, all measured in this one run):
- video: each H.264 clip of DATA/video, minsize 40 and 20: frames/s of a
  warm process over the whole file (decode included), time to the first
  frame's result, default settings vs the best flags, and facenet-pytorch on
  the same frames the way its README shows (PIL frames, `detect`, batches of 16);
- streams: 16 copies of one clip at once in one process;
- folder: ~500 JPEGs of mixed sizes made from DATA's photos (6 sizes,
  640x480 to 4000x3000, names shuffled), `detect_photos` (nvJPEG, size
  groups) with default settings and the best flags vs facenet-pytorch one by
  one (on a subset: it is slow);
- start: time from a fresh process's start to its first result, with the
  command users run (`fastmtcnn detect`/`video ... --device cuda`).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

sys.path.insert(0, str(ROOT / "benchmarks"))

from e2e_video import run_video_job  # noqa: E402
from fastmtcnn import MTCNN  # noqa: E402
from fastmtcnn.photos import detect_photos  # noqa: E402

FOLDER_SIZES = ((640, 480), (1280, 720), (1920, 1080), (2048, 1536), (3264, 2448), (4000, 3000))
#: the best flags we know per job; "default" is what a user gets with --device cuda
BEST = dict(fp16=True, graphs=True)


def make_folder(data: Path, root: Path, variants: int = 6) -> list[str]:
    """~500 JPEGs: every photo of `data` centre-cropped to each size's aspect, resized, in `variants` versions."""
    photos = sorted(p for p in data.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    rng = random.Random(0)
    paths = []
    for p in photos:
        img = cv2.imread(str(p))
        for w, h in FOLDER_SIZES:
            ih, iw = img.shape[:2]
            s = min(iw / w, ih / h)
            cw, ch = int(w * s), int(h * s)
            crop = img[(ih - ch) // 2:(ih - ch) // 2 + ch, (iw - cw) // 2:(iw - cw) // 2 + cw]
            out = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if s > 1 else cv2.INTER_CUBIC)
            for v in range(variants):
                im = out[:, ::-1] if v % 2 else out
                name = root / f"{rng.getrandbits(40):010x}.jpg"
                cv2.imwrite(str(name), np.ascontiguousarray(im), [cv2.IMWRITE_JPEG_QUALITY, 75 + 4 * v])
                paths.append(str(name))
    return sorted(paths)  # a folder's listing order: sizes interleaved at random


def facenet(minsize: float):
    from facenet_pytorch import MTCNN as FaceNetMTCNN

    return FaceNetMTCNN(keep_all=True, min_face_size=minsize, device="cuda")


def sync():
    import torch

    torch.cuda.synchronize()


def job_folder(data: Path, minsizes, subset: int) -> list[dict]:
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_folder(data, Path(tmp))
        dims = [Image.open(p).size for p in paths]
        print(f"\n== folder: {len(paths)} JPEGs, {len(set(dims))} sizes (640x480 .. 4000x3000) ==", flush=True)
        import torch

        from fastmtcnn.photos import _read, decode_on_gpu

        for rnd in range(2):  # reading + nvJPEG alone: the floor of this job
            t = time.perf_counter()
            for i in range(0, len(paths), 32):
                chunk = paths[i:i + 32]
                decode_on_gpu([(p, _read(p)) for p in chunk], torch.device("cuda"))
            sync()
            dec = len(paths) / (time.perf_counter() - t)
        mp = sum(w * h for w, h in dims) / 1e6
        print(f"read + nvJPEG decode alone (one thread): {dec:.1f} img/s, {mp * dec / len(paths):.0f} MP/s", flush=True)
        rows.append(dict(job="folder-decode", rate=dec, megapixels=mp))
        print(f"{'minsize':>7} {'settings':>9} {'img/s':>8} {'first s':>8} {'faces':>6} "
              f"{'facenet img/s':>13} {'ratio':>7}")
        for minsize in minsizes:
            fn = facenet(minsize)
            fn.detect(Image.open(paths[0]).convert("RGB"))
            sub = paths[::max(1, len(paths) // subset)][:subset]
            t = time.perf_counter()
            for p in sub:  # facenet-pytorch's README: PIL image in, mtcnn.detect(img)
                fn.detect(Image.open(p).convert("RGB"))
            f_rate = len(sub) / (time.perf_counter() - t)
            for name, opts in (("default", {}), ("best", BEST)):
                det = MTCNN(minsize=minsize, device="cuda", **opts)
                for rnd in range(2):  # the first pass pays captures (graphs) and the nvJPEG set-up
                    t = time.perf_counter()
                    first = None
                    faces = 0
                    for r in detect_photos(det, paths):
                        first = first or time.perf_counter() - t
                        faces += len(r.faces) if r.ok else 0
                    dt = time.perf_counter() - t
                rate = len(paths) / dt
                rows.append(dict(job="folder", minsize=minsize, settings=name, rate=rate, first=first, faces=faces,
                                 facenet=f_rate, ratio=rate / f_rate))
                print(f"{minsize:>7} {name:>9} {rate:8.1f} {first:8.3f} {faces:>6} "
                      f"{f_rate:13.1f} {rate / f_rate:6.1f}x", flush=True)
    return rows


def facenet_video(clip: Path, minsize: float, frames: int, batch: int = 16) -> tuple[float, float]:
    """facenet-pytorch on a video the way its README does it: PIL frames, `detect` on lists of them.

    -> (frames/s from opening the file to the last result, seconds to the first result)."""
    from PIL import Image

    fn = facenet(minsize)
    fn.detect(Image.new("RGB", (64, 64)))  # model on the GPU before the clock starts
    t = time.perf_counter()
    cap = cv2.VideoCapture(str(clip))
    first, done, buf = None, 0, []
    while done < frames:
        ok, bgr = cap.read()
        if ok:
            buf.append(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        if len(buf) == batch or (buf and not ok):
            fn.detect(buf)
            done += len(buf)
            buf = []
            first = first or time.perf_counter() - t
        if not ok:
            break
    return done / (time.perf_counter() - t), first


def job_video(data: Path, minsizes, facenet_frames: int, copies: int = 1, clips: str = "",
              extra: tuple[Path, ...] = ()) -> list[dict]:
    """Clips whose name holds `clips` (or 16 copies of the 1080p one), and the `extra` clips: default
    settings, best flags, facenet-pytorch."""
    clips = [c for c in sorted((data / "video").glob("*.mp4")) if clips in c.name] + list(extra)
    if copies > 1:
        clips = [c for c in clips if "1080p" in c.name][:1]
    rows = []
    title = f"{copies} streams at once" if copies > 1 else "one file"
    print(f"\n== video, {title}: frames/s from opening the file(s) to the last result ==", flush=True)
    print(f"{'clip':>24} {'minsize':>7} {'settings':>8} {'decoder':>8} {'cold fps':>9} {'warm fps':>9} "
          f"{'per stream':>10} {'first s':>8} {'facenet':>8} {'ratio':>7}")
    for clip in clips:
        for minsize in minsizes:
            f_fps, _ = facenet_video(clip, minsize, facenet_frames)
            for name, opts, job in (("default", {}, {}), ("best", BEST, dict(chunk=64, nvdec_sessions=4))):
                det = MTCNN(minsize=minsize, device="cuda", **opts)
                runs = [run_video_job([clip] * copies, det, "auto", **job) for _ in range(2)]
                cold, warm = runs
                dec = "/".join(sorted(set(warm.decoders.values())))
                row = dict(job="video", clip=clip.name, copies=copies, minsize=minsize, settings=name, decoder=dec,
                           cold_fps=cold.fps, warm_fps=warm.fps, per_stream=warm.fps / copies,
                           first=cold.first_result_s, facenet=f_fps, ratio=warm.fps / copies / f_fps,
                           faces=warm.faces, frames=warm.frames)
                rows.append(row)
                print(f"{clip.name:>24} {minsize:>7} {name:>8} {dec:>8} {cold.fps:9.1f} {warm.fps:9.1f} "
                      f"{warm.fps / copies:10.1f} {cold.first_result_s:8.2f} {f_fps:8.1f} {row['ratio']:6.1f}x",
                      flush=True)
                del det
    return rows


def job_decode(data: Path) -> list[dict]:
    """NVDEC alone (frames handed over on the GPU, no detection): sessions per file."""
    import torch

    rows = []
    clip = next(c for c in sorted((data / "video").glob("*.mp4")) if "1080p" in c.name)
    print(f"\n== decode only, {clip.name} ==", flush=True)
    for decoder, sessions in (("opencv", None), ("nvdec", 1), ("nvdec", 2), ("nvdec", 4)):
        job = None
        for _ in range(2):
            job = run_video_job([clip], None, decoder, nvdec_sessions=sessions, device=torch.device("cuda"))
        rows.append(dict(job="decode", decoder=decoder, sessions=sessions, fps=job.fps))
        print(f"{decoder:>8} sessions {sessions or '-':>2}: {job.fps:7.1f} frames/s", flush=True)
    return rows


def job_start(data: Path) -> list[dict]:
    """Wall time from process start to the first result line, fresh processes (Triton's disk cache as found)."""
    rows = []
    photo = data / "bob_multiple-faces.jpg"
    clip = next(iter(sorted((data / "video").glob("*1080p*.mp4"))), None)
    cmds = {"detect photo": ["detect", str(photo), "-q"]}
    if clip is not None:
        cmds["video 1080p"] = ["video", str(clip), "--json", "-", "--max-frames", "1"]
    print("\n== start: fresh process to first result ==", flush=True)
    for name, args in cmds.items():
        for rnd in range(2):
            t = time.perf_counter()
            p = subprocess.Popen([sys.executable, "-m", "fastmtcnn", *args, "--device", "cuda"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                     [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])})
            first = p.stdout.readline()
            t_first = time.perf_counter() - t
            p.communicate(timeout=300)
            rows.append(dict(job="start", what=name, round=rnd, first=t_first, rc=p.returncode))
            print(f"{name:>14} run {rnd + 1}: {t_first:6.2f} s to '{first.strip()[:60]}' (exit {p.returncode})",
                  flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FASTMTCNN_SHARED_DATA",
                                                                        ROOT.parent / "shared" / "data")))
    ap.add_argument("--jobs", nargs="+", default=["start", "decode", "video", "streams", "folder"])
    ap.add_argument("--minsize", type=float, nargs="+", default=[40, 20])
    ap.add_argument("--facenet-subset", type=int, default=40, help="photos facenet-pytorch runs in the folder job")
    ap.add_argument("--facenet-frames", type=int, default=150, help="frames facenet-pytorch runs per clip")
    ap.add_argument("--clips", default="", help="only the clips whose name holds this (e.g. 1080p)")
    ap.add_argument("--extra-clips", type=Path, nargs="*", default=[],
                    help="more files for the video job, e.g. a longer one made by benchmarks/make_long_clip.py")
    ap.add_argument("--out", type=Path, help="write every row as JSON here")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_e2e_gpu: no CUDA GPU", file=sys.stderr)
        return 2
    print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}", flush=True)
    rows: list[dict] = []
    jobs = {  # "start" first: a fresh machine's Triton cache is cold only once
        "start": lambda: job_start(args.data),
        "decode": lambda: job_decode(args.data),
        "video": lambda: job_video(args.data, args.minsize, args.facenet_frames, clips=args.clips,
                                   extra=tuple(args.extra_clips)),
        "streams": lambda: job_video(args.data, [40], args.facenet_frames, copies=16),
        "folder": lambda: job_folder(args.data, args.minsize, args.facenet_subset),
    }
    for name, job in jobs.items():
        if name in args.jobs:
            try:
                rows += job()
            except Exception as e:  # noqa: BLE001 - report it, run the other jobs
                import traceback

                traceback.print_exc()
                rows.append(dict(job=name, error=f"{type(e).__name__}: {e}"))
            if args.out:
                args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
