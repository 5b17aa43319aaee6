"""`fastmtcnn export-onnx`: fixed-size PNet, RNet/ONet with dynamic batch, and the plan.

Why: the exported graphs are for engine builders (TensorRT) we cannot run
here, so what we can prove is that they are valid ONNX, that ONNX Runtime runs
them, and that the fixed PNet with its baked-in mask computes exactly what the
shipped PNet computes with the mask as an input, on a real photo's canvas.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fastmtcnn import read_image  # noqa: E402
from fastmtcnn.cli import main  # noqa: E402
from fastmtcnn.crop import integral_image  # noqa: E402
from fastmtcnn.nets import onnx_path  # noqa: E402
from fastmtcnn.pipeline import canvas_input  # noqa: E402
from fastmtcnn.pyramid import make_plan  # noqa: E402

W, H = 640, 360


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    assert main(["export-onnx", "--size", f"{W}x{H}", "--minsize", "24", "--max-batch", "64", "--frames", "4",
                 str(out)]) == 0
    return out


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_exported_graphs_pass_the_onnx_checker_with_the_canvas_shape_fixed(exported):
    plan = make_plan(H, W, 24, 0.709, True)
    canvas = plan.canvases[0]
    for name in ("pnet", "rnet", "onet"):
        onnx.checker.check_model(str(exported / f"{name}.onnx"))
    g = onnx.load(str(exported / "pnet.onnx")).graph
    assert [i.name for i in g.input] == ["image"]
    dims = [d.dim_value or d.dim_param for d in g.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, canvas.h, canvas.w]
    out_dims = [d.dim_value or d.dim_param for d in g.output[0].type.tensor_type.shape.dim]
    assert out_dims == ["N", 4, *canvas.out_shape]


def test_fixed_pnet_equals_the_shipped_pnet_with_its_mask_on_a_real_canvas(exported, shared_data):
    plan = make_plan(H, W, 24, 0.709, True)
    canvas = plan.canvases[0]
    imgs = [cv2.resize(read_image(shared_data / name), (W, H), interpolation=cv2.INTER_AREA)
            for name in ("bob_multiple-faces.jpg", "yolov5_zidane.jpg")]
    x = np.ascontiguousarray(canvas_input(integral_image(np.stack(imgs)), canvas, 2), np.float32)
    want = _session(onnx_path("pnet")).run(None, {"image": x, "mask": canvas.mask})
    got = _session(exported / "pnet.onnx").run(None, {"image": x})
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    assert (want[1][:, 0][:, canvas.cell_level >= 0] >= 0.6).sum() > 50  # real faces light up cells


def test_rnet_and_onet_take_any_batch_up_to_the_profile(exported):
    rng = np.random.default_rng(0)
    for name, side, outs in (("rnet", 24, 2), ("onet", 48, 3)):
        sess = _session(exported / f"{name}.onnx")
        for n in (1, 64):
            res = sess.run(None, {"image": rng.uniform(-1, 1, (n, 3, side, side)).astype(np.float32)})
            assert len(res) == outs and all(r.shape[0] == n for r in res)


def test_plan_json_locates_every_level_and_its_valid_cells(exported):
    info = json.loads((exported / "plan.json").read_text())
    canvas = make_plan(H, W, 24, 0.709, True).canvases[0]
    assert info["frame"] == {"width": W, "height": H}
    assert (info["canvas"]["height"], info["canvas"]["width"]) == (canvas.h, canvas.w)
    cells = np.full(canvas.out_shape, -1)
    for lv in info["levels"]:
        c = lv["cells"]
        assert lv["y"] % 2 == 0 and lv["x"] % 2 == 0
        cells[c["y"]:c["y"] + c["height"], c["x"]:c["x"] + c["width"]] = lv["id"]
    np.testing.assert_array_equal(cells, canvas.cell_level)
    assert any("--maxShapes=image:64x3x24x24" in cmd for cmd in info["trtexec"])
    assert any(f"--maxShapes=image:4x3x{canvas.h}x{canvas.w}" in cmd for cmd in info["trtexec"])
    assert "untested" in info["tested"]


def test_a_malformed_size_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["export-onnx", "--size", "640", str(tmp_path / "out")])
    assert e.value.code == 2
    assert "size must look like" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--size", "16x16", "--minsize", "40"], "nothing to export"),
    (["--size", "640x360", "--minsize", "5"], "minsize"),
])
def test_impossible_settings_give_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(["export-onnx", *argv, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "pnet.onnx").exists()
