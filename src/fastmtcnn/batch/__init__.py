"""Face detection over large image collections, resumable, nothing lost.

The job is: list the inputs, drop those already in the output, decode and
detect the rest, and write one Parquet row per input (faces, or the reason it
failed). Each step is a module of its own:

- `inputs`:  what to process: folders, globs, manifests (text, CSV, Parquet), URIs -> paths, streamed.
- `resume`:  the listing spooled to a temporary file, a 16-byte key per input, and which are still to do.
- `work`:    decode and detect a batch; a bad input becomes an error row, never an exception.
- `parquet`: rows -> Arrow table, and the output dataset of atomic part files (lock, settings, reading back).
- `pool`:    local mode: worker processes that decode and detect, with bounded work in flight.

The output folder is a Parquet dataset of part files; each part is written to
a hidden temporary file and renamed into place, so a part is either complete
or absent. That is what makes a killed run safe to re-run: the next run reads
the paths of the complete parts, skips them, and redoes the rest, so every
input ends up exactly once.

Memory stays bounded by the images in flight, not by the size of the
collection: the listing is spooled to a temporary file and the bookkeeping is a
16-byte key per input (at most some 500 MB, while sorting, for ten million).

Local mode (`pool`) decodes in worker processes and detects in batches there
or in the main process; Ray mode (`fastmtcnn.raydata`) runs the same steps as
a Ray Data pipeline. Both write the same rows.
"""
from __future__ import annotations

from .inputs import MANIFEST_SUFFIXES, is_uri, iter_inputs, read_manifest
from .parquet import (FACE_TYPE, SCHEMA, Output, PartBuffer, Stats, export_jsonl, results_table, settings_of,
                      summarize)
from .pool import chunks, run_local
from .resume import Pending, keys_of, path_key, plan_inputs, unaccounted
from .work import Decoded, Result, decode, decode_many, detect_decoded

__all__ = [
    "FACE_TYPE", "MANIFEST_SUFFIXES", "SCHEMA", "Decoded", "Output", "PartBuffer", "Pending", "Result", "Stats",
    "chunks", "decode", "decode_many", "detect_decoded", "export_jsonl", "is_uri", "iter_inputs", "keys_of",
    "path_key", "plan_inputs", "read_manifest", "results_table", "run_local", "settings_of", "summarize",
    "unaccounted",
]
