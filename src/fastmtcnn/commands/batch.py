"""`fastmtcnn batch INPUT... --out OUT`: faces in a whole collection, into a Parquet dataset.

Re-running the same command resumes: inputs already in OUT are skipped, and
a killed run loses nothing that was written. `--ray` runs the same job on Ray.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from ..cli import add_detector_args, detector_spec
from ..detector_spec import DetectorSpec
from . import plural


def register(sub) -> None:
    p = sub.add_parser(
        "batch",
        description="Detect faces in every image of a folder (recursive), glob or manifest and write one "
                    "Parquet row per input (path, width, height, faces, error) into the folder OUT. "
                    "Re-running the same command skips inputs already in OUT. Exit code 1 if OUT "
                    "holds any error rows.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="folder (recursive), glob, image file, or manifest: a .txt/.lst of paths or URIs "
                        "(one a line), or a .csv/.tsv/.parquet file with a path column")
    p.add_argument("--out", required=True, metavar="OUT", help="output folder (Parquet part files); local or a URI")
    p.add_argument("--column", default="path", help="manifest column holding the paths (default: path)")
    p.add_argument("--jsonl", metavar="FILE", help="also export every row of OUT as JSON Lines when done")
    p.add_argument("--batch", type=int, default=16, metavar="N", help="images per detector call (default 16)")
    p.add_argument("--part-size", type=int, default=1000, metavar="N",
                   help="rows per Parquet part file; a killed run redoes at most this many per writer (default 1000)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local mode: worker processes (default: CPU count; 0 = all in the main process). On CPU "
                        "each decodes and detects; with a CUDA device they decode and the main process detects")
    g = p.add_argument_group("ray", "distributed mode (pip install 'fastmtcnn[ray]')")
    g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run as a Ray Data pipeline: on a new local Ray instance, or on the cluster at ADDRESS "
                        "('auto', 'HOST:6379' or 'ray://HOST:10001')")
    g.add_argument("--actors", type=int, metavar="N",
                   help="detector actors (default: one per GPU with a CUDA device, else one per CPU, "
                        "leaving a share for decoding)")
    g.add_argument("--num-cpus", type=int, metavar="N", help="CPUs of the local Ray instance (default: all)")
    g.add_argument("--object-store-mb", type=int, metavar="MB", help="object store size of the local Ray instance")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_detector_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from .. import batch as job
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("pyarrow"):
            raise RuntimeError("fastmtcnn batch needs pyarrow: pip install 'fastmtcnn[batch]'") from None
        raise
    for name in ("batch", "part_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise ValueError("--workers must be >= 0")
    if args.ray and args.ray not in ("local", "auto") and ":" not in args.ray:
        raise ValueError(f"--ray {args.ray}: an address is 'auto', HOST:PORT or ray://HOST:PORT "
                         "(to use a local instance, put --ray after the inputs)")

    if args.ray:
        try:
            from .. import raydata  # noqa: F401 - fail before any work when Ray is missing
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("ray"):
                raise RuntimeError("--ray needs Ray Data: pip install 'fastmtcnn[ray]'") from None
            raise
    spec = detector_spec(args)
    output = job.Output(args.out)
    output.open(job.settings_of(spec.config))
    t0 = time.perf_counter()
    try:
        pending = job.plan_inputs(args.inputs, output.done_keys(), args.column)
        try:
            if pending.total == 0:
                raise ValueError("no input images found")
            note = f", {pending.duplicates} duplicate paths ignored" if pending.duplicates else ""
            print(f"{plural(pending.total, 'input')}: {pending.done} already in {args.out}, {pending.todo} to do{note}",
                  file=sys.stderr)
            t1 = time.perf_counter()
            stats = _process(args, spec, pending, output) if pending.todo else job.Stats()
            dt = time.perf_counter() - t1 - stats.startup_s
            missing = job.unaccounted(pending, output.done_keys())
        finally:
            pending.close()
        if missing:
            raise RuntimeError(f"{plural(missing, 'input')} {'has' if missing == 1 else 'have'} no row in {args.out}; "
                               "re-run the same command to finish them")
        rate = f", {stats.processed / dt:.1f} img/s" if stats.processed and dt > 0 else ""
        joined = f" after {stats.startup_s:.1f}s joining Ray" if stats.startup_s else ""
        print(f"processed {stats.processed} ({stats.failed} failed, {plural(stats.faces, 'face')}) "
              f"in {dt:.1f}s{rate}{joined}",
              file=sys.stderr)
        total = job.summarize(output)
        if args.jsonl:
            job.export_jsonl(output, args.jsonl)
        print(f"{args.out}: {plural(total['rows'], 'row')}, {plural(total['errors'], 'error')}, "
              f"{plural(total['faces'], 'face')} "
              f"({time.perf_counter() - t0:.1f}s)")
    finally:
        output.close()
    return 1 if total["errors"] else 0


def _process(args: argparse.Namespace, spec: DetectorSpec, pending, output):
    """Run the pending inputs in Ray or local mode; returns the run's Stats."""
    from .. import batch as job
    from ..resources import available_memory, worker_count

    if args.ray:
        from ..raydata import run_ray

        return run_ray(pending, output, spec, address=args.ray, actors=args.actors,
                       batch=args.batch, part_size=args.part_size, num_cpus=args.num_cpus,
                       object_store_mb=args.object_store_mb, progress=not args.quiet)
    cpus = os.cpu_count() or 1
    workers = args.workers if args.workers is not None else worker_count(cpus, available_memory())
    if spec.options.get("threads") is None and not spec.uses_gpu and workers > 0:
        spec = spec.with_options(threads=max(1, cpus // workers))  # processes, not threads, keep the cores busy
    return job.run_local(pending, output, spec.build, workers=workers,
                         detect_in_workers=not spec.uses_gpu, batch=args.batch, part_size=args.part_size,
                         progress=False if args.quiet else None)
