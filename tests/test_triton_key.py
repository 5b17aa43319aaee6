"""A process that loads the Triton kernels reuses the Triton build key an earlier process saved.

Why: Triton names its cached kernels by a hash of its own build, computed at a
process's first kernel load by reading all of libtriton.so (~415 MB, 0.36-0.54 s
on a 2-core VM), on the way to a job's kernels. Needs Triton, no GPU (CI installs it).
"""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

from fastmtcnn.backends import torch_kernels as K  # noqa: E402


@pytest.fixture
def triton_cache(monkeypatch):
    """Triton's cache module, its `triton_key` restored after the test."""
    from triton.runtime import cache as tc

    monkeypatch.setattr(tc, "triton_key", tc.triton_key)
    return tc


def test_the_saved_triton_key_is_tritons_own_and_a_later_process_reads_it_back(tmp_path, triton_cache, monkeypatch):
    own = triton_cache.triton_key
    K.remember_triton_key(str(tmp_path))
    notes = list(tmp_path.glob("triton-key-*"))
    assert len(notes) == 1 and notes[0].read_text() == own()
    assert triton_cache.triton_key is not own and triton_cache.triton_key() == own()

    # a later process (Triton's own function again): the key comes from the note, not from libtriton.so
    monkeypatch.setattr(triton_cache, "triton_key", own)
    notes[0].write_text("saved-key")
    K.remember_triton_key(str(tmp_path))
    assert triton_cache.triton_key() == "saved-key"


def test_no_cache_folder_or_another_triton_layout_leaves_triton_as_it_is(tmp_path, triton_cache, monkeypatch):
    own = triton_cache.triton_key
    K.remember_triton_key(None)  # the cache is off or cannot be written
    assert triton_cache.triton_key is own
    monkeypatch.delattr(triton_cache, "triton_key")  # a Triton without it
    K.remember_triton_key(str(tmp_path))
    assert not hasattr(triton_cache, "triton_key") and not list(tmp_path.iterdir())
