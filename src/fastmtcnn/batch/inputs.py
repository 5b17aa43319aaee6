"""Listing a batch job's inputs: folders, globs, manifests and URIs -> paths, streamed.

The folder rule is `images.iter_image_files`, as for `fastmtcnn detect`
(`images.expand_inputs`). What differs, and why:

- the listing is a generator, never a list: a collection may hold millions;
- manifests (text, CSV/TSV, Parquet) and URIs (anything pyarrow.fs opens) are inputs too;
- glob hits come in the filesystem's order, files only (sorting would need the whole list);
- a spec that names nothing is an error before any work (`detect` instead
  reports it as one failed input), so a typo never yields an empty
  "successful" job that a re-run would resume forever.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..images import iter_image_files

MANIFEST_SUFFIXES = {".txt", ".lst", ".list", ".csv", ".tsv", ".parquet", ".pq"}


def is_uri(path: str) -> bool:
    return "://" in path


def iter_inputs(specs: Iterable[str], column: str = "path") -> Iterator[str]:
    """Paths named by folders (recursive), globs, manifests or single files, in listing order.

    A manifest is a text file of paths/URIs (one a line, '#' comments), or a
    CSV/TSV/Parquet file whose `column` holds them. A spec that names nothing
    is an error (one line).
    """
    for spec in specs:
        p = Path(spec)
        if is_uri(spec):
            if Path(spec.split("?")[0]).suffix.lower() in MANIFEST_SUFFIXES:
                yield from read_manifest(spec, column)
            else:
                yield spec
        elif p.is_dir():
            found = False
            for hit in iter_image_files(p):
                found = True
                yield hit
            if not found:
                raise ValueError(f"{spec}: no image files in this folder")
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


def read_manifest(path: str, column: str = "path") -> Iterator[str]:
    """Paths listed in a text, CSV/TSV or Parquet manifest (local or URI), streamed."""
    suffix = Path(path.split("?")[0]).suffix.lower()
    if suffix in (".parquet", ".pq"):
        with open_input(path) as f:
            pf = pq.ParquetFile(f)
            _need_column(path, column, pf.schema_arrow.names)
            for b in pf.iter_batches(columns=[column], batch_size=65536):
                yield from (s for s in b.column(0).to_pylist() if s)
    elif suffix in (".csv", ".tsv"):
        import pyarrow.csv as pacsv

        with open_input(path) as f:
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
        with open_input(path) as f:
            yield from _manifest_lines(f.read().decode("utf-8", "surrogateescape").splitlines())
    else:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            yield from _manifest_lines(f)


def open_input(path: str) -> BinaryIO:
    """A binary file object for a local path or a URI understood by pyarrow.fs."""
    if is_uri(path):
        fs, p = pafs.FileSystem.from_uri(path)
        return fs.open_input_file(p)
    return open(path, "rb")


def _manifest_lines(lines: Iterable[str]) -> Iterator[str]:
    for raw in lines:
        line = raw.strip()
        if line and not line.startswith("#"):
            yield line


def _need_column(path: str, column: str, names: list[str]) -> None:
    if column not in names:
        raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(names)}); choose one with column=")
