"""CPU benchmark: fastmtcnn (OpenVINO and ONNX Runtime) vs the reference facenet-pytorch
MTCNN, files to results, same photos and settings, in one run.

1. Fresh process, one photo (640x480 and 12 MP): start of the process to the
   first result, for OpenVINO with an empty model cache (a first process
   ever), OpenVINO with the cache that process left, ONNX Runtime and the
   reference; interleaved, `--fresh` times, medians.
2. For each photo size (640x480, 1280x720, a ~2000x1500 group photo, a 12 MP
   photo made by upscaling one of ../shared/data) and minsize (20, 40), each
   engine runs in its own fresh process: the first call (constructor + first
   detect from the file, imports timed apart) is timed there, then warm calls
   are taken in rounds interleaved across the engines' processes (one at a
   time, so machine load hits all alike), and each process reports its peak
   memory (max RSS). Repeated `--fresh` times with new processes; medians.
3. Where the time goes on the 12 MP photo, stage by stage, per engine.
4. A folder of 40 photos of 40 different sizes, whole processes (imports
   included): our CLI (`fastmtcnn detect`, photos overlapped; OpenVINO also
   with an empty model cache), our API photo after photo, and the
   reference's loop, interleaved.

Read the ratios, not the times: the machine may be shared.

The reference runs in its own virtualenv (torch, torchvision, facenet-pytorch;
README "Benchmarks"), passed as --ref-python.

    python benchmarks/bench_cpu.py --ref-python /tmp/refvenv/bin/python [--rounds 5] [--fresh 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ("openvino", "onnxruntime", "reference")


# --------------------------------------------------------------------------- worker processes


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _send(obj) -> None:
    print(json.dumps(obj), flush=True)


def worker(engine: str, image: str, minsize: float) -> None:
    """One engine in a fresh process: time the imports and the first call, then a call per 'run' line."""
    t = time.perf_counter()
    if engine == "reference":  # no fastmtcnn here: it runs in the reference's virtualenv
        import numpy as np
        import torch
        from facenet_pytorch import MTCNN as Ref
        from PIL import Image

        torch.set_num_threads(os.cpu_count() or 1)
        imported = time.perf_counter() - t

        def make():
            return Ref(keep_all=True, device="cpu", min_face_size=minsize)

        def detect(det):
            boxes, _, _ = det.detect(Image.open(image).convert("RGB"), landmarks=True)
            return np.zeros((0, 4)) if boxes is None else boxes
    else:
        from fastmtcnn import MTCNN

        imported = time.perf_counter() - t

        def make():
            return MTCNN(backend=engine, minsize=minsize)

        def detect(det):
            return det.detect(image).boxes

    t = time.perf_counter()
    det = make()
    boxes = detect(det)
    _send({"import_s": imported, "first_s": time.perf_counter() - t, "boxes": [[float(v) for v in b] for b in boxes]})
    for line in sys.stdin:
        if line.strip() == "run":
            t = time.perf_counter()
            detect(det)
            _send({"t": time.perf_counter() - t})
        else:
            break
    _send({"peak_mb": _peak_mb()})


def folder_worker(engine: str, folder: str) -> None:
    """A whole folder, photo after photo through the API (ours) or the reference's loop."""
    paths = sorted(str(p) for p in Path(folder).iterdir())
    if engine == "reference":
        import torch
        from facenet_pytorch import MTCNN as Ref
        from PIL import Image

        torch.set_num_threads(os.cpu_count() or 1)
        det = Ref(keep_all=True, device="cpu")
        faces = 0
        for p in paths:
            boxes, _ = det.detect(Image.open(p).convert("RGB"))
            faces += 0 if boxes is None else len(boxes)
    else:
        from fastmtcnn import MTCNN

        det = MTCNN(backend=engine)
        faces = sum(len(det.detect(p)) for p in paths)
    _send({"faces": faces, "peak_mb": _peak_mb()})


# --------------------------------------------------------------------------- the parent


class Engine:
    """A worker process of one engine on one photo and minsize."""

    def __init__(self, python: str, engine: str, image: Path, minsize: float, cache: Path | None = None) -> None:
        self.name = engine
        t = time.perf_counter()
        self.proc = subprocess.Popen([python, __file__, "--worker", engine, str(image), str(minsize)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     env=_env(cache))
        self.first = self._recv()
        self.first["process_s"] = time.perf_counter() - t  # start-up, imports, first call: the first result

    def _recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def run(self) -> float:
        self.proc.stdin.write("run\n")
        return self._recv()["t"]

    def close(self) -> float:
        self.proc.stdin.write("quit\n")
        peak = self._recv()["peak_mb"]
        self.proc.wait()
        return peak


def _env(cache: Path | None) -> dict:
    """The environment of a process of ours: OpenVINO's model cache in `cache` (made empty by the caller
    for a first process ever), or off."""
    return {**os.environ, "FASTMTCNN_CACHE_DIR": str(cache) if cache else "off"}


def make_photos(data: Path, out: Path) -> dict[str, Path]:
    """The benchmark photos: two as they are, two upscaled from ../shared/data (JPEG, quality 92)."""
    import cv2

    def upscale(name: str, size: tuple[int, int], dst: str) -> Path:
        img = cv2.imread(str(data / name), cv2.IMREAD_COLOR)
        path = out / dst
        cv2.imwrite(str(path), cv2.resize(img, size, interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 92])
        return path

    return {
        "640x480": data / "opencv_basketball1.png",
        "1280x720": data / "yolov5_zidane.jpg",
        "group 2000x1481": upscale("bob_multiple-faces.jpg", (2000, 1481), "group_2000x1481.jpg"),
        "12 MP 4032x3024": upscale("insightface_t1.jpg", (4032, 3024), "photo_4032x3024.jpg"),
    }


def make_folder(data: Path, out: Path, n: int = 40) -> Path:
    """n photos of n different sizes: the test photos as they are, at twice their size, at 1920 wide, and
    four at 12 MP (a size already taken is nudged by 2 pixels: every photo is a new size to the detector)."""
    import cv2

    folder = out / "folder"
    folder.mkdir()
    names = sorted(p.name for p in data.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    plan = [(nm, 1.0) for nm in names] + [(nm, 2.0) for nm in names] + [(nm, "1920") for nm in names[:8]]
    plan += [(nm, "12mp") for nm in ("insightface_t1.jpg", "yolov5_zidane.jpg", "dlib_dogs.jpg", "facerec_biden.jpg")]
    seen = set()
    for k, (nm, how) in enumerate(plan[:n]):
        img = cv2.imread(str(data / nm), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        if how == "1920":
            size = (1920, round(h * 1920 / w))
        elif how == "12mp":
            s = (12e6 / (h * w)) ** 0.5
            size = (round(w * s), round(h * s))
        else:
            size = (round(w * how), round(h * how))
        while size in seen:
            size = (size[0] + 2, size[1])
        seen.add(size)
        if size != (w, h):
            img = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"{k:02d}_{Path(nm).stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return folder


def bench_photo(args, pythons: dict[str, str], path: Path, minsize: float, cache: Path) -> dict:
    """first call, warm calls, peak memory of each engine on one photo: medians over fresh processes
    (OpenVINO's model cache in `cache`, filled by earlier processes: a user's usual state)."""
    first = {e: [] for e in pythons}
    process = {e: [] for e in pythons}
    imports = {e: [] for e in pythons}
    warm = {e: [] for e in pythons}
    peak = {e: [] for e in pythons}
    boxes = {}
    for _ in range(args.fresh):
        engines = {}
        for e, py in pythons.items():  # started one after another: no two first calls overlap
            engines[e] = Engine(py, e, path, minsize, cache)
        for e, en in engines.items():
            first[e].append(en.first["first_s"])
            process[e].append(en.first["process_s"])
            imports[e].append(en.first["import_s"])
            boxes[e] = en.first["boxes"]
        for _ in range(args.rounds):
            for e, en in engines.items():
                warm[e].append(en.run())
        for e, en in engines.items():
            peak[e].append(en.close())
    med = statistics.median
    return {"first": {e: med(v) for e, v in first.items()}, "process": {e: med(v) for e, v in process.items()},
            "imports": {e: med(v) for e, v in imports.items()}, "warm": {e: med(v) for e, v in warm.items()},
            "peak": {e: max(v) for e, v in peak.items()}, "boxes": boxes}


def bench_fresh(args, pythons: dict[str, str], path: Path, minsize: float, tmp: Path) -> dict:
    """One photo in a fresh process, start to first result: OpenVINO with an empty model cache (the first
    process ever), then with the cache that process left; ONNX Runtime; the reference. Interleaved, medians."""
    runs = {"openvino, empty cache": "openvino", "openvino, cache filled": "openvino", "onnxruntime": "onnxruntime",
            "reference": "reference"}
    out = {k: {"process": [], "first": []} for k in runs}
    for i in range(args.fresh):
        cache = tmp / f"fresh_cache_{i}"
        for k, e in runs.items():
            if k == "openvino, empty cache":
                shutil.rmtree(cache, ignore_errors=True)
            en = Engine(pythons[e], e, path, minsize, cache if e == "openvino" else None)
            out[k]["process"].append(en.first["process_s"])
            out[k]["first"].append(en.first["first_s"])
            en.close()
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in out.items()}


def bench_folder(args, pythons: dict[str, str], folder: Path, tmp: Path) -> dict:
    """Whole processes over the folder, interleaved: CLI (overlapped), API loop, reference loop; OpenVINO's
    CLI also with an empty model cache (a first process ever)."""
    runs = {}
    warm, cold = tmp / "folder_cache", tmp / "folder_cache_empty"
    for e in pythons:
        if e == "reference":
            runs["reference loop"] = ([pythons[e], __file__, "--folder-worker", e, str(folder)], None)
        else:
            cli = [sys.executable, "-m", "fastmtcnn", "detect", str(folder), "-q", "--backend", e]
            runs[f"{e} CLI"] = (cli, warm)
            if e == "openvino":
                runs[f"{e} CLI, empty cache"] = (cli, cold)
            runs[f"{e} loop"] = ([sys.executable, __file__, "--folder-worker", e, str(folder)], warm)
    times = {k: [] for k in runs}
    for _ in range(args.folder_rounds):
        for k, (cmd, cache) in runs.items():
            if cache == cold:
                shutil.rmtree(cold, ignore_errors=True)
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=_env(cache))
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


# --------------------------------------------------------------------------- where the time goes


def _pool(n: int, k: int, s: int) -> int:
    return -(-(n - k) // s) + 1  # ceil mode, as the nets pool


def _conv(h: int, w: int, cout: int, cin: int, k: int) -> tuple[int, int, float]:
    h, w = h - k + 1, w - k + 1
    return h, w, 2.0 * h * w * cout * cin * k * k


def net_flops(net: str, shape: tuple[int, ...]) -> float:
    """Multiply-adds x 2 of one call of a net on an input of `shape` (N, 3, H, W)."""
    n, _, h, w = shape
    if net == "pnet":
        h, w, f1 = _conv(h, w, 10, 3, 3)
        h, w = _pool(h, 2, 2), _pool(w, 2, 2)
        h, w, f2 = _conv(h, w, 16, 10, 3)
        h, w, f3 = _conv(h, w, 32, 16, 3)
        return n * (f1 + f2 + f3 + 2.0 * h * w * 32 * 6)
    if net == "rnet":  # 24 -> conv 22 -> pool 11 -> conv 9 -> pool 4 -> conv2x2 3 -> dense 576-128 -> 2+4
        f = _conv(24, 24, 28, 3, 3)[2] + _conv(11, 11, 48, 28, 3)[2] + _conv(4, 4, 64, 48, 2)[2]
        return n * (f + 2.0 * (576 * 128 + 128 * 6))
    # onet: 48 -> 46 -> pool 23 -> 21 -> pool 10 -> 8 -> pool 4 -> conv2x2 3 -> dense 1152-256 -> 2+4+10
    f = (_conv(48, 48, 32, 3, 3)[2] + _conv(23, 23, 64, 32, 3)[2] + _conv(10, 10, 64, 64, 3)[2]
         + _conv(4, 4, 128, 64, 2)[2])
    return n * (f + 2.0 * (1152 * 256 + 256 * 16))


def analyze(path: Path, minsize: float, rounds: int) -> None:
    """Stage times of each engine on one photo and the GFLOP/s its nets reach, vs the cores' peak."""
    from fastmtcnn import MTCNN, read_image

    mhz = 0.0
    try:
        mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        pass
    cores = os.cpu_count() or 1
    peak = cores * mhz * 1e6 * 32 / 1e9  # AVX2: two 8-wide fp32 FMA units a cycle
    img = read_image(path)
    print(f"\nwhere the time goes: {path.name} {img.shape[1]}x{img.shape[0]}, minsize {minsize:g}, "
          f"{rounds} warm calls; peak {peak:.0f} GFLOP/s fp32 ({cores} cores x {mhz:.0f} MHz x 32 FLOP/cycle, "
          "AVX2 FMA)")
    for engine in ("openvino", "onnxruntime"):
        det = MTCNN(backend=engine, minsize=minsize)
        det.detect(img)
        be, flops = det.backend, {"pnet": 0.0, "rnet": 0.0, "onet": 0.0}
        infer, stream = be._infer, be._stream

        def counted(net, *arrays, _infer=infer):  # RNet/ONet batches
            if net != "pnet":
                flops[net] += net_flops(net, arrays[0].shape)
            return _infer(net, *arrays)

        def counted_stream(net, inputs, timer=None, _stream=stream):  # PNet tiles (made while others run)
            def counting():
                for arrays in inputs:
                    if net == "pnet":
                        flops[net] += net_flops(net, arrays[0].shape)
                    yield arrays
            return _stream(net, counting(), *([timer] if timer is not None else []))

        be._infer, be._stream = counted, counted_stream
        det.timer.enabled = True
        t = time.perf_counter()
        for _ in range(rounds):
            det.detect(img)
        total = (time.perf_counter() - t) / rounds
        st = {k: v / rounds for k, v in det.timer.totals.items()}
        # PNet runs while the next tiles are made (OpenVINO's streams): its rate is over both stages
        spent = {"pnet": st.get("pnet", 0.0) + st.get("pyramid", 0.0), "rnet": st.get("rnet", 0.0),
                 "onet": st.get("onet", 0.0)}
        rates = "  ".join(f"{k} {flops[k] / rounds / 1e9:.1f} GFLOP in {spent[k] * 1e3:.0f} ms = "
                          f"{flops[k] / rounds / max(spent[k], 1e-9) / 1e9:.0f} GFLOP/s" for k in flops)
        stages = " ".join(f"{k} {v * 1e3:.0f}" for k, v in st.items())
        print(f"  {engine:11s} {total * 1e3:.0f} ms a call; stages (ms): {stages}")
        pnet_rate = flops["pnet"] / rounds / max(spent["pnet"], 1e-9) / 1e9
        print(f"  {'':11s} {rates} (PNet: over pyramid + pnet)"
              + (f"; PNet at {pnet_rate / peak:.0%} of peak" if peak else ""))


def resampling(path: Path, minsize: float, rounds: int) -> None:
    """The resampling of one photo (its PNet tiles and RNet/ONet crops): the array-API gathers
    (`pipeline.canvas_input`, `crop.area_resize`, the torch backend's reference path) vs the host
    path the CPU backends run (`host.HostBackend._tile`, `crop.crops_host`)."""
    from fastmtcnn import MTCNN, read_image
    from fastmtcnn.crop import area_resize, crops_host
    from fastmtcnn.pipeline import canvas_input

    img = read_image(path)
    det = MTCNN(minsize=minsize)
    be, seen = det.backend, []
    crops = be.crops
    be.crops = lambda ii, f, w, size: seen.append((f, w, size)) or crops(ii, f, w, size)
    det.detect(img)  # records the crops the cascade asks for
    plan = det.plan(*img.shape[:2])
    ii = be.integrals([img])

    def before():
        for k in range(len(plan.canvases)):
            canvas_input(ii, plan, [k])
        for f, w, size in seen:
            area_resize(ii, f, w, size, size)

    def now():
        state = {}
        for c in plan.canvases:
            be._tile(ii, c, state)
        for f, w, size in seen:
            crops_host(ii, f, w, size)

    times = {"before": [], "now": []}
    for _ in range(rounds):
        for k, fn in (("before", before), ("now", now)):
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    b, n = (statistics.median(times[k]) for k in ("before", "now"))
    print(f"  resampling ({len(plan.canvases)} tiles of {plan.tile}, {sum(len(w) for _, w, _ in seen)} crops, "
          f"integral image not included): array-API gathers {b * 1e3:.0f} ms, host path {n * 1e3:.0f} ms "
          f"= {b / n:.2f}x")


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--ref-python", default="/tmp/refvenv/bin/python",
                    help="python of the reference's virtualenv (torch, torchvision, facenet-pytorch)")
    ap.add_argument("--rounds", type=int, default=5, help="warm calls per engine per fresh process")
    ap.add_argument("--fresh", type=int, default=3, help="fresh processes per engine, photo and minsize")
    ap.add_argument("--folder-rounds", type=int, default=3)
    ap.add_argument("--minsize", type=float, nargs="+", default=[20, 40])
    ap.add_argument("--sizes", nargs="+", help="only these rows (e.g. 640x480 '12 MP 4032x3024')")
    ap.add_argument("--no-folder", action="store_true")
    ap.add_argument("--no-fresh", action="store_true", help="skip the fresh-process runs (model cache empty/filled)")
    ap.add_argument("--no-analysis", action="store_true", help="skip 'where the time goes' on the 12 MP photo")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--folder-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], float(args.worker[2]))
        return 0
    if args.folder_worker:
        folder_worker(*args.folder_worker)
        return 0

    from fastmtcnn.metrics import greedy_match

    ref = subprocess.run([args.ref_python, "-c", "import facenet_pytorch, torch; print(torch.__version__)"],
                         capture_output=True, text=True)
    if ref.returncode != 0:
        print(f"bench_cpu: the reference's python ({args.ref_python}) cannot import facenet_pytorch; "
              "see README 'Benchmarks'", file=sys.stderr)
        return 2
    import onnxruntime
    import openvino

    pythons = {"openvino": sys.executable, "onnxruntime": sys.executable, "reference": args.ref_python}
    print(f"machine: {machine()}; OpenVINO {openvino.__version__}, ONNX Runtime {onnxruntime.__version__}, "
          f"reference facenet-pytorch 2.6.0 on torch {ref.stdout.strip()} ({os.cpu_count()} threads); "
          f"medians of {args.fresh} fresh processes x {args.rounds} warm rounds, interleaved")
    tmp = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    report = {"machine": machine(), "fresh": {}, "photos": [], "folder": None}
    try:
        every = make_photos(Path(args.data), tmp)
        photos = {k: v for k, v in every.items() if not args.sizes or any(s in k for s in args.sizes)}
        if not args.no_fresh:
            print("\nfresh process, one photo, minsize 20: start of the process to the first result, s "
                  "(first call = constructor + first detect, imports not included), medians")
            for label in ("640x480", "12 MP 4032x3024"):
                r = bench_fresh(args, pythons, every[label], 20, tmp)
                report["fresh"][label] = r
                ref = r["reference"]
                print(f"  {label}:")
                for k, v in r.items():
                    print(f"    {k:24s} process {v['process']:6.2f}  first call {v['first']:6.2f}   "
                          f"reference / this: process {ref['process'] / v['process']:5.2f}x  "
                          f"first call {ref['first'] / v['first']:5.2f}x", flush=True)
        cache = tmp / "cache"  # the OpenVINO processes of the table share one model cache, as a user's do
        print("\nper photo: first call = constructor + first detect (s; process = start to first result); warm = "
              "detect from the file (ms); OpenVINO's model cache filled by the run's earlier processes")
        head = (f"{'photo':17s} {'min':>3s} | {'first call s (process s)':^44s} | {'warm ms':^20s} | "
                f"{'peak MB':^15s} | {'ref/ov':>6s} {'ref/ort':>7s} {'ref/ov':>6s} {'ref/ort':>7s} | "
                f"{'ov/ref':>6s} | faces")
        print(head)
        print(f"{'':17s} {'':3s} | {'ov':>14s} {'ort':>14s} {'ref':>14s} | {'ov':>6s} {'ort':>6s} {'ref':>6s} | "
              f"{'ov':>4s} {'ort':>4s} {'ref':>5s} | {'first':>6s} {'first':>7s} {'warm':>6s} {'warm':>7s} | "
              f"{'mem':>6s} |")
        for label, path in photos.items():
            for ms in args.minsize:
                r = bench_photo(args, pythons, path, ms, cache)
                f, p, w, m = r["first"], r["process"], r["warm"], r["peak"]
                matched = len(greedy_match(r["boxes"]["reference"], r["boxes"]["openvino"], 0.7))
                faces = f"{len(r['boxes']['openvino'])}/{len(r['boxes']['reference'])} matched {matched}"
                print(f"{label:17s} {ms:3.0f} | " + " ".join(f"{f[e]:6.2f} ({p[e]:5.2f})" for e in ENGINES) + " | "
                      + " ".join(f"{w[e] * 1e3:6.0f}" for e in ENGINES) + " | "
                      + " ".join(f"{m[e]:4.0f}" for e in ENGINES[:2]) + f" {m['reference']:5.0f} | "
                      f"{f['reference'] / f['openvino']:5.2f}x {f['reference'] / f['onnxruntime']:6.2f}x "
                      f"{w['reference'] / w['openvino']:5.2f}x {w['reference'] / w['onnxruntime']:6.2f}x | "
                      f"{m['openvino'] / m['reference']:5.2f}x | {faces}", flush=True)
                report["photos"].append({"photo": label, "minsize": ms, **{k: v for k, v in r.items()}})
        if not args.no_analysis:
            analyze(every["12 MP 4032x3024"], 20, args.rounds)
            resampling(every["12 MP 4032x3024"], 20, args.rounds)
        if not args.no_folder:
            folder = make_folder(Path(args.data), tmp)
            res = bench_folder(args, pythons, folder, tmp)
            report["folder"] = res
            n = len(list(folder.iterdir()))
            base = res["reference loop"]
            print(f"\nfolder of {n} photos, {n} different sizes (whole processes, imports included; "
                  f"medians of {args.folder_rounds}):")
            for k, v in res.items():
                print(f"  {k:26s} {v:7.2f} s   reference / this = {base / v:5.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
