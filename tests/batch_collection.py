"""A test collection for `fastmtcnn batch`: a few hundred images made from the shared photos.

Small resized and flipped copies (fast to detect), a handful of full-size
copies, exact duplicates in a subfolder, and files that must become error
rows (truncated JPEG/PNG, text named .jpg, empty file, random bytes).
"""
from __future__ import annotations

import importlib
from pathlib import Path

import cv2
import numpy as np

from conftest import skip_or_fail

FULL_SIZE = ("bob_multiple-faces.jpg", "matplotlib_grace_hopper.jpg", "skimage_astronaut.png", "skimage_camera.png")
SMALL_SIZES = ((160, 120), (120, 160), (200, 150), (128, 128))
BAD = ("bad/truncated.jpg", "bad/truncated.png", "bad/text.jpg", "bad/empty.png", "bad/noise.jpg")


def make_collection(shared: Path, root: Path) -> dict:
    """Write the collection under root; returns {"images": [...], "bad": [...]} as listed paths."""
    sources = sorted(p for p in shared.iterdir() if p.suffix in (".jpg", ".png"))
    images = []
    for src in sources:
        bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
        for w, h in SMALL_SIZES:
            small = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
            for flip in (False, True):
                out = root / "small" / src.stem / f"{w}x{h}{'_flip' if flip else ''}.jpg"
                out.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out), small[:, ::-1] if flip else small)
                images.append(out)
    for name in FULL_SIZE:
        out = root / "full" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes((shared / name).read_bytes())
        images.append(out)
    for src in images[:40:3]:  # exact copies under other names: same pixels, separate inputs
        out = root / "copies" / f"{src.parent.name}_{src.name}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(src.read_bytes())
        images.append(out)
    (root / "bad").mkdir()
    jpg = (shared / "facerec_biden.jpg").read_bytes()
    png = (shared / "skimage_coffee.png").read_bytes()
    (root / BAD[0]).write_bytes(jpg[: len(jpg) // 2])
    (root / BAD[1]).write_bytes(png[: len(png) // 2])
    (root / BAD[2]).write_text("not an image\n")
    (root / BAD[3]).write_bytes(b"")
    (root / BAD[4]).write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (root / "notes.txt").write_text("not an image suffix: not an input\n")
    return {"images": sorted(str(p) for p in images), "bad": sorted(str(root / b) for b in BAD)}


def require(module: str, extra: str):
    """Import an optional dependency: without it the tests skip, but under CI (which must install the extra) fail."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        skip_or_fail(f"needs pip install 'fastmtcnn[{extra}]' ({e})")
