"""Switching cost, measured: facenet-pytorch's own MTCNN.detect() vs ours through the compat
class (and the `mtcnn` package's detect_faces vs ours through its compat class), same photos,
same run.

Each side runs in its own interpreter (facenet-pytorch and mtcnn need torch and TensorFlow,
kept out of fastmtcnn's install), as the user's job: open the file with PIL, detect. Two
measurements per photo:
- first call: a fresh process per photo and side: import, constructor, first detect;
- warm: one long-lived worker process per side; after a warm-up pass the photos are timed
  interleaved, photo by photo, every side in turn (order rotated per round), so machine noise
  hits all sides alike; the median of --rounds per photo.
Ratios are printed per photo from this one run.

    python benchmarks/bench_compat.py --ref-python /tmp/refvenv/bin/python \
        [--mtcnn-python /tmp/mtcnn-venv/bin/python] [--rounds 6] [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# side -> (interpreter option, import line, detector construction, one detection on a PIL image `img`)
SIDES = {
    "facenet-pytorch": ("ref", "from facenet_pytorch import MTCNN", "MTCNN(keep_all=True, device='cpu')",
                        "det.detect(img, landmarks=True)"),
    "ours (facenet compat)": ("ours", "from fastmtcnn.compat.facenet_pytorch import MTCNN", "MTCNN(keep_all=True)",
                              "det.detect(img, landmarks=True)"),
    "mtcnn": ("mtcnn", "from mtcnn import MTCNN", "MTCNN()", "det.detect_faces(np.asarray(img))"),
    "ours (mtcnn compat)": ("ours", "from fastmtcnn.compat.mtcnn import MTCNN", "MTCNN()",
                            "det.detect_faces(np.asarray(img))"),
}
PAIRS = [("facenet-pytorch", "ours (facenet compat)"), ("mtcnn", "ours (mtcnn compat)")]


def worker(side: str, paths: list[str], mode: str) -> dict:
    """Run in the side's interpreter: "first" times import, constructor and one detection; "serve"
    answers detection requests (see Server)."""
    _, import_line, make, call = SIDES[side]
    t0 = time.perf_counter()
    exec(import_line, globals())
    import numpy as np  # noqa: F401 - used by the call strings
    from PIL import Image

    t1 = time.perf_counter()
    det = eval(make)  # noqa: S307 - fixed strings above
    t2 = time.perf_counter()

    def run(path: str) -> int:
        img = Image.open(path).convert("RGB")
        out = eval(call, {"det": det, "img": img, "np": np})  # noqa: S307
        return len(out) if isinstance(out, list) else (0 if out[0] is None else len(out[0]))

    if mode == "first":
        faces = run(paths[0])
        return {"import": t1 - t0, "init": t2 - t1, "detect": time.perf_counter() - t2, "faces": faces}
    # serve: one photo path per line on stdin -> {"s": seconds, "faces": n} per line on stdout
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        t = time.perf_counter()
        faces = run(line.strip())
        print(json.dumps({"s": time.perf_counter() - t, "faces": faces}), flush=True)
    return {}


class Server:
    """A worker process of one side that detects on request, so that sides interleave photo by photo."""

    def __init__(self, python: str, side: str) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", side, "--mode", "serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.proc.args[3]} ended unexpectedly")
            if line.startswith("{"):
                return json.loads(line)

    def detect(self, path: str) -> dict:
        self.proc.stdin.write(path + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _spawn(python: str, side: str, paths: list[str], mode: str) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--mode", mode, *paths]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
        raise RuntimeError(f"{side} worker failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--ref-python", required=False, help="interpreter with facenet-pytorch 2.6.0 (and torch)")
    ap.add_argument("--mtcnn-python", help="interpreter with mtcnn 1.0.0 and TensorFlow (optional)")
    ap.add_argument("--rounds", type=int, default=5, help="timed passes over the photos (warm)")
    ap.add_argument("--images", nargs="+", help="photo names in --data (default: every photo with a reference)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="warm", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.worker:
        print(json.dumps(worker(args.worker, rest, args.mode)))
        return 0
    if not args.ref_python:
        ap.error("--ref-python is required (see README 'Benchmarks' for the reference's virtualenv)")
    data = Path(args.data)
    names = args.images or sorted(p.name[:-5] for p in (data / "ref").glob("*.json"))
    paths = [str(data / n) for n in names]
    pythons = {"ref": args.ref_python, "ours": sys.executable, "mtcnn": args.mtcnn_python}
    sides = [s for s in SIDES if pythons[SIDES[s][0]]]
    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f}; {len(paths)} photos of {data}; each side with its library's default threads")

    first: dict[str, dict[str, dict]] = {s: {} for s in sides}
    for p in paths:  # fresh process per photo and side, sides alternating
        for s in sides:
            first[s][p] = _spawn(pythons[SIDES[s][0]], s, [p], "first")
    warm: dict[str, dict[str, list[float]]] = {s: {p: [] for p in paths} for s in sides}
    faces: dict[str, dict[str, int]] = {s: {} for s in sides}
    servers = {s: Server(pythons[SIDES[s][0]], s) for s in sides}
    try:
        for p in paths:  # warm-up pass: lazy initialisation, allocator, plan caches
            for s in sides:
                servers[s].detect(p)
        for r in range(args.rounds):
            for p in paths:
                for k in range(len(sides)):  # the sides' order rotates from round to round
                    s = sides[(k + r) % len(sides)]
                    out = servers[s].detect(p)
                    warm[s][p].append(out["s"])
                    faces[s][p] = out["faces"]
    finally:
        for srv in servers.values():
            srv.close()

    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    for a, b in PAIRS:
        if a not in sides:
            print(f"\n{a}: not measured (no --{SIDES[a][0]}-python)")
            continue
        print(f"\n{a} vs {b}: time per photo, PIL decode included; ratio = {a} / ours")
        print(f"{'photo':28s} {'faces':>9s} | {'first call (fresh process): ' + a:>34s} {'ours':>8s} {'ratio':>7s} | "
              f"{'warm: ' + a:>22s} {'ours':>8s} {'ratio':>7s}")
        ratios_first, ratios_warm = [], []
        for p in paths:
            fa, fb = first[a][p], first[b][p]
            t_fa = fa["import"] + fa["init"] + fa["detect"]
            t_fb = fb["import"] + fb["init"] + fb["detect"]
            wa, wb = statistics.median(warm[a][p]), statistics.median(warm[b][p])
            ratios_first.append(t_fa / t_fb)
            ratios_warm.append(wa / wb)
            print(f"{Path(p).name:28s} {faces[a][p]:>4d}/{faces[b][p]:<4d} | {t_fa:33.2f}s {t_fb:7.2f}s "
                  f"{t_fa / t_fb:6.2f}x | {1000 * wa:20.1f}ms {1000 * wb:6.1f}ms {wa / wb:6.2f}x")
        imp = [(first[a][p]["import"], first[b][p]["import"]) for p in paths]
        ini = [(first[a][p]["init"], first[b][p]["init"]) for p in paths]
        det = [(first[a][p]["detect"], first[b][p]["detect"]) for p in paths]
        print(f"{'median':28s} {'':9s} | {'':35s} {'':8s} {statistics.median(ratios_first):6.2f}x | "
              f"{'':22s} {'':8s} {statistics.median(ratios_warm):6.2f}x")
        for label, pairs in (("import", imp), ("constructor", ini), ("first detect", det)):
            print(f"  first call, {label}: median {statistics.median(x for x, _ in pairs):.2f}s vs "
                  f"{statistics.median(y for _, y in pairs):.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
