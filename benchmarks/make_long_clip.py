"""A longer H.264 file for the video benchmark: one clip repeated N times, stream-copied (no re-encode).

Why: the shared clips are 300 frames (0.2-0.4 s at our speed), so opening
the decoders is a large share of their time; a 3000-frame file of the same
frames shows the rate a real video gets. Needs an ffmpeg binary: the one of
`pip install imageio-ffmpeg` (benchmark only, not a fastmtcnn dependency),
or `ffmpeg` on PATH.

    python benchmarks/make_long_clip.py ../shared/data/video/group_1080p_h264.mp4 long_1080p_h264.mp4 --times 10
    python benchmarks/bench_e2e_gpu.py --jobs video --clips 1080p --extra-clips long_1080p_h264.mp4
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def ffmpeg() -> str:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        exe = shutil.which("ffmpeg")
        if exe is None:
            sys.exit("make_long_clip: no ffmpeg (pip install imageio-ffmpeg)")
        return exe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--times", type=int, default=10)
    args = ap.parse_args()
    if not args.clip.is_file():
        sys.exit(f"make_long_clip: {args.clip}: no such file")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.writelines(f"file '{args.clip.resolve()}'\n" for _ in range(args.times))
    subprocess.run([ffmpeg(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i", f.name,
                    "-c", "copy", str(args.out)], check=True)
    Path(f.name).unlink()
    print(f"{args.out}: {args.times} x {args.clip.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
