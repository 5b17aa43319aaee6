"""The three MTCNN nets: shipped parameters, ONNX graph paths and torch modules.

The parameters are the original MTCNN weights as converted from facenet-pytorch
2.6.0 by ``tools/convert_weights.py`` (see ``weights/README.md``). They load with
numpy alone; torch is imported only when :func:`torch_nets` is called, so the
ONNX Runtime backend never needs it.

Interfaces (identical for the ONNX graphs and the torch modules):

* PNet: ``image`` [N,3,H,W], ``mask`` [1,1,H-2,W-2] -> ``reg`` [N,4,h,w], ``prob`` [N,1,h,w]
* RNet: ``image`` [N,3,24,24] -> ``reg`` [N,4], ``prob`` [N,2]
* ONet: ``image`` [N,3,48,48] -> ``reg`` [N,4], ``landmarks`` [N,10], ``prob`` [N,2]

Images are RGB in [-1, 1] ((x - 127.5) / 128); ``prob[:, -1]`` is the face score (PNet
gives only that channel: sigmoid of the logit difference, the same number as the
2-class softmax, but cheaper on a whole canvas).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "WEIGHTS_DIR",
    "NET_NAMES",
    "PNET_MASK_VALUE",
    "load_params",
    "onnx_path",
    "pnet_mask_bound",
    "torch_nets",
]

WEIGHTS_DIR: Path = Path(__file__).resolve().parent / "weights"
NET_NAMES: tuple[str, str, str] = ("pnet", "rnet", "onet")

#: Added to PNet's prelu1 output at positions outside a pyramid level in a packed
#: canvas, so that ceil-mode 2x2 max pooling never picks them when a pooling
#: window straddles the level's edge (the level's own values win, exactly as when
#: the level runs alone and the window is clipped).
#:
#: Why -32: for inputs in [-1, 1], conv1 channel c lies in b_c +/- sum|w_c|, and
#: after PReLU (slopes down to -1.28, so a negative pre-activation can become a
#: large positive output) every prelu1 output lies in [-7.41, 20.11] (see
#: :func:`pnet_mask_bound`, checked by the tests). A masked position is then at
#: most 20.11 - 32 = -11.89, below every possible unmasked output (>= -7.41) with
#: a margin of ~4.5, far more than fp16 rounding near 32 (0.03). -24 would not do
#: (20.11 - 24 > -7.41) and -28 only barely; -32 is the first power of two with a
#: clear margin, and keeps the masked activations small, which suits fp16.
PNET_MASK_VALUE: float = -32.0


def onnx_path(name: str) -> Path:
    """Path of the shipped ONNX graph for ``name`` in ('pnet', 'rnet', 'onet')."""
    if name not in NET_NAMES:
        raise ValueError(f"unknown net {name!r}; expected one of {NET_NAMES}")
    return WEIGHTS_DIR / f"{name}.onnx"


@lru_cache(maxsize=1)
def _load_params_cached() -> dict[str, np.ndarray]:
    with np.load(WEIGHTS_DIR / "mtcnn.npz", allow_pickle=False) as data:
        params = {key: data[key] for key in data.files}
    for arr in params.values():
        arr.setflags(write=False)  # shared by every caller through the cache
    return params


def load_params() -> dict[str, np.ndarray]:
    """All parameters as read-only float32 arrays keyed '<net>.<facenet key>'.

    Read once with numpy (no torch) and cached; the returned dict is a fresh copy
    of the mapping, the arrays are shared.
    """
    return dict(_load_params_cached())


def net_params(net: str) -> dict[str, np.ndarray]:
    """One net's parameters keyed like facenet-pytorch's state dict ('conv1.weight', ...)."""
    if net not in NET_NAMES:
        raise ValueError(f"unknown net {net!r}; expected one of {NET_NAMES}")
    prefix = f"{net}."
    return {k[len(prefix):]: v for k, v in _load_params_cached().items() if k.startswith(prefix)}


def pnet_mask_bound(params: dict[str, np.ndarray] | None = None) -> tuple[float, float]:
    """(lowest, highest) possible prelu1 output of PNet for inputs in [-1, 1].

    Per channel, conv1 spans [b - sum|w|, b + sum|w|]; PReLU is piecewise linear,
    so its extremes over that interval are at the two ends or at 0.
    """
    p = net_params("pnet") if params is None else params
    w = p["conv1.weight"].astype(np.float64).reshape(p["conv1.weight"].shape[0], -1)
    b = p["conv1.bias"].astype(np.float64)
    a = p["prelu1.weight"].astype(np.float64)
    radius = np.abs(w).sum(axis=1)
    lo_in, hi_in = b - radius, b + radius

    def prelu(z: np.ndarray) -> np.ndarray:
        return np.where(z > 0, z, a * z)

    ends = np.stack([prelu(lo_in), prelu(hi_in)])
    crosses_zero = (lo_in < 0) & (hi_in > 0)
    lo_out = np.where(crosses_zero, np.minimum(ends.min(axis=0), 0.0), ends.min(axis=0))
    hi_out = np.where(crosses_zero, np.maximum(ends.max(axis=0), 0.0), ends.max(axis=0))
    return float(lo_out.min()), float(hi_out.max())


# --------------------------------------------------------------------------- torch


def flatten_wmajor(x):
    """(N, C, H, W) -> (N, W*H*C): the dense layers were trained on W-major features (Caffe's transposed images)."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


@lru_cache(maxsize=1)
def _torch_classes() -> tuple[type, type, type]:
    """Define the torch modules on first use, so importing this module never imports torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def conv(cin: int, cout: int, k: int) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, kernel_size=k)

    class PNet(nn.Module):
        """PNet; ``mask`` (broadcast to prelu1's output) is added before pool1."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = conv(3, 10, 3), nn.PReLU(10)
            self.conv2, self.prelu2 = conv(10, 16, 3), nn.PReLU(16)
            self.conv3, self.prelu3 = conv(16, 32, 3), nn.PReLU(32)
            self.conv4_1 = conv(32, 2, 1)
            self.conv4_2 = conv(32, 4, 1)

        def forward(
            self, image: torch.Tensor, mask: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.prelu1(self.conv1(image))
            if mask is not None:
                x = x + mask.to(dtype=x.dtype)
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            x = self.prelu2(self.conv2(x))
            x = self.prelu3(self.conv3(x))
            a = self.conv4_1(x)
            return self.conv4_2(x), torch.sigmoid(a[:, 1:2] - a[:, 0:1])

    class RNet(nn.Module):
        """RNet on [N,3,24,24] crops."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = conv(3, 28, 3), nn.PReLU(28)
            self.conv2, self.prelu2 = conv(28, 48, 3), nn.PReLU(48)
            self.conv3, self.prelu3 = conv(48, 64, 2), nn.PReLU(64)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1 = nn.Linear(128, 2)
            self.dense5_2 = nn.Linear(128, 4)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = F.max_pool2d(self.prelu1(self.conv1(image)), 3, 2, ceil_mode=True)
            x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
            x = self.prelu3(self.conv3(x))
            x = self.prelu4(self.dense4(flatten_wmajor(x)))
            return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)

    class ONet(nn.Module):
        """ONet on [N,3,48,48] crops."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = conv(3, 32, 3), nn.PReLU(32)
            self.conv2, self.prelu2 = conv(32, 64, 3), nn.PReLU(64)
            self.conv3, self.prelu3 = conv(64, 64, 3), nn.PReLU(64)
            self.conv4, self.prelu4 = conv(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1 = nn.Linear(256, 2)
            self.dense6_2 = nn.Linear(256, 4)
            self.dense6_3 = nn.Linear(256, 10)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            x = F.max_pool2d(self.prelu1(self.conv1(image)), 3, 2, ceil_mode=True)
            x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
            x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
            x = self.prelu4(self.conv4(x))
            x = self.prelu5(self.dense5(flatten_wmajor(x)))
            return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)

    return PNet, RNet, ONet


def torch_nets(device: Any = "cpu", dtype: Any = None) -> tuple[Any, Any, Any]:
    """(pnet, rnet, onet) as eval-mode torch modules with the shipped weights.

    Their state-dict keys equal facenet-pytorch's, and their call signatures and
    outputs equal the ONNX graphs'. ``dtype`` defaults to float32; gradients are off.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    nets = []
    for name, cls in zip(NET_NAMES, _torch_classes()):
        module = cls()
        state = {k: torch.from_numpy(np.array(v)) for k, v in net_params(name).items()}
        module.load_state_dict(state, strict=True)
        module.requires_grad_(False)
        nets.append(module.to(device=device, dtype=dtype).eval())
    return nets[0], nets[1], nets[2]
