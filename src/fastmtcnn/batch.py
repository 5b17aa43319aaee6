"""Face detection over large image collections, resumable, nothing lost.

The job is: list the inputs, drop those already in the output, decode and
detect the rest, and write one Parquet row per input (faces, or the reason it
failed). The output folder is a Parquet dataset of part files; each part is
written to a hidden temporary file and renamed into place, so a part is either
complete or absent. That is what makes a killed run safe to re-run: the next
run reads the paths of the complete parts, skips them, and redoes the rest, so
every input ends up exactly once.

Memory stays bounded by the images in flight, not by the size of the
collection: the listing is spooled to a temporary file and the bookkeeping is a
16-byte key per input (at most some 500 MB, while sorting, for ten million).

Local mode (here) decodes in worker processes and detects in batches in the
main process; Ray mode (`fastmtcnn.raydata`) runs the same steps as a Ray Data
pipeline. Both write the same rows.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .detections import Detections
from .images import IMAGE_SUFFIXES, ImageError, decode_image, read_image

MANIFEST_SUFFIXES = {".txt", ".lst", ".list", ".csv", ".tsv", ".parquet", ".pq"}
SETTINGS_FILE = "_fastmtcnn_batch.json"
LOCK_FILE = "_lock"
# result-affecting settings: a resumed run must use the same ones
RESULT_SETTINGS = ("minsize", "factor", "thresholds")

FACE_TYPE = pa.struct([
    ("box", pa.list_(pa.float32())),                      # x1, y1, x2, y2
    ("score", pa.float32()),
    ("landmarks", pa.list_(pa.list_(pa.float32()))),      # 5 x (x, y)
])
SCHEMA = pa.schema([
    ("path", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("faces", pa.list_(FACE_TYPE)),                       # null when error is set
    ("error", pa.string()),                               # null on success
])


# --------------------------------------------------------------------------- inputs

def is_uri(path: str) -> bool:
    return "://" in path


def iter_inputs(specs: Iterable[str], column: str = "path") -> Iterator[str]:
    """Paths named by folders (recursive), globs, manifests or single files, in listing order.

    A manifest is a text file of paths/URIs (one a line, '#' comments), or a
    CSV/TSV/Parquet file whose `column` holds them. A spec that names nothing
    is an error (one line), so a typo never yields an empty "successful" job.
    """
    for spec in specs:
        p = Path(spec)
        if is_uri(spec):
            if Path(spec.split("?")[0]).suffix.lower() in MANIFEST_SUFFIXES:
                yield from read_manifest(spec, column)
            else:
                yield spec
        elif p.is_dir():
            yield from walk_images(p)
        elif p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            yield from read_manifest(spec, column)
        elif p.exists():
            yield spec
        elif any(c in spec for c in "*?["):
            found = False
            for hit in glob.iglob(spec, recursive=True):
                if os.path.isfile(hit):
                    found = True
                    yield hit
            if not found:
                raise ValueError(f"{spec}: the pattern matches no file")
        else:
            raise ValueError(f"{spec}: no such file, folder or manifest")


def walk_images(root: Path) -> Iterator[str]:
    """Image files under a folder, depth first in name order, streamed (no full list in memory)."""
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise ValueError(f"{folder}: cannot list folder ({e.strerror or e})") from None
        subdirs = []
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                subdirs.append(e.path)
            elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file():
                yield e.path
        stack.extend(reversed(subdirs))


def read_manifest(path: str, column: str = "path") -> Iterator[str]:
    """Paths listed in a text, CSV/TSV or Parquet manifest (local or URI), streamed."""
    suffix = Path(path.split("?")[0]).suffix.lower()
    if suffix in (".parquet", ".pq"):
        with _open(path) as f:
            pf = pq.ParquetFile(f)
            _need_column(path, column, pf.schema_arrow.names)
            for b in pf.iter_batches(columns=[column], batch_size=65536):
                yield from (s for s in b.column(0).to_pylist() if s)
    elif suffix in (".csv", ".tsv"):
        import pyarrow.csv as pacsv

        with _open(path) as f:
            parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            convert = pacsv.ConvertOptions(column_types={column: pa.string()})
            try:
                reader = pacsv.open_csv(f, parse_options=parse, convert_options=convert)
            except pa.ArrowInvalid as e:
                raise ValueError(f"{path}: cannot read as {suffix[1:].upper()} ({e})") from None
            _need_column(path, column, reader.schema.names)
            for b in reader:
                yield from (s for s in b.column(column).to_pylist() if s)
    elif is_uri(path):
        with _open(path) as f:
            yield from _manifest_lines(f.read().decode("utf-8", "surrogateescape").splitlines())
    else:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            yield from _manifest_lines(f)


def _manifest_lines(lines: Iterable[str]) -> Iterator[str]:
    for raw in lines:
        line = raw.strip()
        if line and not line.startswith("#"):
            yield line


def _need_column(path: str, column: str, names: list[str]) -> None:
    if column not in names:
        raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(names)}); choose one with --column")


def _open(path: str):
    """A binary file object for a local path or a URI understood by pyarrow.fs."""
    if is_uri(path):
        fs, p = pafs.FileSystem.from_uri(path)
        return fs.open_input_file(p)
    return open(path, "rb")


def path_key(path: str) -> bytes:
    """16-byte key of an input path: what the output is checked against on resume."""
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def keys_of(paths: Iterable[str]) -> np.ndarray:
    return np.array([path_key(p) for p in paths], dtype="S16")


@dataclass
class Pending:
    """The inputs still to do, spooled to a temporary file; iterate to stream them."""

    total: int                 # unique inputs named by the specs
    done: int                  # of those, already in the output
    duplicates: int            # repeated paths ignored (manifests may list one twice)
    todo: int                  # total - done
    keys: np.ndarray = field(repr=False, default=None)  # key of every listed input
    _spool: object = field(repr=False, default=None)
    _keep: np.ndarray = field(repr=False, default=None)

    def __iter__(self) -> Iterator[str]:
        self._spool.seek(0)
        for keep, line in zip(self._keep, self._spool):
            if keep:
                yield json.loads(line)

    def close(self) -> None:
        self._spool.close()


def plan_inputs(specs: Iterable[str], done_keys: np.ndarray, column: str = "path") -> Pending:
    """List every input once, spool it, and mark the ones not in `done_keys` (sorted S16)."""
    spool = tempfile.TemporaryFile("w+", encoding="utf-8")
    chunks, buf = [], []
    for path in iter_inputs(specs, column):
        spool.write(json.dumps(path) + "\n")
        buf.append(path_key(path))
        if len(buf) >= 65536:
            chunks.append(np.array(buf, dtype="S16"))
            buf = []
    chunks.append(np.array(buf, dtype="S16"))
    keys = np.concatenate(chunks)
    first = np.zeros(len(keys), bool)
    first[np.unique(keys, return_index=True)[1]] = True
    done = np.isin(keys, done_keys) if len(done_keys) else np.zeros(len(keys), bool)
    keep = first & ~done
    n_unique = int(first.sum())
    return Pending(total=n_unique, done=int((first & done).sum()), duplicates=len(keys) - n_unique,
                   todo=int(keep.sum()), keys=keys, _spool=spool, _keep=keep)


# --------------------------------------------------------------------------- decode + detect

@dataclass
class Decoded:
    """One input after decoding: an RGB image, or the reason there is none."""

    path: str
    image: np.ndarray | None = None
    error: str | None = None


def decode(path: str, cwd: str | None = None) -> Decoded:
    """Read and decode one input; never raises for a bad file (the error is the result).

    Relative paths are taken from `cwd` when given (worker processes and Ray
    workers may run elsewhere); messages name the path as listed.
    """
    local = os.path.join(cwd, path) if cwd and not is_uri(path) and not os.path.isabs(path) else path
    try:
        if is_uri(path):
            with _open(path) as f:
                data = np.frombuffer(f.read(), np.uint8)
            img = decode_image(data, path)
        else:
            img = read_image(local)
        return Decoded(path, img)
    except (ImageError, OSError, ValueError, pa.ArrowException) as e:
        return Decoded(path, error=_error_text(path, e, local))
    except MemoryError:
        return Decoded(path, error=f"{path}: out of memory while decoding")


def decode_many(paths: list[str], cwd: str | None = None) -> list[Decoded]:
    """Worker-process entry point: decode a small chunk of inputs."""
    return [decode(p, cwd) for p in paths]


def _error_text(path: str, e: BaseException, shown_as: str | None = None) -> str:
    """One line that starts with the input's path as listed."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if shown_as and shown_as != path:
        msg = msg.replace(shown_as, path, 1)
    return msg if msg.startswith(path) else f"{path}: {msg}"


@dataclass
class Result:
    """One output row."""

    path: str
    width: int | None = None
    height: int | None = None
    faces: Detections | None = None
    error: str | None = None


def detect_decoded(det, items: list[Decoded]) -> list[Result]:
    """Detect faces in the decoded items as one batch; bad items and failures become error rows.

    If the batch call fails, each image is retried alone so one bad image
    cannot take its neighbours down with it.
    """
    ok = [i for i, d in enumerate(items) if d.image is not None]
    faces: dict[int, Detections | str] = {}
    try:
        for i, f in zip(ok, det.detect_batch([items[i].image for i in ok])):
            faces[i] = f
    except Exception:  # noqa: BLE001 - isolate the failing image below
        for i in ok:
            try:
                faces[i] = det.detect(items[i].image)
            except Exception as e:  # noqa: BLE001 - a job never dies for one image
                faces[i] = f"{items[i].path}: detection failed: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
    out = []
    for i, d in enumerate(items):
        if d.image is None:
            out.append(Result(d.path, error=d.error))
            continue
        h, w = d.image.shape[:2]
        f = faces[i]
        out.append(Result(d.path, w, h, error=f) if isinstance(f, str) else Result(d.path, w, h, faces=f))
    return out


def results_table(results: list[Result]) -> pa.Table:
    """Rows -> an Arrow table of SCHEMA, built from the float32 arrays without a Python loop per value."""
    n = len(results)
    counts = np.array([len(r.faces) if r.faces is not None else 0 for r in results], np.int32)
    dets = [r.faces for r in results if r.faces is not None and len(r.faces)]
    boxes = np.concatenate([d.boxes for d in dets]) if dets else np.zeros((0, 4), np.float32)
    scores = np.concatenate([d.scores for d in dets]) if dets else np.zeros(0, np.float32)
    lms = np.concatenate([d.landmarks for d in dets]) if dets else np.zeros((0, 5, 2), np.float32)
    m = len(scores)
    box = pa.ListArray.from_arrays(pa.array(np.arange(0, 4 * m + 1, 4, dtype=np.int32)), pa.array(boxes.ravel()))
    points = pa.ListArray.from_arrays(pa.array(np.arange(0, 10 * m + 1, 2, dtype=np.int32)), pa.array(lms.ravel()))
    lm = pa.ListArray.from_arrays(pa.array(np.arange(0, 5 * m + 1, 5, dtype=np.int32)), points)
    face = pa.StructArray.from_arrays([box, pa.array(scores), lm], fields=list(FACE_TYPE))
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    missing = np.array([r.faces is None for r in results], bool)
    faces = pa.ListArray.from_arrays(pa.array(offsets), face, mask=pa.array(missing))
    return pa.table({
        "path": pa.array([r.path for r in results], pa.string()),
        "width": pa.array([r.width for r in results], pa.int32()),
        "height": pa.array([r.height for r in results], pa.int32()),
        "faces": faces.cast(pa.list_(FACE_TYPE)),
        "error": pa.array([r.error for r in results], pa.string()),
    }, schema=SCHEMA)


# --------------------------------------------------------------------------- output

class Output:
    """The output Parquet dataset: complete part files, written atomically.

    `root` is a local folder or a URI understood by pyarrow.fs. Locally a
    part is written to a hidden temporary file, fsynced and renamed; on object
    stores the upload itself is atomic. Part names derive from the paths they
    hold, so a retried write of the same rows replaces rather than duplicates.
    """

    def __init__(self, root: str) -> None:
        self.uri = root
        if is_uri(root):
            self.fs, self.root = pafs.FileSystem.from_uri(root)
            self.local = isinstance(self.fs, pafs.LocalFileSystem)
        else:
            self.fs, self.root, self.local = pafs.LocalFileSystem(), os.path.abspath(root), True
        self._lock = None

    def __getstate__(self):  # shipped to Ray workers: no open lock file
        return {"uri": self.uri}

    def __setstate__(self, state):
        self.__init__(state["uri"])

    # -- lifecycle
    def open(self, settings: dict) -> None:
        """Create the folder, take the lock, check settings, clear leftovers of killed runs."""
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise ValueError(f"{self.uri}: exists and is a file; --out needs a folder")
        self.fs.create_dir(self.root, recursive=True)
        if self.local:
            self._lock = open(os.path.join(self.root, LOCK_FILE), "a")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lock.close()
                self._lock = None
                raise RuntimeError(f"{self.uri}: another batch run is writing to this folder") from None
        self._check_settings(settings)
        for f in self._files():
            if f.base_name.startswith(".tmp-"):
                self.fs.delete_file(f.path)

    def close(self) -> None:
        if self._lock:
            self._lock.close()
            self._lock = None

    def _check_settings(self, settings: dict) -> None:
        path = f"{self.root}/{SETTINGS_FILE}"
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            with self.fs.open_input_stream(path) as f:
                old = json.loads(f.read())
            diff = {k: (old.get(k), settings.get(k)) for k in RESULT_SETTINGS if old.get(k) != settings.get(k)}
            if diff:
                what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
                raise ValueError(f"{self.uri} holds results made with other settings ({what}); "
                                 "use another --out or the same settings")
        elif self.parts():
            raise ValueError(f"{self.uri}: has part files but no {SETTINGS_FILE}; not a fastmtcnn batch output")
        else:
            with self.fs.open_output_stream(path) as f:
                f.write(json.dumps(settings, indent=1).encode())

    # -- reading
    def _files(self) -> list:
        return self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))

    def parts(self) -> list[str]:
        return sorted(f.path for f in self._files()
                      if f.base_name.startswith("part-") and f.base_name.endswith(".parquet"))

    def done_keys(self) -> np.ndarray:
        """Sorted keys of every path in complete parts. An unreadable part is set aside and redone."""
        chunks = []
        for part in self.parts():
            try:
                with self.fs.open_input_file(part) as f:
                    paths = pq.read_table(f, columns=["path"]).column(0).to_pylist()
            except (pa.ArrowException, OSError) as e:
                bad = part.rsplit("/", 1)
                self.fs.move(part, f"{bad[0]}/.corrupt-{bad[1]}")
                print(f"warning: {part}: unreadable ({e}); its inputs will be redone", file=sys.stderr)
                continue
            chunks.append(keys_of(paths))
        return np.unique(np.concatenate(chunks)) if chunks else np.zeros(0, "S16")

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All rows (for tests, export and summaries; stream `parts()` for huge outputs)."""
        tables = []
        for part in self.parts():
            with self.fs.open_input_file(part) as f:
                tables.append(pq.read_table(f, columns=columns))
        if not tables:
            return SCHEMA.empty_table() if columns is None else pa.schema([SCHEMA.field(c) for c in columns]).empty_table()
        return pa.concat_tables(tables)

    # -- writing
    def write_part(self, table: pa.Table) -> str:
        """Write rows as one part, all or nothing. Returns the part's path."""
        digest = hashlib.blake2b(digest_size=16)
        for p in table.column("path").to_pylist():
            digest.update(p.encode("utf-8", "surrogateescape") + b"\0")
        final = f"{self.root}/part-{digest.hexdigest()}.parquet"
        if not self.local:
            with self.fs.open_output_stream(final) as f:
                pq.write_table(table, f, compression="zstd")
            return final
        tmp = f"{self.root}/.tmp-{uuid.uuid4().hex}.parquet"
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return final


def uses_gpu(detector_options) -> bool:
    """Whether detector flags ask for a GPU (torch CUDA device or a CUDA/TensorRT provider)."""
    return bool((getattr(detector_options, "device", None) or "").startswith("cuda")
                or any("CUDA" in p or "Tensorrt" in p for p in (getattr(detector_options, "providers", None) or [])))


def settings_of(config) -> dict:
    from . import __version__

    d = config.to_dict()
    d["thresholds"] = list(d["thresholds"])
    d["max_batch"] = list(d["max_batch"])
    return {**d, "fastmtcnn": __version__}


@dataclass
class Stats:
    """What a run did."""

    processed: int = 0
    failed: int = 0
    faces: int = 0
    parts: int = 0
    startup_s: float = 0.0     # time to join or start Ray, before any input is processed

    def add(self, table: pa.Table) -> None:
        self.processed += table.num_rows
        self.failed += table.num_rows - table.column("error").null_count
        self.faces += int(pc.sum(pc.list_value_length(table.column("faces"))).as_py() or 0)
        self.parts += 1


class PartBuffer:
    """Collects result rows and writes a part every `part_size` rows."""

    def __init__(self, output: Output, part_size: int, stats: Stats) -> None:
        self.output, self.part_size, self.stats = output, part_size, stats
        self.rows: list[Result] = []

    def add(self, results: list[Result]) -> None:
        self.rows.extend(results)
        while len(self.rows) >= self.part_size:
            self._write(self.rows[:self.part_size])
            self.rows = self.rows[self.part_size:]

    def flush(self) -> None:
        if self.rows:
            self._write(self.rows)
            self.rows = []

    def _write(self, rows: list[Result]) -> None:
        table = results_table(rows)
        self.output.write_part(table)
        self.stats.add(table)


# --------------------------------------------------------------------------- local mode

def chunks(it: Iterable, n: int) -> Iterator[list]:
    it = iter(it)
    while chunk := list(islice(it, n)):
        yield chunk


_worker_detector = None


def _init_worker(parent: int, make_detector: Callable | None) -> None:
    """Worker set-up: the detector, and an exit if the job's process dies (kill -9 leaves no orphans)."""
    import threading

    global _worker_detector
    if make_detector is not None:
        _worker_detector = make_detector()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def detect_paths(paths: list[str], cwd: str | None = None) -> list[Result]:
    """Worker-process entry point: decode and detect a batch with this process's detector."""
    return detect_decoded(_worker_detector, decode_many(paths, cwd))


def run_local(pending: Pending, output: Output, make_detector: Callable, *, workers: int = 2,
              detect_in_workers: bool = True, batch: int = 16, part_size: int = 1000,
              progress: bool | None = None) -> Stats:
    """Process the pending inputs with a pool of `workers` processes and write parts here.

    detect_in_workers: each worker decodes and detects its batches with its own
    detector (`make_detector` must pickle; best on CPU, where one process cannot
    keep the cores busy). Otherwise workers only decode and this process
    detects (one detector for a GPU). workers=0 does everything here.
    At most about `2 * workers + 2` batches are in flight, whatever the size of
    the collection.
    """
    import multiprocessing as mp

    from tqdm import tqdm

    stats = Stats()
    parts = PartBuffer(output, part_size, stats)
    cwd = os.getcwd()
    in_workers = detect_in_workers and workers > 0
    det = None if in_workers else make_detector()
    ctx = mp.get_context("forkserver")
    pool = None
    if workers > 0:
        pool = ProcessPoolExecutor(workers, ctx, _init_worker, (os.getpid(), make_detector if in_workers else None))
    jobs = chunks(pending, batch)
    bar = tqdm(total=pending.todo, unit="img", file=sys.stderr, disable=None if progress is None else not progress,
               dynamic_ncols=True, smoothing=0.05)
    try:
        in_flight: deque = deque()

        def refill() -> None:
            while len(in_flight) < 2 * workers + 2 and (job := next(jobs, None)):
                fn = detect_paths if in_workers else decode_many
                in_flight.append(pool.submit(fn, job, cwd) if pool else job)

        refill()
        while in_flight:
            job = in_flight.popleft()
            if in_workers:
                results = job.result()
            else:
                results = detect_decoded(det, job.result() if pool else decode_many(job, cwd))
            refill()
            parts.add(results)
            bar.update(len(results))
        parts.flush()
    except KeyboardInterrupt:
        parts.flush()  # rows already detected are complete: keep them
        raise
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)
    return stats


def export_jsonl(output: Output, path: str) -> int:
    """Write every row as JSON Lines (the `detect --json` record format), atomically. Returns rows."""
    tmp = f"{path}.tmp-{os.getpid()}"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for part in output.parts():
            with output.fs.open_input_file(part) as pf:
                for row in pq.read_table(pf).to_pylist():
                    rec = {"path": row["path"]}
                    if row["error"] is not None:
                        rec["error"] = row["error"]
                    else:
                        rec.update(width=row["width"], height=row["height"],
                                   faces=Detections.from_list(row["faces"]).to_list())
                    f.write(json.dumps(rec) + "\n")
                    n += 1
    os.replace(tmp, path)
    return n


def summarize(output: Output) -> dict:
    """Row, error and face counts of the whole output, one part at a time."""
    rows = errors = faces = 0
    for part in output.parts():
        with output.fs.open_input_file(part) as f:
            t = pq.read_table(f, columns=["error", "faces"])
        rows += t.num_rows
        errors += t.num_rows - t.column("error").null_count
        faces += int(pc.sum(pc.list_value_length(t.column("faces"))).as_py() or 0)
    return {"rows": rows, "errors": errors, "faces": faces}


def unaccounted(pending: Pending, output: Output) -> int:
    """How many listed inputs have no row in the output (0 after a complete run)."""
    return int((~np.isin(pending.keys, output.done_keys())).sum())
