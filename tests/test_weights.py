"""Shipped weights: integrity, reproducibility, and agreement of the ONNX graphs and torch modules.

Why: the weights are converted once and shipped as bytes; these tests prove that the
bytes are those recorded, that they regenerate from the facenet-pytorch wheel, that
the two implementations of the nets (ONNX graphs, torch modules) agree, and that
PNet's packed-canvas mask is exact.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import skip_or_fail
from fastmtcnn import nets

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL = REPO_ROOT / "tools" / "convert_weights.py"
WHEEL_NAME = "facenet_pytorch-2.6.0-py3-none-any.whl"
SHIPPED = ("LICENSE", "README.md", "mtcnn.npz", "pnet.onnx", "rnet.onnx", "onet.onnx")


def _recorded_hashes() -> dict[str, str]:
    out = {}
    for line in (nets.WEIGHTS_DIR / "SHA256SUMS").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            out[name.strip()] = digest
    return out


def _find_wheel() -> Path | None:
    dirs = [os.environ.get("FASTMTCNN_WHEEL_DIR"), str(REPO_ROOT / ".cache" / "wheels")]
    for d in dirs:
        if d and (Path(d) / WHEEL_NAME).is_file():
            return Path(d) / WHEEL_NAME
    return None


def _ort_session(name: str):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(nets.onnx_path(name)), opts, providers=["CPUExecutionProvider"])


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)


# --------------------------------------------------------------------------- integrity


def test_shipped_weights_match_recorded_hashes() -> None:
    recorded = _recorded_hashes()
    assert set(SHIPPED) <= set(recorded), f"SHA256SUMS lacks {set(SHIPPED) - set(recorded)}"
    for name, digest in recorded.items():
        data = (nets.WEIGHTS_DIR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{name} differs from SHA256SUMS"


def test_weights_regenerate_to_same_bytes(tmp_path: Path) -> None:
    wheel = _find_wheel()
    if wheel is None:
        # CI fetches the wheel (.ci/run): there a missing wheel is a failure, as missing test photos are
        skip_or_fail(
            f"{WHEEL_NAME} not found in $FASTMTCNN_WHEEL_DIR or .cache/wheels/ "
            "(pip download --no-deps facenet-pytorch==2.6.0 -d .cache/wheels)"
        )
    for module, why in (("torch", "to read the wheel's .pt files"), ("onnx", "to build the graphs")):
        try:
            __import__(module)
        except ImportError:
            skip_or_fail(f"{module} is needed {why}")
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--wheel", str(wheel), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for name in (*SHIPPED, "SHA256SUMS"):
        assert (tmp_path / name).read_bytes() == (nets.WEIGHTS_DIR / name).read_bytes(), name


def test_tool_without_wheel_fails_with_hint(tmp_path: Path) -> None:
    # a copy of the tool outside the repo, so that the repo's wheel cache (which CI fills) is not found
    tool = tmp_path / "tools" / TOOL.name
    tool.parent.mkdir()
    tool.write_bytes(TOOL.read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "FASTMTCNN_WHEEL_DIR"}
    proc = subprocess.run(
        [sys.executable, str(tool), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )
    assert proc.returncode == 2
    assert "pip download --no-deps facenet-pytorch==2.6.0" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_params_load_without_torch_and_are_float32() -> None:
    params = nets.load_params()
    assert params["pnet.conv1.weight"].shape == (10, 3, 3, 3)
    assert params["rnet.dense4.weight"].shape == (128, 576)
    assert params["onet.dense6_3.bias"].shape == (10,)
    assert len(params) == 13 + 16 + 21
    assert all(a.dtype == np.float32 for a in params.values())


# --------------------------------------------------------------------------- mask value


def test_pnet_mask_value_below_prelu1_bound() -> None:
    lo, hi = nets.pnet_mask_bound()
    # A masked position (any prelu1 output + mask) must lose to every unmasked one.
    assert hi + nets.PNET_MASK_VALUE < lo
    # Cross-check the analytic bound: per-channel |conv1| <= sum|w| + |b|, scaled by the slope.
    p = nets.load_params()
    w, b, a = p["pnet.conv1.weight"], p["pnet.conv1.bias"], p["pnet.prelu1.weight"]
    mag = np.abs(w).reshape(10, -1).sum(1) + np.abs(b)
    crude = float((mag * np.maximum(1.0, np.abs(a))).max())
    assert hi <= crude + 1e-4 and -lo <= crude + 1e-4
    assert nets.PNET_MASK_VALUE < -crude
    # Small enough in magnitude to be exact and harmless in fp16.
    assert float(np.float16(nets.PNET_MASK_VALUE)) == nets.PNET_MASK_VALUE
    assert nets.PNET_MASK_VALUE >= -64


# --------------------------------------------------------------------------- graphs


def test_onnx_checker_accepts_graphs() -> None:
    onnx = pytest.importorskip("onnx")
    for name in nets.NET_NAMES:
        model = onnx.load(str(nets.onnx_path(name)))
        onnx.checker.check_model(model)
        assert model.ir_version == 8
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


def test_onnx_interfaces() -> None:
    expected = {
        "pnet": (["image", "mask"], ["reg", "prob"]),
        "rnet": (["image"], ["reg", "prob"]),
        "onet": (["image"], ["reg", "landmarks", "prob"]),
    }
    for name, (inputs, outputs) in expected.items():
        sess = _ort_session(name)
        assert [i.name for i in sess.get_inputs()] == inputs
        assert [o.name for o in sess.get_outputs()] == outputs


def test_onnx_graphs_match_torch_modules() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    pnet, rnet, onet = nets.torch_nets("cpu", torch.float32)

    image = _rand(rng, 2, 3, 37, 42)
    mask = np.where(rng.random((1, 1, 35, 40)) < 0.3, nets.PNET_MASK_VALUE, 0.0).astype(np.float32)
    cases = [
        ("pnet", pnet, [image, mask], (4, 1)),
        ("rnet", rnet, [_rand(rng, 5, 3, 24, 24)], (4, 2)),
        ("onet", onet, [_rand(rng, 5, 3, 48, 48)], (4, 10, 2)),
    ]
    for name, module, inputs, widths in cases:
        sess = _ort_session(name)
        feeds = dict(zip([i.name for i in sess.get_inputs()], inputs))
        got = sess.run(None, feeds)
        with torch.no_grad():
            want = module(*[torch.from_numpy(x) for x in inputs])
        assert len(got) == len(want) == len(widths)
        for g, w, width in zip(got, want, widths):
            assert g.shape == tuple(w.shape) and g.shape[1] == width, name
            np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=1e-5, err_msg=name)
    # PNet without a mask equals PNet with a zero mask.
    with torch.no_grad():
        a = pnet(torch.from_numpy(image))
        b = pnet(torch.from_numpy(image), torch.zeros(1, 1, 35, 40))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    # PNet's face probability equals the 2-class softmax of the original head.
    with torch.no_grad():
        x = pnet.prelu3(pnet.conv3(pnet.prelu2(pnet.conv2(torch.nn.functional.max_pool2d(
            pnet.prelu1(pnet.conv1(torch.from_numpy(image))), 2, 2, ceil_mode=True)))))
        soft = torch.softmax(pnet.conv4_1(x), dim=1)[:, 1:2]
    np.testing.assert_allclose(a[1].numpy(), soft.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("h,w", [(17, 15), (16, 20), (23, 12)])
def test_pnet_mask_changes_only_masked_pool_windows(h: int, w: int) -> None:
    """A region inside a masked canvas gives the same cells as the region alone (ceil-mode edges too)."""
    rng = np.random.default_rng(h * 100 + w)
    sess = _ort_session("pnet")
    H, W, oy, ox = 44, 40, 6, 8  # even offsets keep the 2x2 pool windows aligned
    canvas = _rand(rng, 1, 3, H, W)
    region = canvas[:, :, oy:oy + h, ox:ox + w].copy()

    mask = np.full((1, 1, H - 2, W - 2), nets.PNET_MASK_VALUE, np.float32)
    mask[:, :, oy:oy + h - 2, ox:ox + w - 2] = 0.0
    reg_c, prob_c = sess.run(None, {"image": canvas, "mask": mask})
    reg_r, prob_r = sess.run(None, {"image": region, "mask": np.zeros((1, 1, h - 2, w - 2), np.float32)})

    oh, ow = prob_r.shape[2:]
    assert (oh, ow) == (-(-(h - 2) // 2) - 4, -(-(w - 2) // 2) - 4)
    cy, cx = oy // 2, ox // 2
    np.testing.assert_allclose(reg_c[:, :, cy:cy + oh, cx:cx + ow], reg_r, rtol=0, atol=1e-5)
    np.testing.assert_allclose(prob_c[:, :, cy:cy + oh, cx:cx + ow], prob_r, rtol=0, atol=1e-5)

    if (h - 2) % 2:  # the mask is what makes the ceil-mode edge row exact
        reg_u, _ = sess.run(None, {"image": canvas, "mask": np.zeros_like(mask)})
        last = reg_u[:, :, cy + oh - 1, cx:cx + ow]
        assert not np.allclose(last, reg_r[:, :, oh - 1, :], atol=1e-5)
