#!/usr/bin/env python3
"""Regenerate fastmtcnn's shipped MTCNN weights from the facenet-pytorch 2.6.0 wheel.

The package ships the original MTCNN parameters converted to numpy (``mtcnn.npz``)
and ONNX (``pnet.onnx``, ``rnet.onnx``, ``onet.onnx``) so that nothing is downloaded
and torch is not needed at run time. This script is the only way those files are
made: it reads ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` from the wheel, checks
their SHA-256, and writes byte-deterministic files, so anyone can verify the shipped
bytes with ``--check``.

Usage::

    pip download --no-deps facenet-pytorch==2.6.0
    python tools/convert_weights.py            # writes src/fastmtcnn/weights/
    python tools/convert_weights.py --check    # regenerate to a temp dir and compare

Needs numpy, onnx and torch (torch only to unpickle the ``.pt`` files). The ONNX
graphs are built with ``onnx.helper`` straight from the arrays (not torch.onnx.export),
so their bytes depend only on this script and the source weights.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import struct
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "src" / "fastmtcnn" / "weights"
WHEEL_NAME = "facenet_pytorch-2.6.0-py3-none-any.whl"
WHEEL_DIR_ENV = "FASTMTCNN_WHEEL_DIR"
NETS = ("pnet", "rnet", "onet")

# SHA-256 of facenet_pytorch/data/<net>.pt inside the facenet-pytorch 2.6.0 wheel.
SOURCE_SHA256: dict[str, str] = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}

# ONNX settings: opset 17 / IR 8 load in onnxruntime >= 1.14; fixed producer so the
# bytes do not depend on the installed onnx version.
OPSET = 17
IR_VERSION = 8
PRODUCER_NAME = "fastmtcnn tools/convert_weights.py"
PRODUCER_VERSION = "1"

# Fixed zip timestamp (the earliest DOS date) so mtcnn.npz is reproducible.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)

LICENSE_TEXT = """\
The files in this folder (mtcnn.npz, pnet.onnx, rnet.onnx, onet.onnx) are the
original MTCNN model parameters, converted without change of values by
tools/convert_weights.py from the facenet-pytorch 2.6.0 release
(facenet_pytorch/data/pnet.pt, rnet.pt, onet.pt). facenet-pytorch is distributed
under the MIT License reproduced below. The original MTCNN model and parameters
(Kaipeng Zhang, Zhanpeng Zhang, Zhifeng Li, Yu Qiao, "Joint Face Detection and
Alignment using Multi-task Cascaded Convolutional Networks", 2016;
https://github.com/kpzhang93/MTCNN_face_detection_alignment) are also released
under the MIT License.

--------------------------------------------------------------------------------

MIT License

Copyright (c) 2019 Timothy Esler

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

README_TEXT = """\
# MTCNN weights

The original MTCNN parameters (Zhang et al., 2016) as shipped in the
facenet-pytorch 2.6.0 wheel (`facenet_pytorch/data/{pnet,rnet,onet}.pt`),
converted by `tools/convert_weights.py`. Do not edit these files by hand:
regenerate them, and verify them with

    pip download --no-deps facenet-pytorch==2.6.0
    python tools/convert_weights.py --check

License: MIT (see `LICENSE`). SHA-256 of every file here and of the three
source `.pt` files: `SHA256SUMS` (`sha256sum -c SHA256SUMS`).

## Files

- `mtcnn.npz`: float32 arrays named `<net>.<facenet state-dict key>`, e.g.
  `pnet.conv1.weight`, `rnet.prelu4.weight`, `onet.dense6_3.bias`. Conv kernels
  are facenet-pytorch's (H and W already swapped back from the Caffe layout).
- `pnet.onnx`: inputs `image` float32 [N,3,H,W] and `mask` float32
  [1,1,H-2,W-2] (added to the prelu1 output before pool1; pass zeros for a plain
  run, `fastmtcnn.nets.PNET_MASK_VALUE` on positions outside a packed pyramid
  level); outputs `reg` [N,4,h,w] and `prob` [N,2,h,w] (softmax over channels).
- `rnet.onnx`: input `image` [N,3,24,24]; outputs `reg` [N,4], `prob` [N,2].
- `onet.onnx`: input `image` [N,3,48,48]; outputs `reg` [N,4], `landmarks`
  [N,10], `prob` [N,2].

Images are RGB, normalized as (x - 127.5) / 128. Before the dense layers the
features are flattened W-major (transpose (0,3,2,1)), as in facenet-pytorch.
ONNX opset 17, IR version 8.
"""


class ToolError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


# --------------------------------------------------------------------------- wheel


def find_wheel(explicit: str | None) -> Path:
    """Locate the facenet-pytorch 2.6.0 wheel (explicit path, cwd, $FASTMTCNN_WHEEL_DIR, repo cache)."""
    if explicit:
        path = Path(explicit)
        if path.is_dir():
            path = path / WHEEL_NAME
        if not path.is_file():
            raise ToolError(f"wheel not found: {path}")
        return path
    candidates = [Path.cwd() / WHEEL_NAME]
    env_dir = os.environ.get(WHEEL_DIR_ENV)
    if env_dir:
        candidates.append(Path(env_dir) / WHEEL_NAME)
    candidates.append(REPO_ROOT / ".cache" / "wheels" / WHEEL_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise ToolError(
        f"{WHEEL_NAME} not found in the current directory or ${WHEEL_DIR_ENV}; "
        "run `pip download --no-deps facenet-pytorch==2.6.0` (or pass --wheel PATH)"
    )


def read_source_weights(wheel: Path) -> dict[str, bytes]:
    """Read the three .pt files from the wheel and verify their SHA-256."""
    out: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as zf:
        for net in NETS:
            member = f"facenet_pytorch/data/{net}.pt"
            try:
                data = zf.read(member)
            except KeyError:
                raise ToolError(f"{wheel} has no {member}; is it facenet-pytorch 2.6.0?") from None
            digest = hashlib.sha256(data).hexdigest()
            if digest != SOURCE_SHA256[net]:
                raise ToolError(
                    f"{member} in {wheel} has sha256 {digest}, expected {SOURCE_SHA256[net]}"
                )
            out[net] = data
    return out


def load_params(sources: Mapping[str, bytes]) -> dict[str, np.ndarray]:
    """Unpickle the state dicts with torch (CPU) into float32 arrays keyed '<net>.<key>'."""
    try:
        import torch
    except ImportError:
        raise ToolError("torch is needed to read the .pt files: pip install torch") from None
    params: dict[str, np.ndarray] = {}
    for net in NETS:
        state = torch.load(io.BytesIO(sources[net]), map_location="cpu", weights_only=True)
        for key, tensor in state.items():
            arr = tensor.detach().cpu().numpy()
            params[f"{net}.{key}"] = np.ascontiguousarray(arr, dtype="<f4")
    return params


# --------------------------------------------------------------------------- npz


def _npy_bytes(arr: np.ndarray) -> bytes:
    """NPY format 1.0 bytes written here (not by numpy) so the header never varies."""
    arr = np.ascontiguousarray(arr, dtype="<f4")
    shape = repr(tuple(int(d) for d in arr.shape))  # "(10,)", "(10, 3, 3, 3)"
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    # magic (6) + version (2) + header length (2) + header, padded to 64 with '\n' last.
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * (pad % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + arr.tobytes()


def npz_bytes(params: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed .npz with fixed timestamps and attributes (np.savez stamps the clock)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in params.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, _npy_bytes(arr))
    return buf.getvalue()


# --------------------------------------------------------------------------- onnx


class _GraphBuilder:
    """Tiny helper that names nodes and initializers deterministically."""

    def __init__(self, net: str, params: Mapping[str, np.ndarray]) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.net = net
        self.params = params
        self.nodes: list = []
        self.initializers: list = []

    def init(self, key: str, shape: Sequence[int] | None = None) -> str:
        arr = self.params[f"{self.net}.{key}"]
        if shape is not None:
            arr = arr.reshape(shape)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(arr, "<f4"), key))
        return key

    def node(self, op: str, inputs: Sequence[str], output: str, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op, list(inputs), [output], name=output, **attrs))
        return output

    def conv(self, x: str, layer: str) -> str:
        w = self.init(f"{layer}.weight")
        b = self.init(f"{layer}.bias")
        k = list(self.params[f"{self.net}.{layer}.weight"].shape[2:])
        return self.node("Conv", [x, w, b], layer, kernel_shape=k, strides=[1, 1], pads=[0, 0, 0, 0])

    def prelu(self, x: str, layer: str, spatial: bool) -> str:
        c = self.params[f"{self.net}.{layer}.weight"].shape[0]
        slope = self.init(f"{layer}.weight", (c, 1, 1) if spatial else (c,))
        return self.node("PRelu", [x, slope], layer)

    def prelu_blocked(self, x: str, layer: str) -> str:
        """PReLU as (1 - s) * Relu(x) + s * x, in ops ONNX Runtime keeps in its blocked
        (NCHWc) layout on the CPU: Relu, and per-channel scales as BatchNormalization
        (which it runs as depthwise convolutions with the Add fused). Its PRelu kernel
        would force layout reorders around every layer of the big PNet canvas."""
        s = self.params[f"{self.net}.{layer}.weight"].astype(np.float32)
        c = s.shape[0]

        def const(name: str, value: np.ndarray) -> str:
            self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(value, "<f4"), name))
            return name

        zero, one = const(f"{layer}.zero", np.zeros(c)), const(f"{layer}.one", np.ones(c))
        r = self.node("Relu", [x], f"{layer}.relu")
        a = self.node("BatchNormalization", [r, const(f"{layer}.pos", 1 - s), zero, zero, one],
                      f"{layer}.pos_part", epsilon=0.0)
        b = self.node("BatchNormalization", [x, const(f"{layer}.lin", s), zero, zero, one],
                      f"{layer}.lin_part", epsilon=0.0)
        return self.node("Add", [a, b], layer)

    def pool(self, x: str, layer: str, k: int, s: int) -> str:
        return self.node("MaxPool", [x], layer, kernel_shape=[k, k], strides=[s, s], ceil_mode=1)

    def dense(self, x: str, layer: str) -> str:
        w = self.init(f"{layer}.weight")
        b = self.init(f"{layer}.bias")
        return self.node("Gemm", [x, w, b], layer, transB=1)

    def flatten_wmajor(self, x: str) -> str:
        # facenet-pytorch: x.permute(0, 3, 2, 1).contiguous().view(N, -1)
        t = self.node("Transpose", [x], "permute", perm=[0, 3, 2, 1])
        return self.node("Flatten", [t], "flatten", axis=1)

    def model(self, inputs: list, outputs: list, doc: str):
        helper = self.helper
        graph = helper.make_graph(self.nodes, self.net, inputs, outputs, initializer=self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER_NAME,
            producer_version=PRODUCER_VERSION,
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        return model


def _tensor(name: str, dims: Sequence[int | str]):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


def _doc(net: str) -> str:
    return (
        f"MTCNN {net.upper()} (Zhang et al. 2016), parameters from facenet-pytorch 2.6.0 "
        f"data/{net}.pt sha256 {SOURCE_SHA256[net]}. MIT License."
    )


def face_logit(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 2-class head (conv4_1) as one face-minus-background logit."""
    return w[1:2] - w[0:1], b[1:2] - b[0:1]


def build_pnet(params: Mapping[str, np.ndarray]):
    """PNet with dynamic N, H, W and an additive pre-pool mask for packed canvases."""
    params = dict(params)
    params["pnet.face.weight"], params["pnet.face.bias"] = face_logit(
        params["pnet.conv4_1.weight"], params["pnet.conv4_1.bias"])
    g = _GraphBuilder("pnet", params)
    x = g.conv("image", "conv1")
    x = g.prelu_blocked(x, "prelu1")
    x = g.node("Add", [x, "mask"], "masked")
    x = g.pool(x, "pool1", 2, 2)
    x = g.prelu_blocked(g.conv(x, "conv2"), "prelu2")
    x = g.prelu_blocked(g.conv(x, "conv3"), "prelu3")
    # softmax over 2 classes == sigmoid of the logit difference: one 1x1 conv whose
    # sigmoid ORT fuses, instead of a channel softmax that forces layout reorders
    g.node("Sigmoid", [g.conv(x, "face")], "prob")
    g.node("Identity", [g.conv(x, "conv4_2")], "reg")
    return g.model(
        [_tensor("image", ["N", 3, "H", "W"]), _tensor("mask", [1, 1, "mh", "mw"])],
        [_tensor("reg", ["N", 4, "h", "w"]), _tensor("prob", ["N", 1, "h", "w"])],
        _doc("pnet") + " mask [1,1,H-2,W-2] is added to prelu1 before pool1 (zeros = plain PNet);"
        " prob is P(face) = softmax(conv4_1)[1] = sigmoid(conv4_1[1] - conv4_1[0]).",
    )


def build_rnet(params: Mapping[str, np.ndarray]):
    """RNet on a dynamic batch of 24x24 crops."""
    g = _GraphBuilder("rnet", params)
    x = g.pool(g.prelu_blocked(g.conv("image", "conv1"), "prelu1"), "pool1", 3, 2)
    x = g.pool(g.prelu_blocked(g.conv(x, "conv2"), "prelu2"), "pool2", 3, 2)
    x = g.prelu_blocked(g.conv(x, "conv3"), "prelu3")
    x = g.prelu(g.dense(g.flatten_wmajor(x), "dense4"), "prelu4", spatial=False)
    g.node("Softmax", [g.dense(x, "dense5_1")], "prob", axis=1)
    g.node("Identity", [g.dense(x, "dense5_2")], "reg")
    return g.model(
        [_tensor("image", ["N", 3, 24, 24])],
        [_tensor("reg", ["N", 4]), _tensor("prob", ["N", 2])],
        _doc("rnet"),
    )


def build_onet(params: Mapping[str, np.ndarray]):
    """ONet on a dynamic batch of 48x48 crops."""
    g = _GraphBuilder("onet", params)
    x = g.pool(g.prelu_blocked(g.conv("image", "conv1"), "prelu1"), "pool1", 3, 2)
    x = g.pool(g.prelu_blocked(g.conv(x, "conv2"), "prelu2"), "pool2", 3, 2)
    x = g.pool(g.prelu_blocked(g.conv(x, "conv3"), "prelu3"), "pool3", 2, 2)
    x = g.prelu_blocked(g.conv(x, "conv4"), "prelu4")
    x = g.prelu(g.dense(g.flatten_wmajor(x), "dense5"), "prelu5", spatial=False)
    g.node("Softmax", [g.dense(x, "dense6_1")], "prob", axis=1)
    g.node("Identity", [g.dense(x, "dense6_2")], "reg")
    g.node("Identity", [g.dense(x, "dense6_3")], "landmarks")
    return g.model(
        [_tensor("image", ["N", 3, 48, 48])],
        [_tensor("reg", ["N", 4]), _tensor("landmarks", ["N", 10]), _tensor("prob", ["N", 2])],
        _doc("onet"),
    )


BUILDERS: dict[str, Callable] = {"pnet": build_pnet, "rnet": build_rnet, "onet": build_onet}


def onnx_bytes(model) -> bytes:
    """Serialize deterministically (no map fields here, but be explicit)."""
    import onnx

    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


# --------------------------------------------------------------------------- outputs


def generate(wheel: Path) -> dict[str, bytes]:
    """All shipped files (name -> bytes) for the given wheel."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ToolError("onnx is needed to build the graphs: pip install onnx") from None
    params = load_params(read_source_weights(wheel))
    files: dict[str, bytes] = {
        "LICENSE": LICENSE_TEXT.encode(),
        "README.md": README_TEXT.encode(),
        "mtcnn.npz": npz_bytes(params),
    }
    for net in NETS:
        files[f"{net}.onnx"] = onnx_bytes(BUILDERS[net](params))
    lines = [
        "# SHA-256 of the files in this folder (check: sha256sum -c SHA256SUMS).",
        "# Generated by tools/convert_weights.py from the facenet-pytorch 2.6.0 wheel:",
    ]
    lines += [f"# {SOURCE_SHA256[n]}  facenet_pytorch/data/{n}.pt" for n in NETS]
    lines += [f"{hashlib.sha256(data).hexdigest()}  {name}" for name, data in sorted(files.items())]
    files["SHA256SUMS"] = ("\n".join(lines) + "\n").encode()
    return files


def write(files: Mapping[str, bytes], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)


def check(files: Mapping[str, bytes], shipped: Path) -> bool:
    """Compare regenerated files with those in `shipped`, byte for byte; print one line each."""
    ok = True
    for name, data in files.items():
        path = shipped / name
        same = path.is_file() and path.read_bytes() == data
        print(f"{'OK' if same else 'MISMATCH'}  {path}")
        ok &= same
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", help=f"path to {WHEEL_NAME} (or its folder)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: %(default)s)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temp dir and compare with the files in --out; exit 1 on mismatch",
    )
    args = parser.parse_args(argv)
    try:
        wheel = find_wheel(args.wheel)
        files = generate(wheel)
        if args.check:
            with tempfile.TemporaryDirectory() as tmp:
                write(files, Path(tmp))
                regenerated = {name: (Path(tmp) / name).read_bytes() for name in files}
            return 0 if check(regenerated, Path(args.out)) else 1
        write(files, Path(args.out))
    except ToolError as exc:
        print(f"convert_weights: error: {exc}", file=sys.stderr)
        return 2
    for name in files:
        print(Path(args.out) / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
