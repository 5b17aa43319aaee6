"""`fastmtcnn batch` local mode: every input accounted for, bad files as error rows, exact resume."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from batch_collection import BAD, FULL_SIZE, require

pa = require("pyarrow", "batch")
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from conftest import DEADLOCK_S, load_reference  # noqa: E402
from fastmtcnn import read_image  # noqa: E402
from fastmtcnn.batch import Output  # noqa: E402
from fastmtcnn.cli import main  # noqa: E402
from fastmtcnn.metrics import greedy_match  # noqa: E402


@pytest.fixture(scope="module")
def clean_run(collection, tmp_path_factory):
    """One uninterrupted local-mode run over the whole collection."""
    root, files = collection
    out = tmp_path_factory.mktemp("clean") / "out"
    rc = main(["batch", str(root), "--out", str(out), "--part-size", "50", "--workers", "2", "-q",
               "--jsonl", str(out.parent / "rows.jsonl")])
    return out, rc


def rows(out) -> pa.Table:
    return Output(str(out)).read().sort_by("path")


def test_every_input_gets_exactly_one_row_and_bad_files_become_error_rows(collection, clean_run):
    root, files = collection
    out, rc = clean_run
    t = rows(out)
    paths = t.column("path").to_pylist()
    assert sorted(paths) == sorted(files["images"] + files["bad"])  # notes.txt is not an image: not an input
    assert len(set(paths)) == len(paths)
    errors = {p: e for p, e in zip(paths, t.column("error").to_pylist()) if e is not None}
    assert sorted(errors) == files["bad"]
    assert "truncated" in errors[str(root / BAD[0])] and "truncated" in errors[str(root / BAD[1])]
    assert all(e.startswith(p) and "\n" not in e for p, e in errors.items())
    for row in t.filter(pa.compute.is_valid(t.column("error"))).to_pylist():
        assert row["faces"] is None and row["width"] is None
    assert rc == 1  # error rows are reported through the exit code
    assert len(Output(str(out)).parts()) == -(-len(paths) // 50)


def test_rows_hold_the_library_detections_for_the_same_images(collection, clean_run, detector):
    root, files = collection
    by_path = {r["path"]: r for r in rows(clean_run[0]).to_pylist()}
    checked = [p for p in files["images"] if "/full/" in p] + files["images"][::25]
    for path in checked:
        img = read_image(path)
        expected = detector.detect(img)
        row = by_path[path]
        assert (row["height"], row["width"]) == img.shape[:2]
        assert len(row["faces"]) == len(expected), path
        if len(expected):
            np.testing.assert_array_equal(np.array([f["box"] for f in row["faces"]], np.float32), expected.boxes)
            np.testing.assert_array_equal(np.array([f["score"] for f in row["faces"]], np.float32), expected.scores)
            np.testing.assert_array_equal(np.array([f["landmarks"] for f in row["faces"]], np.float32),
                                          expected.landmarks)


def test_full_size_rows_find_the_reference_faces(collection, clean_run):
    root, _ = collection
    by_path = {r["path"]: r for r in rows(clean_run[0]).to_pylist()}
    for name in FULL_SIZE:
        ref = np.array([f["box"] for f in load_reference(name)]).reshape(-1, 4)
        ours = np.array([f["box"] for f in by_path[str(root / "full" / name)]["faces"]]).reshape(-1, 4)
        assert len(ours) == len(ref), name
        assert len(greedy_match(ref, ours, min_iou=0.7)) == len(ref), name
    assert len(by_path[str(root / "full" / "bob_multiple-faces.jpg")]["faces"]) >= 15


def test_jsonl_export_has_the_same_records_as_the_parquet_rows(clean_run):
    out, _ = clean_run
    records = [json.loads(line) for line in (out.parent / "rows.jsonl").read_text().splitlines()]
    t = rows(out)
    assert sorted(r["path"] for r in records) == t.column("path").to_pylist()
    by_path = {r["path"]: r for r in t.to_pylist()}
    for rec in records:
        row = by_path[rec["path"]]
        if row["error"]:
            assert rec == {"path": row["path"], "error": row["error"]}
        else:
            assert len(rec["faces"]) == len(row["faces"])
            for f, g in zip(rec["faces"], row["faces"]):
                np.testing.assert_allclose(f["box"], g["box"], atol=0.006)


def test_rerun_of_a_finished_job_skips_every_input(collection, clean_run, capsys):
    root, files = collection
    out, _ = clean_run
    parts = {p: os.stat(p).st_mtime_ns for p in Output(str(out)).parts()}
    capsys.readouterr()
    assert main(["batch", str(root), "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    n = len(files["images"]) + len(files["bad"])
    assert f"{n} inputs: {n} already in" in err and "0 to do" in err
    assert {p: os.stat(p).st_mtime_ns for p in Output(str(out)).parts()} == parts


# `fastmtcnn batch ARGS...` that kills its own process (SIGKILL: no clean-up of any kind) right after
# its Nth part file is written: a kill at a known point, whatever the machine's speed
KILL_AFTER_PARTS = """
import os, signal, sys
from fastmtcnn.batch.parquet import Output
from fastmtcnn.cli import main

after, written, write_part = int(sys.argv[1]), [], Output.write_part

def write_then_die(self, table):
    written.append(write_part(self, table))
    if len(written) == after:
        os.kill(os.getpid(), signal.SIGKILL)
    return written[-1]

Output.write_part = write_then_die
sys.exit(main(sys.argv[2:]))
"""


def test_killed_run_resumes_with_each_input_exactly_once(collection, clean_run, tmp_path):
    root, files = collection
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", KILL_AFTER_PARTS, "2", "batch", str(root), "--out", str(out), "--part-size", "8",
           "--workers", "1", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        proc.wait(timeout=300)  # reaps it: its workers watch for their parent to be gone
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        orphans_gone = _group_empties(proc.pid, timeout=DEADLOCK_S)  # its workers must notice and exit
    finally:
        _kill_group(proc.pid)
    assert orphans_gone, "worker processes outlived the killed job"
    n = len(files["images"]) + len(files["bad"])
    assert rows(out).num_rows == 2 * 8 < n  # exactly the two parts written before the kill
    # a part that was being written when the process died: hidden, never read, cleared on resume
    (out / ".tmp-0123abcd.parquet").write_bytes(b"PAR1 half a part")

    assert main(["batch", str(root), "--out", str(out), "--part-size", "8", "--workers", "1", "-q"]) == 1
    t = rows(out)
    paths = t.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == n
    assert not list(out.glob(".tmp-*"))
    assert t.equals(rows(clean_run[0]))


def _group_empties(pgid: int, timeout: float) -> bool:
    """Wait until no process is left in the process group (the killed job's helpers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_unreadable_part_is_set_aside_and_its_inputs_redone(collection, clean_run, tmp_path, capsys):
    root, files = collection
    out = tmp_path / "out"
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(files["images"][:12]) + "\n")
    assert main(["batch", str(manifest), "--out", str(out), "--part-size", "4", "-q"]) == 0
    victim = Output(str(out)).parts()[0]
    Path(victim).write_bytes(Path(victim).read_bytes()[:100])  # e.g. a disk that lost the tail of a file
    capsys.readouterr()
    assert main(["batch", str(manifest), "--out", str(out), "--part-size", "4", "-q"]) == 0
    assert "unreadable" in capsys.readouterr().err
    t = rows(out)
    assert t.column("path").to_pylist() == sorted(files["images"][:12])
    assert t.equals(rows(clean_run[0]).filter(pa.compute.is_in(rows(clean_run[0]).column("path"), t.column("path"))))


def test_manifests_name_inputs_by_line_column_or_uri(collection, clean_run, tmp_path, monkeypatch):
    root, files = collection
    monkeypatch.chdir(root)
    some = [str(Path(p).relative_to(root)) for p in files["images"][:6]]
    uri = Path(files["images"][10]).as_uri()
    text = tmp_path / "inputs.txt"
    text.write_text("# comment\n" + "\n".join(some) + f"\n\n{some[0]}\n{uri}\nmissing.jpg\nsmall\n")
    out = tmp_path / "out_txt"
    assert main(["batch", str(text), "--out", str(out), "-q"]) == 1
    t = {r["path"]: r for r in rows(out).to_pylist()}
    assert sorted(t) == sorted(some + [uri, "missing.jpg", "small"])  # the duplicate line counts once
    assert "no such file" in t["missing.jpg"]["error"] and "directory" in t["small"]["error"]
    clean = {r["path"]: r for r in rows(clean_run[0]).to_pylist()}
    assert t[uri]["faces"] == clean[files["images"][10]]["faces"]
    assert t[some[0]]["faces"] == clean[files["images"][0]]["faces"]

    globbed = tmp_path / "out_glob"
    assert main(["batch", str(root / "full" / "*.jpg"), "--out", str(globbed), "-q"]) == 0
    assert rows(globbed).column("path").to_pylist() == sorted(p for p in files["images"]
                                                              if "/full/" in p and p.endswith(".jpg"))

    csv = tmp_path / "inputs.csv"
    pacsv.write_csv(pa.table({"id": list(range(6)), "file": files["images"][:6]}), csv)
    assert main(["batch", str(csv), "--column", "file", "--out", str(tmp_path / "out_csv"), "-q"]) == 0
    pqf = tmp_path / "inputs.parquet"
    pq.write_table(pa.table({"path": files["images"][:6]}), pqf)
    assert main(["batch", str(pqf), "--out", str(tmp_path / "out_pq"), "-q"]) == 0
    a, b = rows(tmp_path / "out_csv"), rows(tmp_path / "out_pq")
    assert a.equals(b) and a.num_rows == 6
    assert a.column("faces").to_pylist() == [clean[p]["faces"] for p in sorted(files["images"][:6])]


def test_user_mistakes_are_one_line_errors(collection, clean_run, tmp_path, capsys):
    root, files = collection
    out, _ = clean_run
    cases = [
        (["batch", str(root), "--out", str(out), "--minsize", "40"], "other settings"),
        (["batch", str(tmp_path / "nothere"), "--out", str(tmp_path / "o1")], "no such file"),
        (["batch", str(tmp_path / "*.jpg"), "--out", str(tmp_path / "o2")], "matches no file"),
        (["batch", str(root), "--out", files["images"][0]], "is a file"),
        (["batch", str(root), "--out", str(tmp_path / "o3"), "--batch", "0"], "--batch"),
        (["batch", "--ray", str(root), str(root), "--out", str(tmp_path / "o5")], "put --ray after the inputs"),
    ]
    csv = tmp_path / "m.csv"
    csv.write_text("a,b\n1,2\n")
    cases.append((["batch", str(csv), "--out", str(tmp_path / "o4")], "no column 'path'"))
    for argv, words in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err and "Traceback" not in err, err


def test_second_writer_on_the_same_output_is_refused(collection, clean_run, capsys):
    root, _ = collection
    out, _ = clean_run
    with open(out / "_lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        capsys.readouterr()
        assert main(["batch", str(root), "--out", str(out), "-q"]) == 2
        assert "another batch run" in capsys.readouterr().err


@pytest.mark.parametrize("detect_in", ["workers", "main"], ids=["cpu-workers-detect", "gpu-style-main-detects"])
def test_local_mode_keeps_at_most_2_workers_plus_2_batches_in_flight(collection, tmp_path, monkeypatch, detect_in):
    """docs/batch.md: at most 2 x workers + 2 batches in flight, so memory is bounded by the images in flight.

    The worker pool is counted as the job uses it: batches handed to the workers and not yet taken back.
    The consumer is slow on purpose: before it takes a batch it waits until the workers have finished
    everything they were given, so they had every chance to run ahead; what they decoded but the job has
    not taken back must still be at most 2 x workers + 2 batches. The CPU path decodes and detects in
    the workers; the GPU path (tried here with a CPU detector) only decodes there.
    """
    import concurrent.futures

    from fastmtcnn.batch import pool
    from fastmtcnn.detector_spec import DetectorSpec

    root, files = collection
    paths = files["images"][:21]
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(paths) + "\n")
    futures: list = []
    count = {"given": 0, "taken": 0, "most_out": 0}

    class Taken:
        def __init__(self, fut):
            self.fut = fut

        def result(self):
            concurrent.futures.wait(futures)  # every batch given so far has been decoded (and detected)
            count["taken"] += 1
            return self.fut.result()

        def cancel(self):
            return self.fut.cancel()

    class CountingPool(concurrent.futures.ProcessPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            futures.append(super().submit(fn, *args, **kwargs))
            count["given"] += 1
            count["most_out"] = max(count["most_out"], count["given"] - count["taken"])
            return Taken(futures[-1])

    monkeypatch.setattr(pool, "ProcessPoolExecutor", CountingPool)
    if detect_in == "main":
        monkeypatch.setattr(DetectorSpec, "uses_gpu", property(lambda self: True))
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "--out", str(out), "--workers", "1", "--batch", "2", "-q"]) == 0
    assert sorted(rows(out).column("path").to_pylist()) == sorted(paths)  # every input, once
    assert count["given"] == count["taken"] == 11  # 21 inputs in batches of 2
    assert count["most_out"] == 2 * 1 + 2, count
