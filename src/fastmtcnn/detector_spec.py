"""A detector described as plain data, for the processes that build their own.

Local-mode workers and Ray actors each build an MTCNN where they run; what
they receive is a DetectorSpec: picklable, checked where it is made (the
driver), and free of argparse, so the library never needs the command line to
know what to build.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

from . import options as opts
from .config import Config, resolve

if TYPE_CHECKING:  # imported by `build`: the command line parses its flags before OpenCV's import
    from .detector import MTCNN


@dataclass(frozen=True)
class DetectorSpec:
    """MTCNN's arguments: `spec.build()` is `MTCNN(minsize, ..., preset=..., backend=..., exif=..., **options)`.

    The cascade settings are a preset with changes (None keeps the preset's
    value); `config` is the Config they make. `max_batch` stays None unless
    chosen, so a CUDA detector keeps MTCNN's larger CUDA batches.
    backend: None lets the options choose, as MTCNN does (`options.check`:
    device="cuda" is the torch backend, providers= ONNX Runtime, else OpenVINO).
    options: the backend's keyword arguments (device, providers, threads, fp16, graphs, ...).
    """

    preset: str = "reference"
    minsize: float | None = None
    factor: float | None = None
    thresholds: tuple[float, float, float] | None = None
    max_batch: int | tuple[int, int] | None = None
    packed: bool | str | None = None
    backend: str | None = None
    exif: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _ = self.config  # a bad setting fails here, in the driver, not in every worker
        _ = self.choice

    @property
    def config(self) -> Config:
        """The cascade settings (on CUDA with max_batch None, the detector takes larger RNet/ONet batches)."""
        return resolve(self.preset, minsize=self.minsize, factor=self.factor, thresholds=self.thresholds,
                       max_batch=self.max_batch, packed=self.packed)

    @property
    def choice(self) -> opts.Choice:
        """The backend these options make and its arguments (checked as MTCNN checks them)."""
        return opts.check(self.backend, **self.options)

    @property
    def uses_gpu(self) -> bool:
        """Whether it asks for a GPU: a torch CUDA device or a CUDA/TensorRT execution provider."""
        providers = self.options.get("providers") or []
        return self.choice.cuda or any("CUDA" in p or "Tensorrt" in p for p in providers)

    def with_options(self, **options) -> DetectorSpec:
        """The same detector with some backend options set (e.g. threads)."""
        return replace(self, options={**self.options, **options})

    def build(self) -> MTCNN:
        from .detector import MTCNN

        return MTCNN(self.minsize, self.factor, self.thresholds, self.max_batch, self.packed, preset=self.preset,
                     backend=self.backend, exif=self.exif, **self.options)
