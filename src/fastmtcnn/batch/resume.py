"""Which inputs are still to do: the listing spooled to disk, and a 16-byte key per input.

A resumed run compares the key of every listed path with the keys of the
paths already in the output; repeated paths count once. The listing itself
goes to a temporary file, so memory holds only the keys (16 bytes an input).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from typing import IO, Iterable, Iterator

import numpy as np

from .inputs import iter_inputs


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
    _spool: IO[str] = field(repr=False, default=None)
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


def unaccounted(pending: Pending, done_keys: np.ndarray) -> int:
    """How many listed inputs have no key in `done_keys`, the output's (0 after a complete run)."""
    return int((~np.isin(pending.keys, done_keys)).sum())
