"""GPU throughput: fastmtcnn's torch backend against facenet-pytorch's MTCNN, same GPU, same frames.

Run on a CUDA machine (facenet-pytorch 2.6.0 installed, it runs on the
PyTorch/torchvision there):

    python benchmarks/bench_gpu.py [--data ../shared/data] [--out results.json]

Frames: every photo in --data resized to each size (area interpolation), cycled
to fill a batch; decoded uint8 RGB on the host ("host") and, for ours, also
already on the GPU ("gpu"). Prints, in one run:

1. frames/s, ours vs facenet-pytorch, at 1920x1080 and 1280x720, minsize 20
   and 40, batch 1 and the large batches, and the ratio;
2. single-stream latency per 1280x720 frame (batch 1, fixed size, CUDA graphs);
3. each speed option on/off (fp16, channels-last, cuDNN autotune, CUDA graphs,
   pinned upload, NMS implementation);
4. a per-stage time breakdown (the timer synchronizes around each stage);
5. faithfulness of fp32 and fp16 on the reference photos.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fastmtcnn import MTCNN, Detections, read_image  # noqa: E402
from fastmtcnn.metrics import greedy_match  # noqa: E402

SIZES = {"1920x1080": (1080, 1920), "1280x720": (720, 1280)}
STAGES = ("integral", "pyramid", "pnet", "candidates", "crops", "rnet", "nms", "onet", "to_host")


def load_photos(folder: Path) -> list[np.ndarray]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [read_image(p) for p in paths]


def make_frames(photos: list[np.ndarray], hw: tuple[int, int], n: int) -> np.ndarray:
    h, w = hw
    resized = [cv2.resize(p, (w, h), interpolation=cv2.INTER_AREA) for p in photos]
    return np.stack([resized[i % len(resized)] for i in range(n)])


def timeit(fn, min_time: float, min_reps: int, warmup: int = 2) -> float:
    """Median seconds per call (each call returns host results, so it is synchronous)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times: list[float] = []
    t_end = time.perf_counter() + min_time
    while len(times) < min_reps or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        if len(times) >= 200:
            break
    return statistics.median(times)


def ours(minsize: float, **options) -> MTCNN:
    options.setdefault("max_batch", (8192, 4096))
    return MTCNN(minsize=minsize, backend="torch", device="cuda", **options)


def facenet(minsize: float):
    from facenet_pytorch import MTCNN as FaceNetMTCNN

    return FaceNetMTCNN(keep_all=True, min_face_size=minsize, device="cuda")


def faithfulness(det, data: Path) -> tuple[float, float, int, int]:
    """Recall and precision against the stored reference outputs (IoU >= 0.7 pairs)."""
    ref_dir = data / "ref"
    n_ref = n_ours = n_pair = 0
    for ref in sorted(ref_dir.glob("*.json")):
        img = read_image(data / ref.name[:-5])
        r = Detections.from_list(json.loads(ref.read_text()))
        d = det.detect(img)
        n_ref, n_ours = n_ref + len(r), n_ours + len(d)
        n_pair += len(greedy_match(r.boxes, d.boxes, 0.7))
    return n_pair / max(n_ref, 1), n_pair / max(n_ours, 1), n_ref, n_ours


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("FASTMTCNN_SHARED_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", type=Path, help="write all numbers as JSON here")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 64])
    ap.add_argument("--time", type=float, default=2.0, help="seconds per measurement (at least)")
    ap.add_argument("--no-facenet", action="store_true")
    ap.add_argument("--facenet-batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--skip", nargs="*", default=[],
                    help="sections to skip: stages profile stream options compare faith")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    print(f"GPU: {gpu}; torch {torch.__version__}; cuDNN {torch.backends.cudnn.version()}", flush=True)
    photos = load_photos(args.data)
    results: dict = {"gpu": gpu, "torch": torch.__version__}

    def save():
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))

    # ------------------------------------------------------------- 1. ours vs facenet-pytorch
    def sec_compare():
        rows = []
        print("\n== throughput, frames/s (median over repeated calls) ==", flush=True)
        print(f"{'size':>9} {'minsize':>7} {'batch':>5} {'ours gpu':>9} {'ours host':>9} {'facenet':>8} {'ratio':>7}")
        for size, hw in SIZES.items():
            for minsize in (40, 20):
                det = ours(minsize, fp16=True, graphs=True)
                fn = facenet(minsize) if not args.no_facenet else None
                for batch in args.batches:
                    host = make_frames(photos, hw, batch)
                    dev = torch.from_numpy(host).cuda()
                    t_dev = timeit(lambda: det.detect_batch(dev), args.time, 5, warmup=4)  # graphs: capture, grow
                    t_host = timeit(lambda: det.detect_batch(host), args.time, 5)
                    t_fn = None
                    if fn is not None and batch in args.facenet_batches:
                        t_fn = timeit(lambda: fn.detect(host), args.time, 3, warmup=1)
                    row = dict(size=size, minsize=minsize, batch=batch, ours_gpu=batch / t_dev,
                               ours_host=batch / t_host, facenet=batch / t_fn if t_fn else None)
                    row["ratio"] = row["ours_gpu"] / row["facenet"] if t_fn else None
                    rows.append(row)
                    fmt = lambda v, p=0: f"{v:.{p}f}" if v is not None else "-"  # noqa: E731
                    print(f"{size:>9} {minsize:>7} {batch:>5} {row['ours_gpu']:9.0f} {row['ours_host']:9.0f} "
                          f"{fmt(row['facenet'], 1):>8} {fmt(row['ratio'], 1):>7}", flush=True)
                det = fn = None  # free the GPU memory before the next size
                torch.cuda.empty_cache()
        results["compare"] = rows
        save()

    # ------------------------------------------------------------- 2. single stream
    def sec_stream():
        print("\n== single stream, 1280x720, batch 1: ms per frame ==", flush=True)
        host = make_frames(photos, SIZES["1280x720"], len(photos))
        dev = torch.from_numpy(host).cuda()
        rows = []
        for minsize in (40, 20):
            big = (4096, 1024, 512, 256, 256)
            for graphs, fp16, kernels, caps in ((False, True, True, None), (True, False, True, None),
                                                (True, True, False, None), (True, True, True, big),
                                                (True, True, True, None)):
                if True:
                    det = ours(minsize, fp16=fp16, graphs=graphs, kernels=kernels, caps=caps)
                    k = [0]

                    def one(src):
                        i = k[0] % len(src)
                        det.detect_batch(src[i:i + 1])
                        k[0] += 1

                    t_host = timeit(lambda: one(host), args.time, 20, warmup=len(photos))
                    t_dev = timeit(lambda: one(dev), args.time, 20, warmup=len(photos))
                    st = det.backend.graph_stats
                    rows.append(dict(minsize=minsize, graphs=graphs, fp16=fp16, kernels=kernels, caps=caps,
                                     ms_host=t_host * 1e3, ms_gpu=t_dev * 1e3, **st))
                    print(f"minsize {minsize:2d} graphs {graphs!s:5} fp16 {fp16!s:5} triton {kernels!s:5} caps {caps}: "
                          f"{t_host * 1e3:6.2f} ms (host frame), "
                          f"{t_dev * 1e3:6.2f} ms (frame on GPU)  [graph replays {st['replays']}, "
                          f"fallbacks {st['fallbacks']}]", flush=True)
        results["stream"] = rows
        save()

    # ------------------------------------------------------------- 3. options on/off
    def sec_options():
        print("\n== speed options, 1920x1080 minsize 40 batch 64 (frames on GPU unless said) ==", flush=True)
        host = make_frames(photos, SIZES["1920x1080"], 64)
        dev = torch.from_numpy(host).cuda()
        variants = {
            "baseline fp32 (no channels-last, no autotune)": dict(fp16=False, channels_last=False,
                                                                  cudnn_benchmark=False),
            "+ cudnn autotune": dict(fp16=False, channels_last=False),
            "+ channels-last": dict(fp16=False),
            "+ fp16": dict(fp16=True),
            "fp16 + graphs (fixed shapes; the settings of the table above)": dict(fp16=True, graphs=True),
            "fp16, graphs, chunks of 32 frames": dict(fp16=True, graphs=True, graph_batch=32),
            "fp16, graphs, nets not fused": dict(fp16=True, graphs=True, fuse_nets=False),
            "fp16, graphs, no Triton kernels": dict(fp16=True, graphs=True, kernels=False),
            "fp16, graphs, fp32": dict(fp16=False, graphs=True),
            "fp16 eager, torchvision batched_nms": dict(fp16=True, nms="torchvision"),
            "fp16 eager, max_batch 512 (the CPU default)": dict(fp16=True, max_batch=512),
            "fp16 eager, no Triton kernels": dict(fp16=True, kernels=False),
            "fp16 eager, nets not fused": dict(fp16=True, fuse_nets=False),
        }
        rows = []
        for label, opts in variants.items():
            try:
                det = ours(40, **opts)
                t = timeit(lambda: det.detect_batch(dev), args.time, 5, warmup=3)
                rows.append(dict(variant=label, fps=64 / t))
                print(f"{label:48s} {64 / t:8.0f} frames/s", flush=True)
            except Exception as e:  # noqa: BLE001 - a missing optional package must not end the run
                print(f"{label:48s} failed: {e}", flush=True)
        for pinned in (False, True):
            det = ours(40, fp16=True, graphs=True, pinned=pinned)
            t = timeit(lambda: det.detect_batch(host), args.time, 5)
            label = f"fp16, host frames, pinned upload {pinned}"
            rows.append(dict(variant=label, fps=64 / t))
            print(f"{label:48s} {64 / t:8.0f} frames/s", flush=True)
        results["options"] = rows
        save()

    # ------------------------------------------------------------- 4. stages
    def sec_stages():
        print("\n== per-stage time (timer synchronizes around each stage), ms per frame ==", flush=True)
        cases = [("1920x1080", 40, 64, True), ("1920x1080", 20, 64, True), ("1280x720", 40, 1, True),
                 ("1280x720", 40, 1, False)]
        rows = []
        print(f"{'case':32s} " + " ".join(f"{s:>9}" for s in STAGES) + f" {'total':>8}")
        for size, minsize, batch, fp16 in cases:
            det = ours(minsize, fp16=fp16)
            host = make_frames(photos, SIZES[size], batch)
            dev = torch.from_numpy(host).cuda()
            for _ in range(3):
                det.detect_batch(dev)
            det.timer.enabled = True
            det.timer.totals.clear()
            reps = 10 if batch > 1 else 50
            for _ in range(reps):
                det.detect_batch(dev)
            det.timer.enabled = False
            per = {s: det.timer.totals.get(s, 0.0) * 1e3 / (reps * batch) for s in STAGES}
            label = f"{size} min{minsize} b{batch} {'fp16' if fp16 else 'fp32'}"
            rows.append(dict(case=label, **per))
            print(f"{label:32s} " + " ".join(f"{per[s]:9.4f}" for s in STAGES) + f" {sum(per.values()):8.3f}",
                  flush=True)
        # the fixed-shape cascade of graphs=True, run eagerly with the synchronizing timer
        from fastmtcnn.backends.torch_static import StaticCascade

        for size, minsize, batch in (("1920x1080", 40, 64), ("1280x720", 40, 64), ("1280x720", 40, 1)):
            det = ours(minsize, fp16=True)
            host = make_frames(photos, SIZES[size], batch)
            dev = torch.from_numpy(host).cuda()
            cascade = StaticCascade(det.backend, det.config, batch, *SIZES[size])
            reps = 10 if batch > 1 else 50
            with torch.inference_mode():
                for _ in range(3):
                    cascade.run(dev)
                det.timer.enabled = True
                det.timer.totals.clear()
                for _ in range(reps):
                    cascade.run(dev, det.timer)
                det.timer.enabled = False
            per = {s: det.timer.totals.get(s, 0.0) * 1e3 / (reps * batch) for s in STAGES}
            label = f"{size} min{minsize} b{batch} fixed-shape"
            rows.append(dict(case=label, **per))
            print(f"{label:32s} " + " ".join(f"{per[s]:9.4f}" for s in STAGES) + f" {sum(per.values()):8.3f}",
                  flush=True)
        results["stages"] = rows
        save()

    # ------------------------------------------------------------- 4b. profile
    def sec_profile():
        from torch.profiler import ProfilerActivity, profile

        for label, size, minsize, batch, opts in (("batch", "1920x1080", 40, 64, dict(fp16=True, graphs=True)),
                                                   ("stream", "1280x720", 40, 1, dict(fp16=True, graphs=True))):
            det = ours(minsize, **opts)
            host = make_frames(photos, SIZES[size], batch)
            dev = torch.from_numpy(host).cuda()
            for _ in range(3):
                det.detect_batch(dev)
            torch.cuda.synchronize()
            t = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    det.detect_batch(dev)
                torch.cuda.synchronize()
            wall = (time.perf_counter() - t) / 3
            ev = [e for e in prof.key_averages() if e.device_time_total > 0]
            gpu_total = sum(e.self_device_time_total for e in ev) / 3 / 1e3
            print(f"\n== profile {label}: {size} min{minsize} b{batch} {opts}: wall {wall * 1e3:.2f} ms/call "
                  f"(profiled), GPU busy {gpu_total:.2f} ms/call; top kernels (ms/call, calls/call) ==", flush=True)
            for e in sorted(ev, key=lambda e: -e.self_device_time_total)[:18]:
                print(f"  {e.self_device_time_total / 3e3:8.3f} {e.count / 3:7.1f}  {e.key[:100]}")

    # ------------------------------------------------------------- 5. faithfulness
    def sec_faith():
        if not (args.data / "ref").is_dir():
            return
        print("\n== faithfulness on the reference photos (pairs at IoU >= 0.7) ==", flush=True)
        rows = []
        for label, opts in (("fp32", dict(fp16=False)), ("fp16", dict(fp16=True))):
            det = MTCNN(backend="torch", device="cuda", **opts)
            rec, prec, n_ref, n_ours = faithfulness(det, args.data)
            rows.append(dict(variant=label, recall=rec, precision=prec, n_ref=n_ref, n_ours=n_ours))
            print(f"{label}: recall {rec:.3f} precision {prec:.3f} ({n_ref} reference faces, {n_ours} ours)",
                  flush=True)
        results["faith"] = rows
        save()

    sections = dict(stages=sec_stages, profile=sec_profile, stream=sec_stream, options=sec_options,
                    compare=sec_compare, faith=sec_faith)
    for name, fn in sections.items():
        if name in args.skip:
            continue
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report and go on: one broken section must not hide the others
            import traceback

            traceback.print_exc()
            print(f"section {name} failed: {type(e).__name__}: {e}", flush=True)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
