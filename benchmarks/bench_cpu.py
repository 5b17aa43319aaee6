"""CPU benchmark: fastmtcnn (packed and per-scale PNet, ONNX Runtime) vs the
reference facenet-pytorch MTCNN, same images and settings, in one run.

Rounds are interleaved (ours packed, ours per-scale, reference, repeat) and
medians reported, because shared machines are noisy: read the ratios, not the
absolute times. The reference needs torch + torchvision + facenet-pytorch,
kept out of fastmtcnn's install; see README "Benchmarks" for the virtualenv.

    python benchmarks/bench_cpu.py [--rounds 7] [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from fastmtcnn import MTCNN, read_image
from fastmtcnn.metrics import greedy_match

IMAGES = ["yolov5_zidane.jpg", "insightface_t1.jpg", "skimage_astronaut.png"]


def _time(fn, rounds_out: list[float]) -> None:
    t = time.perf_counter()
    fn()
    rounds_out.append(time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--minsize", type=float, nargs="+", default=[20, 40])
    ap.add_argument("--images", nargs="+", default=IMAGES)
    args = ap.parse_args()
    try:
        import torch
        from facenet_pytorch import MTCNN as RefMTCNN
    except ImportError as e:
        print(f"bench_cpu: the reference needs torch, torchvision and facenet-pytorch ({e}); "
              "see README 'Benchmarks'", file=sys.stderr)
        return 2
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(f"machine: {platform.processor() or platform.machine()}, {threads} CPU cores; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); fastmtcnn ONNX Runtime (default threads)")
    print(f"{'image':24s} {'size':>9s} {'minsize':>7s} | "
          f"{'packed ms':>9s} {'per-scale ms':>12s} {'reference ms':>12s} | "
          f"{'ref/packed':>10s} {'per-scale/packed':>16s} | faces ours/ref matched")
    for name in args.images:
        img = read_image(Path(args.data) / name)
        h, w = img.shape[:2]
        for ms in args.minsize:
            packed, perscale = MTCNN(minsize=ms), MTCNN(minsize=ms, packed=False)
            ref = RefMTCNN(keep_all=True, device="cpu", min_face_size=ms)
            runs = {
                "packed": lambda: packed.detect(img),
                "per-scale": lambda: perscale.detect(img),
                "reference": lambda: ref.detect(img, landmarks=True),
            }
            for fn in runs.values():  # warm-up (plans, sessions, allocator)
                fn()
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.rounds):
                for k, fn in runs.items():
                    _time(fn, times[k])
            med = {k: statistics.median(v) * 1000 for k, v in times.items()}
            ours = packed.detect(img)
            rb = ref.detect(img)[0]
            rb = np.zeros((0, 4)) if rb is None else rb
            m = len(greedy_match(rb, ours.boxes, 0.7))
            print(f"{name:24s} {w:>4d}x{h:<4d} {ms:>7.0f} | {med['packed']:9.1f} {med['per-scale']:12.1f} "
                  f"{med['reference']:12.1f} | {med['reference'] / med['packed']:9.2f}x "
                  f"{med['per-scale'] / med['packed']:15.2f}x | {len(ours)}/{len(rb)} {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
