"""End to end on one GPU: from files on disk to results, ours vs facenet-pytorch doing the same job.

Run on a CUDA machine (facenet-pytorch 2.6.0 installed; PyNvVideoCodec for
the NVDEC rows):

    python benchmarks/bench_e2e_gpu.py [--data ../shared/data] [--jobs start folders newclip decode video streams]

Jobs (each printed as a table, all measured in this one run). The first three are the user's job, in fresh
processes, first pass included (issues 17 and 18); the others are the engine's figures:
- start: a fresh process to its first result: the API (timed from the end of
  `import torch`) and the CLI's `detect`/`video --device cuda`, first with an
  empty Triton cache, then with the one it left;
- folders: `fastmtcnn detect DIR -q --device cuda` in a fresh process on 384
  JPEGs each of its own size (1024 wide, heights 600-1398), 384 of one size
  and 520 of 1920x1080 (made from DATA's photos); rate from the first result
  line to the last; the warm second pass in this process beside it;
  facenet-pytorch one photo at a time (its README's way) on 32 of them;
- newclip: the 1080p clip through a fresh `fastmtcnn video` (its end record's
  FPS) and, in one process, its first run vs warm runs; facenet-pytorch beside;
- decode: NVDEC alone, 1-4 sessions, vs OpenCV;
- video: each H.264 clip of DATA/video, minsize 40 and 20: frames/s of a
  warm process over the whole file (decode included), time to the first
  frame's result, default settings vs the best flags, and facenet-pytorch on
  the same frames the way its README shows (PIL frames, `detect`, batches of 16);
- streams: 16 copies of one clip at once in one process.
"""
from __future__ import annotations

import argparse
import json
import os
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

#: the best flags we know per job; "default" is what a user gets with --device cuda
BEST = dict(fp16=True, graphs=True)


def fit(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """`img` centre-cropped to w:h and resized to w x h."""
    ih, iw = img.shape[:2]
    s = min(iw / w, ih / h)
    cw, ch = int(w * s), int(h * s)
    crop = img[(ih - ch) // 2:(ih - ch) // 2 + ch, (iw - cw) // 2:(iw - cw) // 2 + cw]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if s > 1 else cv2.INTER_CUBIC)


def make_folders(data: Path, root: Path, count: int = 384, hd: int = 520) -> dict[str, Path]:
    """The user's folders, made from DATA's photos (as issue 17 sets them):
    - mixed: `count` JPEGs each of its own size, 1024 wide, heights 600-1398 (as WIDER FACE's validation set);
    - same: `count` JPEGs of 1024x1000, the same photos;
    - hd: `hd` JPEGs of 1920x1080."""
    photos = [cv2.imread(str(p)) for p in sorted(data.iterdir()) if p.suffix.lower() in (".jpg", ".png")]
    heights = np.random.default_rng(0).permutation(np.arange(600, 1400, 2))[:count]
    dirs = {name: root / name for name in ("mixed", "same", "hd")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    q = [cv2.IMWRITE_JPEG_QUALITY, 90]
    for i, h in enumerate(heights):
        img = photos[i % len(photos)]
        cv2.imwrite(str(dirs["mixed"] / f"{i:04d}.jpg"), fit(img, 1024, int(h)), q)
        cv2.imwrite(str(dirs["same"] / f"{i:04d}.jpg"), fit(img, 1024, 1000), q)
    for i in range(hd):
        cv2.imwrite(str(dirs["hd"] / f"{i:04d}.jpg"), fit(photos[i % len(photos)], 1920, 1080), q)
    return dirs


def fresh(args: list[str], env: dict | None = None, timeout: float = 300) -> tuple[list[tuple[float, str]], int, str]:
    """Runs `python ARGS` as a fresh process -> (stdout lines with their seconds since the start, exit, stderr).

    stdout unbuffered, as a terminal shows it: a line's time is when the user would see it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=ROOT, env=env)
    lines = [(time.perf_counter() - t, line.rstrip("\n")) for line in p.stdout]
    err = p.communicate(timeout=timeout)[1]
    return lines, p.returncode, err


def job_folders(data: Path, facenet_photos: int) -> list[dict]:
    """Issue 17's job: `fastmtcnn detect DIR --device cuda` in a fresh process per folder, rate from its first
    result line to its last; the same folder's warm second pass in this process (the engine's figure); and
    facenet-pytorch one photo at a time, as its README shows."""
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = make_folders(data, Path(tmp))
        print("\n== folders: a fresh `fastmtcnn detect DIR -q --device cuda` each; rate from first result to last ==",
              flush=True)
        print(f"{'folder':>7} {'JPEGs':>6} {'sizes':>6} {'first s':>8} {'img/s':>7} {'+start':>7} {'warm':>7} "
              f"{'facenet':>8} {'ratio':>7} {'faces':>6}")
        fn = facenet(20)
        for name, d in dirs.items():
            paths = sorted(str(p) for p in d.glob("*.jpg"))
            sizes = len({Image.open(p).size for p in paths})
            lines, rc, err = fresh(["-m", "fastmtcnn", "detect", str(d), "-q", "--device", "cuda"])
            times = [t for t, line in lines if line.startswith(str(d))]
            faces = sum(int(line.split(": ")[1].split()[0]) for t, line in lines
                        if line.startswith(str(d)) and ": " in line and line.split(": ")[1][:1].isdigit())
            if rc or len(times) != len(paths):
                print(f"{name}: exit {rc}, {len(times)} of {len(paths)} results\n{err[-2000:]}", flush=True)
            rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
            overall = len(times) / times[-1] if times else 0.0
            det = MTCNN(device="cuda")
            for _ in range(2):  # the warm second pass: the engine's figure, beside the user's
                t = time.perf_counter()
                for _r in detect_photos(det, paths):
                    pass
                sync()
                warm = len(paths) / (time.perf_counter() - t)
            del det
            sub = paths[:facenet_photos]
            fn.detect(Image.open(sub[0]).convert("RGB"))
            t = time.perf_counter()
            for p in sub:  # facenet-pytorch's README: PIL image in, mtcnn.detect(img)
                fn.detect(Image.open(p).convert("RGB"))
            sync()
            f_rate = len(sub) / (time.perf_counter() - t)
            row = dict(job="folders", folder=name, photos=len(paths), sizes=sizes, first=times[0] if times else None,
                       rate=rate, overall=overall, warm=warm, facenet=f_rate, ratio=rate / f_rate, faces=faces,
                       rc=rc)
            rows.append(row)
            print(f"{name:>7} {len(paths):>6} {sizes:>6} {row['first'] or 0:8.2f} {rate:7.0f} {overall:7.0f} "
                  f"{warm:7.0f} {f_rate:8.1f} {rate / f_rate:6.0f}x {faces:>6}", flush=True)
    by = {r["folder"]: r["rate"] for r in rows}
    if by.get("same"):
        print(f"mixed sizes / one size: {by['mixed'] / by['same']:.2f} (goal >= 0.8); "
              "img/s counts from the first result line to the last, +start from the process start", flush=True)
    return rows


def facenet(minsize: float):
    from facenet_pytorch import MTCNN as FaceNetMTCNN

    return FaceNetMTCNN(keep_all=True, min_face_size=minsize, device="cuda")


def sync():
    import torch

    torch.cuda.synchronize()


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


API_PROBE = """
import sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from fastmtcnn import MTCNN
faces = MTCNN(device="cuda").detect(sys.argv[1])
t2 = time.perf_counter()
heavy = [m for m in ("torch._dynamo", "sympy", "torch.distributed.fsdp", "torchvision") if m in sys.modules]
print(f"{len(faces)} faces; import torch {t1 - t0:.2f} s; first result {t2 - t1:.2f} s after it; loaded: {heavy}")
"""


def job_start(data: Path) -> list[dict]:
    """Issue 18's job: fresh processes to their first result. Round 1 with an empty Triton cache (a fresh
    machine: nothing may wait for Triton to compile), round 2 with the cache it left. The API's first result is
    timed from the end of `import torch` inside the process; the CLI's from the process start, beside the
    API process's own start-to-result time."""
    rows = []
    photo = data / "bob_multiple-faces.jpg"
    clip = next(iter(sorted((data / "video").glob("*1080p*.mp4"))), None)
    cmds = {"API detect": ["-c", API_PROBE, str(photo)],
            "CLI detect": ["-m", "fastmtcnn", "detect", str(photo), "-q", "--device", "cuda"]}
    if clip is not None:
        cmds["CLI video"] = ["-m", "fastmtcnn", "video", str(clip), "--json", "-", "--max-frames", "1",
                             "--device", "cuda"]
    print("\n== start: a fresh process to its first result ==", flush=True)
    with tempfile.TemporaryDirectory() as cache:
        for rnd, state in enumerate(("empty Triton cache", "Triton cache filled")):
            api = None
            for name, args in cmds.items():
                lines, rc, err = fresh(args, env={"TRITON_CACHE_DIR": cache})
                t_first, first = lines[0] if lines else (float("nan"), err.strip()[-200:])
                api = t_first if name.startswith("API") else api
                rows.append(dict(job="start", what=name, cache=state, first=t_first, line=first[:120], rc=rc))
                extra = f", {t_first - api:+.2f} s vs the API" if api is not None and name.startswith("CLI") else ""
                print(f"{state:>20} {name:>10}: {t_first:6.2f} s to '{first.strip()[:110]}' (exit {rc}){extra}",
                      flush=True)
    return rows


def job_newclip(data: Path, facenet_frames: int) -> list[dict]:
    """Issue 17's video job: a clip this process has not seen, through `fastmtcnn video` in a fresh process (its
    end record's FPS), and here: the first run vs warm runs in one process, facenet-pytorch beside."""
    rows = []
    clip = next(iter(sorted((data / "video").glob("*1080p*.mp4"))))
    print(f"\n== a new clip: {clip.name} ==", flush=True)
    # the fresh processes first: this one's caching allocator (its own runs, facenet-pytorch's batches) would
    # hold the GPU memory they need
    cli = {}
    for minsize in (20, 40):
        lines, rc, err = fresh(["-m", "fastmtcnn", "video", str(clip), "--json", "-", "--minsize", str(minsize),
                                "--device", "cuda"])
        end = json.loads(lines[-1][1]) if lines and lines[-1][1].startswith("{") else {}
        fps, frames, first = end.get("mean_fps", 0.0), end.get("frames", 0), end.get("first_s")
        # the folders' measure too: the rate from the first result to the last (start-up left out)
        after = (frames - 1) / (frames / fps - first) if fps and first is not None and frames > 1 else 0.0
        cli[minsize] = fps, rc, first, after
        if rc:
            print(err[-2000:], flush=True)
    # a process's one-time costs (CUDA context, kernel loading, library start-up) are paid here on another clip
    # of another size: the first run below is then a new clip and a new shape to a running process
    other = [p for p in sorted((data / "video").glob("*.mp4")) if "1080p" not in p.name][:1]
    if other:
        r = run_video_job(other, MTCNN(device="cuda"))
        print(f"this process's first job: {other[0].name}, {r.fps:.0f} fps", flush=True)
    for minsize in (20, 40):
        (c, rc, first, after) = cli[minsize]
        det = MTCNN(device="cuda", minsize=minsize)
        runs = [run_video_job([clip], det) for _ in range(3)]
        warm = max(r.fps for r in runs[1:])
        f_fps, _ = facenet_video(clip, minsize, facenet_frames)
        rows.append(dict(job="newclip", minsize=minsize, cli_fps=c, cli_first_s=first, cli_after_first=after,
                         first_fps=runs[0].fps, warm_fps=warm, frames=runs[0].frames, facenet=f_fps, rc=rc))
        print(f"minsize {minsize}: CLI fresh process {c:.0f} fps from the job's start (exit {rc}), first result "
              f"{first} s, then {after:.0f} fps: {after / warm:.2f} of warm; in a running process first run "
              f"{runs[0].fps:.0f}, warm {warm:.0f} fps: first/warm {runs[0].fps / warm:.2f}, CLI/warm {c / warm:.2f} "
              f"(goal >= 0.8); facenet-pytorch {f_fps:.1f} fps, ours/facenet {c / f_fps:.0f}x (CLI), "
              f"{warm / f_fps:.0f}x (warm)", flush=True)
        del det
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FASTMTCNN_SHARED_DATA",
                                                                        ROOT.parent / "shared" / "data")))
    ap.add_argument("--jobs", nargs="+", default=["start", "folders", "newclip", "decode", "video", "streams"])
    ap.add_argument("--minsize", type=float, nargs="+", default=[40, 20])
    ap.add_argument("--facenet-subset", type=int, default=32, help="photos facenet-pytorch runs per folder")
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
        "folders": lambda: job_folders(args.data, args.facenet_subset),
        "newclip": lambda: job_newclip(args.data, args.facenet_frames),
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
