"""Images/s over a collection: plain library loop vs `fastmtcnn batch` local mode vs Ray mode.

All three in one run, on the same files, each in a fresh process (so each pays
its own start-up: imports, model load, worker processes, Ray start).
Two numbers per mode: end-to-end wall time of the command, and the rate of
its processing loop alone (what a long job converges to).

    python benchmarks/bench_batch.py                 # 140 images, longest side 640
    python benchmarks/bench_batch.py --n 400 --size 1280 --ray-cpus 2
    python benchmarks/bench_batch.py --device cuda --backend torch   # GPU machine, once the torch backend exists
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FASTMTCNN_SHARED_DATA", ROOT.parent / "shared" / "data"))

PLAIN_LOOP = r"""
import sys, time
from fastmtcnn import MTCNN, read_image
from fastmtcnn.batch import iter_inputs
t0 = time.perf_counter()
det = MTCNN(**eval(sys.argv[2]))
paths = list(iter_inputs([sys.argv[1]]))
t1 = time.perf_counter()
faces = sum(len(det.detect(read_image(p))) for p in paths)
t2 = time.perf_counter()
print(f"processed {len(paths)} ({faces} faces) in {t2 - t1:.3f}s")
"""


def make_collection(root: Path, n: int, size: int) -> None:
    photos = sorted(p for p in SHARED.iterdir() if p.suffix in (".jpg", ".png"))
    if not photos:
        sys.exit(f"no photos in {SHARED} (set FASTMTCNN_SHARED_DATA)")
    root.mkdir(parents=True)
    for i in range(n):
        src = photos[i % len(photos)]
        img = cv2.imread(str(src), cv2.IMREAD_COLOR)
        s = size / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        if (i // len(photos)) % 2:
            img = img[:, ::-1]  # flipped copies: same work, not byte-identical files
        cv2.imwrite(str(root / f"{i:05d}_{src.stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, loop s from the 'processed N ... in Xs' line, output)."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = r.stdout + r.stderr
    if r.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{out[-3000:]}")
    m = re.search(r"processed (\d+) .* in ([\d.]+)s", out)
    return wall, float(m.group(2)) if m else float("nan"), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=140, help="images in the collection")
    ap.add_argument("--size", type=int, default=640, help="longest side of each image (pixels)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, help="local mode decode processes (default: CPU count)")
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--device")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        coll = tmp / "images"
        make_collection(coll, args.n, args.size)
        det_kwargs = {"backend": args.backend}
        det_flags = ["--backend", args.backend]
        if args.device:
            det_kwargs["device"] = args.device
            det_flags += ["--device", args.device]
        cli = [sys.executable, "-m", "fastmtcnn", "batch", str(coll), "-q", "--batch", str(args.batch), *det_flags]
        runs = {
            "plain loop (library API, 1 process)": [sys.executable, "-c", PLAIN_LOOP, str(coll), repr(det_kwargs)],
            "batch, local mode": cli + ["--out", str(tmp / "out_local")]
            + (["--workers", str(args.workers)] if args.workers is not None else []),
        }
        if not args.no_ray:
            runs[f"batch --ray ({args.ray_cpus} CPUs)"] = cli + ["--out", str(tmp / "out_ray"), "--ray",
                                                                 "--num-cpus", str(args.ray_cpus),
                                                                 "--object-store-mb", "500"]
        print(f"{args.n} images, longest side {args.size}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} before, backend {args.backend}"
              + (f" on {args.device}" if args.device else ""))
        results = {}
        for name, cmd in runs.items():
            wall, loop, _ = timed(cmd)
            results[name] = (wall, loop)
        base = results["plain loop (library API, 1 process)"]
        print("\n| mode | wall s | img/s (wall) | loop s | img/s (loop) | vs plain (loop) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, (wall, loop) in results.items():
            print(f"| {name} | {wall:.1f} | {args.n / wall:.1f} | {loop:.1f} | {args.n / loop:.1f} | "
                  f"{base[1] / loop:.2f}x |")
        print("\nwall: the whole command. loop: its own 'processed N in Xs' (after imports and model "
              "load; Ray's start excluded, local mode's worker start included).")
        print(f"\nload average {os.getloadavg()[0]:.1f} after (other work on this machine skews every row alike)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
