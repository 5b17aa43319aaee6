"""ONNX graphs fixed for one frame size, plus the plan a TensorRT (or any) runtime needs.

The shipped PNet takes any canvas size and the packing mask as an input; for
an engine builder a fixed canvas is better (one static shape, the mask a
constant it can fold). `export_onnx` writes:

* ``pnet.onnx``: image ``[N, 3, Hc, Wc]`` (the packed canvas of the frame size),
  the canvas mask baked in as a constant; outputs reg ``[N, 4, h, w]``, prob ``[N, 1, h, w]``;
* ``rnet.onnx``, ``onet.onnx``: the shipped graphs (dynamic batch ``N``, to be
  capped at ``max_batch`` in the engine profile);
* ``plan.json``: where each pyramid level sits in the canvas, its scale and
  size, which PNet cells are valid, the thresholds and normalization, and the
  ``trtexec`` commands for these files.

Needs the ``onnx`` package (``pip install 'fastmtcnn[export]'``); torch is not used.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import Config
from .crop import MEAN, SCALE
from .nets import onnx_path
from .pyramid import CELL, STRIDE, make_plan


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise RuntimeError("export-onnx needs the onnx package: pip install 'fastmtcnn[export]'") from None
    return onnx, numpy_helper


def fixed_pnet(canvas):
    """The shipped PNet with the canvas size fixed and its mask as a constant (an onnx ModelProto)."""
    onnx, numpy_helper = _onnx()
    model = onnx.load(str(onnx_path("pnet")))
    g = model.graph
    mask = next(i for i in g.input if i.name == "mask")
    g.input.remove(mask)
    g.initializer.append(numpy_helper.from_array(canvas.mask.copy(), name="mask"))
    image = next(i for i in g.input if i.name == "image")
    dims = image.type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = canvas.h, canvas.w
    oh, ow = canvas.out_shape
    for out in g.output:
        d = out.type.tensor_type.shape.dim
        d[2].dim_value, d[3].dim_value = oh, ow
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def trtexec_commands(canvas_hw: tuple[int, int], frames: int, max_batch: int) -> list[str]:
    h, w = canvas_hw
    return [
        f"trtexec --onnx=pnet.onnx --saveEngine=pnet.engine --fp16 "
        f"--minShapes=image:1x3x{h}x{w} --optShapes=image:{frames}x3x{h}x{w} --maxShapes=image:{frames}x3x{h}x{w}",
        f"trtexec --onnx=rnet.onnx --saveEngine=rnet.engine --fp16 "
        f"--minShapes=image:1x3x24x24 --optShapes=image:{max_batch}x3x24x24 --maxShapes=image:{max_batch}x3x24x24",
        f"trtexec --onnx=onet.onnx --saveEngine=onet.engine --fp16 "
        f"--minShapes=image:1x3x48x48 --optShapes=image:{max_batch}x3x48x48 --maxShapes=image:{max_batch}x3x48x48",
    ]


def export_onnx(out_dir: str | Path, width: int, height: int, config: Config = Config(), frames: int = 1) -> dict:
    """Write pnet/rnet/onet.onnx and plan.json for frames of width x height into out_dir; returns the plan dict."""
    onnx, _ = _onnx()
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    plan = make_plan(height, width, config.minsize, config.factor, True)
    if not plan.canvases:
        raise ValueError(f"a {width}x{height} frame is smaller than minsize {config.minsize:g} allows: "
                         "nothing to export")
    canvas = plan.canvases[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(fixed_pnet(canvas), str(out / "pnet.onnx"))
    for name in ("rnet", "onet"):
        model = onnx.load(str(onnx_path(name)))
        onnx.checker.check_model(model)
        onnx.save(model, str(out / f"{name}.onnx"))
    max_batch = max(config.max_batch)
    oh, ow = canvas.out_shape
    info = {
        "frame": {"width": width, "height": height},
        "config": {"minsize": config.minsize, "factor": config.factor, "thresholds": list(config.thresholds),
                   "max_batch": list(config.max_batch)},
        "input": {"layout": "NCHW, RGB", "normalize": f"(pixel - {MEAN}) * {SCALE}",
                  "resize": "area averaging (adaptive average pooling) of the whole frame to each level's size"},
        "canvas": {"height": canvas.h, "width": canvas.w, "frames_per_call": frames,
                   "padding": "any value in [-1, 1]; the baked-in mask keeps it out of every valid cell"},
        "pnet_output": {"height": oh, "width": ow, "cell": CELL, "stride": STRIDE,
                        "score": "prob[:, 0] (P(face))",
                        "box_of_cell": "x1 = floor((stride*cx + 1) / scale), x2 = floor((stride*cx + cell) / scale), "
                                       "same for y; cx, cy counted from the level's first cell"},
        "levels": [
            {"id": k, "scale": lv.scale, "height": lv.h, "width": lv.w, "y": lv.y, "x": lv.x,
             "cells": {"y": lv.y // 2, "x": lv.x // 2, "height": lv.out_h, "width": lv.out_w}}
            for k, lv in zip(canvas.level_ids, canvas.levels)
        ],
        "cascade": ["PNet cells with score >= t1 -> boxes; NMS 0.5 per level, then 0.7 per frame; "
                    "PNet regression; square",
                    "RNet on 24x24 area crops (clipped to the frame), score > t2; NMS 0.7; regression; square",
                    "ONet on 48x48 area crops, score > t3; landmarks; regression; "
                    "NMS 0.7 over the smaller box (+1 areas)"],
        "trtexec": trtexec_commands((canvas.h, canvas.w), frames, max_batch),
        "tested": "onnx checker and ONNX Runtime (CPU); TensorRT is not available here: the engines are untested",
    }
    (out / "plan.json").write_text(json.dumps(info, indent=1))
    return info
