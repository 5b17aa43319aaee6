"""The Parquet side of a batch job: the row schema, and the output dataset of atomic part files.

An output folder holds complete part files only (each written to a hidden
temporary file and renamed into place), a settings file that a resumed run
must match, and a lock so that two runs never write into one folder.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import __version__
from ..config import Config
from ..detections import Detections
from .inputs import is_uri
from .resume import keys_of
from .work import Result

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


def settings_of(config: Config) -> dict:
    """What the output's settings file records: the detector's settings and our version."""
    d = config.to_dict()
    d["thresholds"] = list(d["thresholds"])
    d["max_batch"] = list(d["max_batch"])
    return {**d, "fastmtcnn": __version__}


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
            raise ValueError(f"{self.uri}: exists and is a file, not a folder")
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
                                 "write to another folder or use the same settings")
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
            schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
            return schema.empty_table()
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
        self.failed += _errors(table)
        self.faces += _faces(table)
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
        errors += _errors(t)
        faces += _faces(t)
    return {"rows": rows, "errors": errors, "faces": faces}


def _errors(table: pa.Table) -> int:
    return table.num_rows - table.column("error").null_count


def _faces(table: pa.Table) -> int:
    return int(pc.sum(pc.list_value_length(table.column("faces"))).as_py() or 0)
