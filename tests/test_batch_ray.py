"""`fastmtcnn batch --ray`: the Ray Data pipeline writes the same rows as local mode, and resumes.

Starts a small local Ray instance (2 CPUs, small object store) once for the module.
"""
from __future__ import annotations

import pytest

from batch_collection import require

pa = require("pyarrow", "ray")
ray = require("ray", "ray")

from fastmtcnn.batch import Output  # noqa: E402
from fastmtcnn.cli import main  # noqa: E402
from fastmtcnn.raydata import plan_resources  # noqa: E402


@pytest.fixture(scope="module")
def local_rows(collection, tmp_path_factory):
    root, _ = collection
    out = tmp_path_factory.mktemp("local") / "out"
    assert main(["batch", str(root), "--out", str(out), "-q"]) == 1  # 1: the bad files are error rows
    return Output(str(out)).read().sort_by("path")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def rows(out) -> pa.Table:
    return Output(str(out)).read().sort_by("path")


def test_ray_mode_writes_the_same_rows_as_local_mode(collection, local_rows, local_ray, tmp_path, capsys):
    root, files = collection
    out = tmp_path / "out"
    assert main(["batch", str(root), "--out", str(out), "--ray", "--batch", "8", "--part-size", "40", "-q"]) == 1
    t = rows(out)
    assert t.num_rows == len(files["images"]) + len(files["bad"])
    assert t.column("path").to_pylist() == sorted(files["images"] + files["bad"])
    assert t.equals(local_rows)
    assert sorted(p for p, e in zip(t.column("path").to_pylist(), t.column("error").to_pylist()) if e) == files["bad"]
    assert f"{t.num_rows} rows, {len(files['bad'])} errors" in capsys.readouterr().out


def test_ray_mode_resumes_an_output_started_in_local_mode(collection, local_rows, local_ray, tmp_path):
    root, files = collection
    inputs = files["images"][:24] + files["bad"][:2]
    first, full = tmp_path / "first.txt", tmp_path / "all.txt"
    first.write_text("\n".join(inputs[::2]) + "\n")
    full.write_text("\n".join(inputs) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(first), "--out", str(out), "--workers", "0", "-q"]) == 1
    before = set(Output(str(out)).parts())
    assert main(["batch", str(full), "--out", str(out), "--ray", "--batch", "4", "--part-size", "5", "-q"]) == 1
    assert before < set(Output(str(out)).parts())  # the local parts are kept, Ray added its own
    t = rows(out)
    assert t.column("path").to_pylist() == sorted(inputs)  # each input exactly once
    assert t.equals(local_rows.filter(pa.compute.is_in(local_rows.column("path"), pa.array(inputs))))


def test_resource_plan_leaves_room_for_decoding_and_writing():
    two = plan_resources({"CPU": 2.0}, gpu=False)
    assert two.actors == 2 and two.actors * two.actor_cpus + 2 * two.decode_cpus <= 2
    many = plan_resources({"CPU": 64.0}, gpu=False)
    assert many.actors == 64 and many.actors * many.actor_cpus < 64
    assert plan_resources({"CPU": 16.0, "GPU": 4.0}, gpu=True).actors == 4
    with pytest.raises(RuntimeError, match="no GPUs"):
        plan_resources({"CPU": 16.0}, gpu=True)
    with pytest.raises(ValueError, match="at most 2"):
        plan_resources({"CPU": 2.0}, gpu=False, actors=3)
