"""Shared fixtures: the real photos and reference outputs in ../shared/data.

Outside CI a missing folder skips the tests that need it (a user's clone);
under CI (CI=true) it is an error, so those tests always run there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FASTMTCNN_SHARED_DATA", ROOT.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: how long a test waits on an event before it calls the wait a hang and fails. Tests wait on events and
#: conditions, never on time: this limit is no speed bound and is never reached when the code works
DEADLOCK_S = 300


def skip_or_fail(msg: str) -> None:
    """Something a test needs is missing: skip in a user's clone, fail under CI (which must provide it)."""
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg, allow_module_level=True)


def _need_data() -> Path:
    if not (SHARED_DATA / "ref").is_dir():
        skip_or_fail(f"test photos not found at {SHARED_DATA} (set FASTMTCNN_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real photos; reference outputs in its ref/ subfolder."""
    return _need_data()


def reference_names() -> list[str]:
    """Image file names that have a reference output (empty when the folder is missing)."""
    ref = SHARED_DATA / "ref"
    return sorted(p.name[:-5] for p in ref.glob("*.json")) if ref.is_dir() else ["<no shared data>"]


def load_reference(name: str) -> list[dict]:
    return json.loads((_need_data() / "ref" / f"{name}.json").read_text())


@pytest.fixture(scope="session")
def detector():
    from fastmtcnn import MTCNN

    return MTCNN()


@pytest.fixture(scope="module")
def collection(shared_data, tmp_path_factory):
    """A few hundred test images (and bad files) for `fastmtcnn batch`, written once per
    test module: (root folder, listed paths). See batch_collection.py."""
    from batch_collection import make_collection

    root = tmp_path_factory.mktemp("collection")
    return root, make_collection(shared_data, root)
