"""`fastmtcnn detect PATH...`: faces in image files, folders and globs."""
from __future__ import annotations

import argparse
import json
import sys
import time

from ..cli import add_detector_args, detector_from_args
from . import annotated_suffix, input_paths, open_output, output_dir, photo_records, plural, progress, unique_stem


def register(sub) -> None:
    p = sub.add_parser("detect",
                       description="Detect faces in images. Files are decoded as RGB; prints one line per "
                                   "image and one per face. Exit code 1 if any input failed.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    p.add_argument("--json", metavar="FILE", help="write JSON Lines: one record per input ('-' for stdout)")
    p.add_argument("--save-dir", metavar="DIR", help="write annotated images (boxes, scores, landmarks) here")
    p.add_argument("-q", "--quiet", action="store_true", help="one line per image, no per-face lines")
    p.add_argument("--exif", action="store_true",
                   help="turn photos upright by their EXIF orientation first (off by default, as the reference: "
                        "boxes are then in the stored pixels)")
    add_detector_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    det = detector_from_args(args)
    paths = input_paths(args.paths)
    save_dir = output_dir(args.save_dir, "--save-dir") if args.save_dir else None
    jf = open_output(args.json, "--json") if args.json else None
    text = sys.stderr if args.json == "-" else sys.stdout
    used: set[str] = set()
    failed = faces_total = 0
    t0 = time.perf_counter()
    bar = progress(paths)

    def handle(r, record: dict) -> None:
        nonlocal faces_total
        faces = r.faces
        w, h = r.size
        record.update(width=w, height=h, faces=faces.to_list())
        faces_total += len(faces)
        line = f"{r.path}: {plural(len(faces), 'face')} ({w}x{h})"
        if save_dir:
            from ..draw import draw, save_rgb

            out = save_dir / f"{unique_stem(r.path, used)}{annotated_suffix(r.path)}"
            save_rgb(out, draw(r.rgb(), faces))
            record["annotated"] = str(out)
            line += f" -> {out}"
        bar.write(line, file=text)
        if not args.quiet:
            for i, f in enumerate(record["faces"], 1):
                (x1, y1, x2, y2), s, lm = f["box"], f["score"], f["landmarks"]
                bar.write(f"  face {i}: box ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}) score {s:.4f} "
                          f"eyes ({lm[0][0]:.0f}, {lm[0][1]:.0f}) ({lm[1][0]:.0f}, {lm[1][1]:.0f})", file=text)

    try:
        for record in photo_records(det, paths, bar, handle):
            failed += "error" in record
            if jf:
                jf.write(json.dumps(record) + "\n")
                jf.flush()
    finally:
        bar.close()
        if jf and jf is not sys.stdout:
            jf.close()
    dt = time.perf_counter() - t0
    print(f"{plural(len(paths), 'image')}, {plural(faces_total, 'face')}, {failed} failed, {dt:.2f}s", file=text)
    return 1 if failed else 0
