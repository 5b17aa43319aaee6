"""Ray mode of `fastmtcnn batch`: the same job as a Ray Data pipeline.

paths (from the driver's listing, already without the inputs done)
  -> decode in CPU tasks (pixels travel as Arrow binary, errors as rows)
  -> detect in actors that hold the models (one GPU each with a CUDA device)
  -> write atomic part files into the output (a datasink, so workers write).

The rows, the part files and the resume rules are those of local mode
(`fastmtcnn.batch`); only the scheduling differs. On a multi-node cluster,
OUT must be a folder every node sees (shared filesystem) or an object-store
URI, and every node needs `fastmtcnn[ray]` installed.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import ray
import ray.data

from .batch import SCHEMA, Decoded, Output, Pending, Stats, chunks, decode, detect_decoded, results_table
from .detector_spec import DetectorSpec

LIGHT_CPUS = 0.25   # CPU share requested by a decoding task (CPU mode) and by a write task
ACTOR_CPUS = 0.75   # CPU share requested by a CPU detector actor (it runs one thread)
DECODED = pa.schema([("path", pa.string()), ("pixels", pa.large_binary()), ("height", pa.int32()),
                     ("width", pa.int32()), ("error", pa.string())])


def run_ray(pending: Pending, output: Output, spec: DetectorSpec, *, address: str = "local",
            actors: int | None = None, batch: int = 16, part_size: int = 1000, num_cpus: int | None = None,
            object_store_mb: int | None = None, progress: bool = True) -> Stats:
    """Run the job on Ray (a new local instance, the cluster at `address`, or the one already initialised).

    Each detector actor builds its own detector from `spec` (one GPU each when it asks for CUDA).
    """
    if pending.todo == 0:
        return Stats()
    t0 = time.perf_counter()
    started = _connect(address, num_cpus, object_store_mb)
    startup = time.perf_counter() - t0
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        ctx.print_on_execution_start = False
        if not progress:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        gpu = spec.uses_gpu
        layout = plan_resources(ray.cluster_resources(), gpu, actors)
        if spec.options.get("threads") is None and not gpu:
            spec = spec.with_options(threads=1)  # CPU: more single-threaded actors beat more threads per actor
        # whole batches per block; about 8 blocks per actor (balance), at most a part (per-block overhead)
        block_rows = batch * max(1, min(part_size // batch, pending.todo // (batch * 8 * layout.actors)))
        tables = [pa.table({"path": pa.array(c, pa.string())}) for c in chunks(pending, block_rows)]
        sink = PartSink(output, part_size)
        (ray.data.from_arrow(tables)
            .map_batches(decode_batch, batch_format="pyarrow", batch_size=batch, num_cpus=layout.decode_cpus,
                         fn_kwargs={"cwd": os.getcwd()})
            .map_batches(Detect, batch_format="pyarrow", batch_size=batch,
                         compute=ray.data.ActorPoolStrategy(size=layout.actors),
                         num_cpus=layout.actor_cpus, num_gpus=1 if gpu else 0, fn_constructor_args=(spec,))
            .write_datasink(sink, ray_remote_args={"num_cpus": LIGHT_CPUS}))
        sink.stats.startup_s = startup
        return sink.stats
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class Layout:
    """How the pipeline asks Ray for resources."""

    actors: int
    actor_cpus: float
    decode_cpus: float


def plan_resources(resources: dict, gpu: bool, actors: int | None = None) -> Layout:
    """Actors and CPU shares for a cluster's resources.

    GPU: one actor per GPU; decoding is the heavy CPU work, one CPU per task.
    CPU: detection is the heavy work. Actors ask for 3/4 of a CPU and run one
    thread each, decoding and write tasks for 1/4: on 2 CPUs that is 2
    actors plus room for decoding, and whatever the count, some CPU share is
    always left for the light tasks, so the pipeline cannot starve itself.
    """
    cpus = float(resources.get("CPU", 0))
    if gpu:
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise RuntimeError("a CUDA device was asked for, but the Ray cluster has no GPUs")
        return Layout(actors or gpus, 1.0, 1.0)
    fit = int((cpus - 2 * LIGHT_CPUS) // ACTOR_CPUS)
    if fit < 1:
        raise RuntimeError(f"the Ray cluster has {cpus:g} CPUs; Ray mode needs at least 1.25")
    if actors is not None and actors > fit:
        raise ValueError(f"actors={actors}: the Ray cluster's {cpus:g} CPUs fit at most {fit} detector actors")
    return Layout(actors or min(int(cpus), fit), ACTOR_CPUS, LIGHT_CPUS)


def _connect(address: str, num_cpus: int | None, object_store_mb: int | None) -> bool:
    """Join Ray; True when this call started a local instance (and must shut it down)."""
    if ray.is_initialized():
        return False
    if address != "local":
        if num_cpus is not None or object_store_mb is not None:
            raise ValueError("num_cpus= and object_store_mb= size a local Ray instance, not a cluster")
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, TimeoutError, ValueError) as e:
            raise RuntimeError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
        return False
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             object_store_memory=object_store_mb * 2**20 if object_store_mb else None)
    return True


def decode_batch(batch: pa.Table, cwd: str) -> pa.Table:
    """CPU task: decode the paths of a batch; pixels as raw bytes (shape in height/width)."""
    rows: dict[str, list] = {k: [] for k in DECODED.names}
    for path in batch.column("path").to_pylist():
        d = decode(path, cwd)
        rows["path"].append(path)
        rows["pixels"].append(d.image.tobytes() if d.image is not None else None)
        rows["height"].append(d.image.shape[0] if d.image is not None else None)
        rows["width"].append(d.image.shape[1] if d.image is not None else None)
        rows["error"].append(d.error)
    return pa.table(rows, schema=DECODED)


class Detect:
    """Actor: holds one detector and turns decoded batches into result rows."""

    def __init__(self, spec: DetectorSpec) -> None:
        self.det = spec.build()

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = []
        for path, pixels, h, w, err in zip(*(batch.column(n).to_pylist() for n in DECODED.names)):
            img = None if pixels is None else np.frombuffer(pixels, np.uint8).reshape(h, w, 3)
            items.append(Decoded(path, img, err))
        return results_table(detect_decoded(self.det, items))


class PartSink(ray.data.Datasink):
    """Ray datasink: each write task writes its rows as one atomic part file."""

    def __init__(self, output: Output, part_size: int) -> None:
        self.output, self.part_size = output, part_size
        self.stats = Stats()

    @property
    def min_rows_per_write(self) -> int:
        return self.part_size

    def write(self, blocks: Iterable, ctx) -> tuple[int, int, int]:
        tables = [pa.Table.from_batches(b.to_batches(), schema=b.schema) if isinstance(b, pa.Table) else
                  pa.Table.from_pandas(b, preserve_index=False) for b in blocks]
        tables = [t.select(SCHEMA.names).cast(SCHEMA) for t in tables if t.num_rows]
        if not tables:
            return (0, 0, 0)
        table = pa.concat_tables(tables)
        self.output.write_part(table)
        s = Stats()
        s.add(table)
        return (s.processed, s.failed, s.faces)

    def on_write_complete(self, write_result) -> None:
        for rows, failed, faces in write_result.write_returns:
            if rows:
                self.stats.processed += rows
                self.stats.failed += failed
                self.stats.faces += faces
                self.stats.parts += 1
