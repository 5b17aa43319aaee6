"""The OpenVINO backend: ONNX Runtime's faces on every photo, in float32, with bounded compiled shapes.

Why: OpenVINO is the default CPU engine (README, "Benchmarks"), so it must
find exactly what ONNX Runtime (the other CPU engine, one flag away) finds on
the same graphs: same faces, coordinates within 1e-3 px. It compiles a net
per input shape; that cache must stay bounded, and a photo's faces must not
depend on what else shares its RNet/ONet batch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import reference_names
from fastmtcnn import MTCNN, read_image


@pytest.fixture(scope="module")
def ovb():
    """The OpenVINO backend module: each test skips without the openvino package (a GPU machine may lack it)."""
    pytest.importorskip("openvino")
    from fastmtcnn.backends import openvino

    return openvino


@pytest.fixture(scope="module")
def engines(ovb):
    return MTCNN(backend="openvino"), MTCNN(backend="onnxruntime")


def _same_faces(a, b, what: str) -> None:
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} faces"
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3, rtol=0, err_msg=f"{what} boxes")
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3, rtol=0, err_msg=f"{what} landmarks")
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0, err_msg=f"{what} scores")


@pytest.mark.parametrize("name", reference_names())
def test_openvino_finds_onnxruntimes_faces(shared_data, engines, name):
    img = read_image(shared_data / name)
    ov_det, ort_det = engines
    assert ov_det.backend.name == "openvino" and ort_det.backend.name == "onnxruntime"
    _same_faces(ov_det.detect(img), ort_det.detect(img), name)


def test_openvino_is_the_default_and_runs_in_float32(engines):
    assert MTCNN().backend.name == "openvino"
    compiled = engines[0].backend.compiled()
    assert compiled, "the photos above compiled something"
    for model in compiled:
        assert str(model.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")


def test_threads_reach_the_compiled_nets(shared_data, ovb):
    det = MTCNN(backend="openvino", threads=1)
    det.detect(read_image(shared_data / "skimage_astronaut.png"))
    compiled = det.backend.compiled()
    assert compiled and all(m.get_property("INFERENCE_NUM_THREADS") == 1 for m in compiled)


def test_compiled_shapes_are_a_bounded_cache_and_results_survive_eviction(shared_data, ovb, engines, monkeypatch):
    monkeypatch.setattr(ovb, "CACHE_SIZE", 2)
    monkeypatch.setattr(ovb, "_compiled", type(ovb._compiled)())
    img = read_image(shared_data / "bob_multiple-faces.jpg")
    det = MTCNN(backend="openvino")
    want = engines[1].detect(img)
    for _ in range(2):  # the second round recompiles what the first evicted
        for size in [(520, 385), (400, 300), (300, 220)]:
            small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            _same_faces(det.detect(small), engines[1].detect(small), f"{size}")
            assert len(ovb._compiled) <= 2
    _same_faces(det.detect(img), want, "after eviction")


def test_rnet_and_onet_compile_one_batch_size_each_whatever_the_batches(ovb, monkeypatch):
    """A fresh process pays for every compiled shape on its first photo: batches of any size run as parts
    of one compiled size per net (`PART`), the last part padded, and give one output row per crop."""
    monkeypatch.setattr(ovb, "_compiled", type(ovb._compiled)())
    be = ovb.OpenVinoBackend()
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 15, 16, 17, 63, 64, 65, 300):
        for net, size in (("rnet", 24), ("onet", 48)):
            outs = be._infer(net, rng.uniform(-1, 1, (n, 3, size, size)).astype(np.float32))
            assert [o.shape[0] for o in outs] == [n] * len(outs)
    shapes = {(net, shape) for net, (shape,), *_ in ovb._compiled}
    assert shapes == {("rnet", (ovb.PART["rnet"], 3, 24, 24)), ("onet", (ovb.PART["onet"], 3, 48, 48))}


def test_a_shape_being_loaded_aside_is_loaded_once_whatever_asks_meanwhile(shared_data, ovb, monkeypatch):
    """Each photo's `front` asks for its PNet tile shapes; while one is still loading, asking again must
    neither start another loader for it nor compile it twice, and the photos' faces stay ONNX Runtime's."""
    import threading

    monkeypatch.setattr(ovb, "_compiled", type(ovb._compiled)())
    real, calls, gate = ovb._compile, [], threading.Event()

    def slow(net, shapes, config, cache_dir):
        calls.append((net, shapes))
        if net == "pnet":
            gate.wait(30)  # held until the photos below have all asked for it
        return real(net, shapes, config, cache_dir)

    monkeypatch.setattr(ovb, "_compile", slow)
    started = []
    monkeypatch.setattr(ovb.OpenVinoBackend, "_prepare",
                        lambda self, jobs, f=ovb.OpenVinoBackend._prepare: (started.append(jobs), f(self, jobs))[1])
    det = MTCNN(backend="openvino", cache_dir=False)
    img = cv2.resize(read_image(shared_data / "bob_multiple-faces.jpg"), (400, 300), interpolation=cv2.INTER_AREA)
    plan = det.plan(*img.shape[:2])
    for _ in range(3):  # as three photos' `front` would, while the first load is held
        det.backend._aside([("pnet", ((1, 3, c.h, c.w), c.mask_shape)) for c in plan.canvases])
    gate.set()
    _same_faces(det.detect(img), MTCNN(backend="onnxruntime").detect(img), "after the loads")
    pnet_loaders = [jobs for jobs in started if any(net == "pnet" for net, _ in jobs)]
    assert len(pnet_loaders) == 1, pnet_loaders
    assert len([c for c in calls if c[0] == "pnet"]) == len({c for c in calls if c[0] == "pnet"})
    assert all(e.model is not None for e in ovb._compiled.values())


def test_a_crops_outputs_do_not_depend_on_its_batch(ovb):
    be = ovb.OpenVinoBackend()
    rng = np.random.default_rng(0)
    for net, size in (("rnet", 24), ("onet", 48)):
        x = rng.uniform(-1, 1, (300, 3, size, size)).astype(np.float32)
        whole = be._infer(net, x)
        for a, b in ((0, 1), (0, 37), (100, 229)):
            for alone, within in zip(be._infer(net, x[a:b]), whole):
                np.testing.assert_array_equal(alone, within[a:b], err_msg=f"{net} crops {a}:{b}")
        assert [o.shape[0] for o in be._infer(net, x[:0])] == [0] * len(whole)


_CACHE_RUN = """
import json, sys
from fastmtcnn import MTCNN
from fastmtcnn.backends import openvino as ovb
det = MTCNN()
faces = det.detect(sys.argv[1])
print(json.dumps({"boxes": faces.boxes.tolist(), "cache": det.backend.cache_dir,
                  "graphs_read": ovb._model.cache_info().currsize}))
"""


def _cache_run(shared_data, env_dir) -> dict:
    """A fresh process's first photo with FASTMTCNN_CACHE_DIR=env_dir: its faces, its cache folder, and how
    many ONNX graphs it had to read (0: every net came from the cache)."""
    env = {**os.environ, "FASTMTCNN_CACHE_DIR": str(env_dir)}
    p = subprocess.run([sys.executable, "-c", _CACHE_RUN, str(shared_data / "bob_multiple-faces.jpg")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_compiled_nets_are_kept_on_disk_for_the_next_process(shared_data, ovb, tmp_path):
    """Issue #17: a new process skips compiling. The first process compiles and writes one file per net
    and shape under $FASTMTCNN_CACHE_DIR/openvino; the next reads no ONNX graph at all and finds the same
    faces; a damaged file is compiled again and replaced; 'off' or an unwritable folder writes nothing."""
    first = _cache_run(shared_data, tmp_path)
    folder = tmp_path / "openvino"
    assert first["cache"] == str(folder) and first["graphs_read"] == 3
    blobs = sorted(folder.glob("*.blob"))
    assert {b.name.split("-")[0] for b in blobs} == {"pnet", "rnet", "onet"}
    assert not list(folder.glob(".tmp-*")), "no half-written files left"
    second = _cache_run(shared_data, tmp_path)
    assert second["graphs_read"] == 0, "every net imported from its file"
    np.testing.assert_array_equal(second["boxes"], first["boxes"])
    assert len(first["boxes"]) > 5
    for b in blobs:
        b.write_bytes(b"not a compiled net")
    third = _cache_run(shared_data, tmp_path)
    np.testing.assert_array_equal(third["boxes"], first["boxes"])
    assert all(b.stat().st_size > 1000 for b in blobs), "damaged files replaced"

    off = _cache_run(shared_data, "off")
    assert off["cache"] is None and off["graphs_read"] == 3
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = _cache_run(shared_data, blocker / "cache")  # a folder below a file cannot be made
    assert unwritable["cache"] is None
    np.testing.assert_array_equal(unwritable["boxes"], first["boxes"])
