"""Detector parameters, their defaults and validation, in one place.

Defaults are the reference MTCNN's (facenet-pytorch 2.6.0): changing them
trades recall for speed, and the README explains each one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Config:
    """Knobs of the cascade.

    minsize: smallest face side (pixels) the pyramid looks for; larger is
        faster (fewer, smaller levels) and misses smaller faces.
    factor: scale step between pyramid levels; larger means more levels,
        slower, slightly higher recall.
    thresholds: score cut-offs of PNet, RNet, ONet.
    max_batch: largest RNet/ONet batch per network call (bounds memory); one
        number for both, or a pair (rnet, onet).
    packed: run PNet once on a packed canvas of all levels (True) or once
        per level (False); both give the same detections. "auto" (default):
        packed, faster on every backend and frame size measured (`use_packed`).
    """

    minsize: float = 20.0
    factor: float = 0.709
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    max_batch: int | tuple[int, int] = 512
    packed: bool | str = "auto"

    def __post_init__(self) -> None:
        if self.packed not in (True, False, "auto"):
            raise ValueError(f"packed must be True, False or 'auto', got {self.packed!r}")
        if not (self.minsize >= 12):
            raise ValueError(f"minsize must be >= 12 pixels (PNet's window), got {self.minsize}")
        if not (0.05 < self.factor < 1):
            raise ValueError(f"factor must be in (0.05, 1), got {self.factor}")
        if len(self.thresholds) != 3 or not all(0 <= t <= 1 for t in self.thresholds):
            raise ValueError(f"thresholds must be three numbers in [0, 1], got {self.thresholds}")
        mb = self.max_batch
        pair = tuple(mb) if isinstance(mb, (tuple, list)) else (mb, mb)
        if len(pair) != 2 or not all(int(b) >= 1 for b in pair):
            raise ValueError(f"max_batch must be >= 1 (or a pair of such), got {mb}")
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "max_batch", (int(pair[0]), int(pair[1])))

    @property
    def use_packed(self) -> bool:
        """Whether PNet runs on one packed canvas (else level by level).

        "auto" is packed, from side-by-side timings (docs/cpu.md, "Packed or
        per-scale"; per-scale time / packed time, 1.0 = equal, noise about
        +-5%): with PNet run in bands the packed canvas is as fast or faster on
        both CPU engines from 160x120 to 12 MP, minsize 20 and 40 (OpenVINO
        0.93-1.59, ONNX Runtime 0.93-1.15); OpenVINO also compiles one band
        shape packed against one per level per-scale. On the GPU one launch
        per level costs more than the canvas's padding.
        """
        return self.packed == "auto" or bool(self.packed)

    def replace(self, **changes) -> "Config":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


#: Named settings. "reference": facenet-pytorch's defaults (what the faithfulness
#: tests compare against). "jetson": the original "Optimizing TensorRT MTCNN"
#: post's settings (minsize 40, thresholds 0.7/0.6/0.7, RNet/ONet batches <= 256/64).
PRESETS: dict[str, Config] = {
    "reference": Config(),
    "jetson": Config(minsize=40, thresholds=(0.7, 0.6, 0.7), max_batch=(256, 64)),
}


def preset(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def resolve(preset_name: str = "reference", **changes) -> Config:
    """A preset with changes; a change of None keeps the preset's value (as MTCNN reads its arguments)."""
    return preset(preset_name).replace(**{k: v for k, v in changes.items() if v is not None})
