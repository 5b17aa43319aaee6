"""Which backend a detector's options ask for, and which options go together: checked here only.

MTCNN (and through it DetectorSpec, batch workers, Ray actors and the CLI)
takes one set of keyword arguments. Every rule that ties one of them to
another lives in `check`, worded in the library's argument names (`device=`,
`fp16=`); the CLI turns those into its flags in one place (`cli.in_flag_terms`).
A value that only one component reads (e.g. the torch backend's
`graph_memory`) is checked where it is read.

Backend choice, when `backend` is not named: a device other than the CPU
(`device="cuda"`, `"cuda:1"`) means the torch backend, `providers=` means
ONNX Runtime, anything else (`device="cpu"` included) the fast CPU default,
OpenVINO (ONNX Runtime where OpenVINO is not installed: `backends.cpu_default`).
The torch backend on the CPU (parity tests) is asked for by name:
`backend="torch", device="cpu"`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .backends import BACKENDS, cpu_default

ALIASES = {"ort": "onnxruntime", "ov": "openvino"}

#: options only the torch backend reads, and the values that ask for nothing (accepted by any backend:
#: fp16=False is what the CPU engines do anyway, graphs="auto" means "where there are graphs")
TORCH_ONLY = ("fp16", "graphs", "graph_batch", "pinned")
_UNASKED = (None, False, "auto", "off")


def is_cuda(device) -> bool:
    """Whether a device (a name such as "cuda:1", or a torch.device) is a CUDA GPU."""
    return device is not None and str(device).strip().lower().partition(":")[0] == "cuda"


def is_cpu(device) -> bool:
    return device is not None and str(device).strip().lower() == "cpu"


@dataclass(frozen=True)
class Choice:
    """The backend the options ask for and the keyword arguments its constructor takes."""

    backend: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return is_cuda(self.kwargs.get("device"))


def _names(keys: list[str]) -> str:
    named = [f"{k}=" for k in keys]
    return " and ".join(named) if len(named) < 3 else ", ".join(named[:-1]) + " and " + named[-1]


def check(backend: str | None = None, *, device=None, providers: list | None = None, threads: int | None = None,
          **options) -> Choice:
    """Validate a detector's options together; returns the backend to build and its arguments.

    options: the torch backend's fp16, graphs, graph_batch, pinned (None: its
    default) and any other backend constructor argument, passed through.
    Raises ValueError, one line, naming the arguments as the caller wrote them.
    """
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if device is not None and providers is not None:
        raise ValueError("device= and providers= both given: device= is the torch backend's device, providers= "
                         "ONNX Runtime's execution providers; give one")
    name = ALIASES.get(backend, backend) if isinstance(backend, str) else backend
    if name is None:
        name = "torch" if device is not None and not is_cpu(device) else (
            "onnxruntime" if providers is not None else cpu_default())
    elif name not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    torch_asked = [k for k in TORCH_ONLY if options.get(k) not in _UNASKED]
    passed = {k: v for k, v in options.items() if v is not None and k not in TORCH_ONLY}
    if threads is not None:
        passed["threads"] = threads
    if name == "torch":
        if providers is not None:
            raise ValueError("providers= is for the onnxruntime backend; the torch backend takes device=")
        device = "cpu" if device is None else device
        if not is_cuda(device):
            cuda_only = [k for k in ("fp16", "graphs") if k in torch_asked]
            if cuda_only:
                raise ValueError(f"{_names(cuda_only)} {'needs' if len(cuda_only) == 1 else 'need'} a CUDA device "
                                 f"(device='cuda'), got device={str(device)!r}")
        torch_set = {k: options[k] for k in TORCH_ONLY if options.get(k) is not None}
        return Choice("torch", {"device": device, **torch_set, **passed})
    if device is not None and not is_cpu(device):
        gpu = " (its GPU: providers=['CUDAExecutionProvider'])" if name == "onnxruntime" else ""
        raise ValueError(f"device={str(device)!r} runs on the torch backend, not on {name}{gpu}: "
                         "leave backend= out, or name backend='torch'")
    if torch_asked:
        raise ValueError(f"{_names(torch_asked)} {'is an option' if len(torch_asked) == 1 else 'are options'} of "
                         f"the torch backend (device='cuda'), not of {name}")
    if providers is not None:
        if name != "onnxruntime":
            raise ValueError(f"providers= is for the onnxruntime backend, not {name}")
        passed["providers"] = providers
    return Choice(name, passed)
