"""The GPU's Triton kernels are compiled by a process of their own, once per machine (`torch_warmup`).

These tests run the protocol (lock, note, waiting, failures) with a stand-in compiler process, on any
machine; the GPU test in test_startup_imports.py runs it with the real one.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from fastmtcnn.backends.torch_warmup import compile_aside


def compiler(note, delay: float = 0.3, ok: bool = True) -> list[str]:
    """A stand-in for the compile process: sleeps, writes the note (or not), drops the lock (its last arg)."""
    code = (f"import pathlib, sys, time\ntime.sleep({delay})\n"
            + (f"pathlib.Path({str(note)!r}).touch()\n" if ok else "")
            + "pathlib.Path(sys.argv[-1]).unlink()\nsys.exit(0 if " + str(ok) + " else 1)\n")
    return [sys.executable, "-c", code]


def test_a_compile_process_fills_the_cache_and_the_caller_waits_for_its_note(tmp_path):
    note = tmp_path / "kernels-x"
    assert compile_aside(note, compiler(note), threading.Event(), limit=30)
    assert note.is_file() and not (tmp_path / "kernels-x.lock").exists()


def test_a_second_process_waits_for_the_first_ones_compile_instead_of_starting_another(tmp_path):
    note = tmp_path / "kernels-x"
    starts = tmp_path / "starts"
    argv = compiler(note, delay=1.0)
    argv[-1] = f"open({str(starts)!r}, 'a').write('x')\n" + argv[-1]
    got = []
    threads = [threading.Thread(target=lambda: got.append(compile_aside(note, argv, threading.Event(), 30)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [True, True, True]
    assert starts.read_text() == "x"  # one compile for all three


def test_a_failed_compile_process_hands_the_compile_back_to_the_caller(tmp_path):
    note = tmp_path / "kernels-x"
    t = time.monotonic()
    assert not compile_aside(note, compiler(note, delay=0.1, ok=False), threading.Event(), limit=30)
    assert time.monotonic() - t < 10 and not note.exists()
    assert not (tmp_path / "kernels-x.lock").exists()


def test_a_stale_lock_of_a_dead_compile_is_taken_over(tmp_path):
    note = tmp_path / "kernels-x"
    lock = tmp_path / "kernels-x.lock"
    lock.touch()
    old = time.time() - 1000
    os.utime(lock, (old, old))
    assert compile_aside(note, compiler(note), threading.Event(), limit=30)
    assert note.is_file()


def test_an_exiting_caller_stops_waiting_and_the_compile_goes_on_to_fill_the_cache(tmp_path):
    note = tmp_path / "kernels-x"
    stop = threading.Event()
    stop.set()
    t = time.monotonic()
    assert not compile_aside(note, compiler(note, delay=1.0), stop, limit=30)
    assert time.monotonic() - t < 0.5
    deadline = time.monotonic() + 20
    while not note.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert note.is_file()  # the process outlived the wait


def test_the_compile_process_entry_point_drops_its_lock_even_when_it_fails(tmp_path):
    pytest.importorskip("torch")
    lock = tmp_path / "kernels-x.lock"
    lock.touch()
    code = "import sys; from fastmtcnn.backends.torch import compile_main; sys.exit(compile_main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, "nosuchdevice", "0", "0", "0", str(lock)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert not lock.exists()
