"""`fastmtcnn align PATH... --out DIR`: one aligned (and/or margin) crop file per face, with an index."""
from __future__ import annotations

import argparse
import json
import time

from ..cli import add_detector_args, detector_from_args
from . import input_paths, output_dir, photo_records, plural, progress, unique_stem

KINDS = ("aligned", "margin")


def register(sub) -> None:
    p = sub.add_parser(
        "align",
        description="Detect faces and write one crop file per face: 'aligned' maps the 5 landmarks onto "
                    "the standard 112x112 template (similarity transform, as recognition models expect); "
                    "'margin' is the box squared and widened by a margin. DIR/index.json lists every input "
                    "with its faces and crop files, or its error. Exit code 1 if any input failed.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--crops", choices=["aligned", "margin", "both"], default="both",
                   help="which crops to write (default both): DIR/aligned/, DIR/margin/")
    p.add_argument("--size", type=int, default=112, help="side of aligned crops in pixels (default 112; "
                                                         "the template is scaled)")
    p.add_argument("--margin-size", type=int, default=160, help="side of margin crops in pixels (default 160)")
    p.add_argument("--margin", type=float, default=0.2,
                   help="margin crops: box side grown by this fraction (default 0.2)")
    p.add_argument("--min-score", type=float, default=0.0, help="skip faces scored below this")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="crop file format (default png)")
    p.add_argument("-q", "--quiet", action="store_true", help="only the summary line")
    add_detector_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..align import align_faces, margin_crops, template
    from ..draw import save_rgb

    if args.size < 8 or args.margin_size < 8:
        raise ValueError("--size and --margin-size must be >= 8 pixels")
    if args.margin < 0:
        raise ValueError(f"--margin must be >= 0, got {args.margin}")
    kinds = KINDS if args.crops == "both" else (args.crops,)
    paths = input_paths(args.paths)
    out = output_dir(args.out, "--out")
    for k in kinds:
        output_dir(str(out / k), "--out")
    det = detector_from_args(args)
    used: set[str] = set()
    records: list[dict] = []
    crops = faces_total = 0
    t0 = time.perf_counter()
    bar = progress(paths)

    def handle(r, rec: dict) -> None:
        nonlocal crops, faces_total
        img = r.rgb()  # the crops are cut on the host
        faces = r.faces[r.faces.scores >= args.min_score]
        stem = unique_stem(r.path, used)
        rec.update(width=img.shape[1], height=img.shape[0], faces=faces.to_list())
        made = {}
        if "aligned" in kinds:
            made["aligned"], mats = align_faces(img, faces.landmarks, args.size)
            for f, m in zip(rec["faces"], mats):
                f["transform"] = [[round(float(v), 6) for v in row] for row in m]
        if "margin" in kinds:
            made["margin"] = margin_crops(img, faces.boxes, args.margin_size, args.margin)
        for i, f in enumerate(rec["faces"]):
            for kind, arr in made.items():
                name = f"{kind}/{stem}_{i}.{args.format}"
                save_rgb(out / name, arr[i])
                f[kind] = name
                crops += 1
        faces_total += len(faces)
        if not args.quiet:
            bar.write(f"{r.path}: {plural(len(faces), 'face')}")

    try:
        records.extend(photo_records(det, paths, bar, handle))
    finally:
        bar.close()
        index = {"aligned_size": args.size, "template": template(args.size).round(4).tolist(),
                 "margin_size": args.margin_size, "margin": args.margin, "crops": list(kinds), "images": records}
        (out / "index.json").write_text(json.dumps(index, indent=1))
    failed = sum("error" in rec for rec in records)
    print(f"{plural(len(paths), 'image')}, {plural(faces_total, 'face')}, {plural(crops, 'crop')}, {failed} failed, "
          f"{time.perf_counter() - t0:.2f}s -> {out}/index.json")
    return 1 if failed else 0
