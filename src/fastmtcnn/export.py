"""ONNX graphs for engine builders (TensorRT): one PNet of a fixed tile size, RNet, ONet, and plan.json.

Why one engine per net serves every frame size: the library runs PNet only
on tiles of one side T (`pyramid.make_plan` cuts and packs every pyramid
level of a batch of images of any sizes into them), so a PNet engine built
for ``[N, 3, T, T]`` with N in ``[1, max_tiles]`` serves photos and video
frames of any sizes, and batches of mixed sizes; RNet and ONet only ever see
24x24 and 48x48 crops. `export_onnx` writes:

* ``pnet.onnx``: the shipped PNet with the spatial dims fixed: image
  ``[N, 3, T, T]``, mask ``[N, 1, T-2, T-2]`` (one mask per tile, added after
  PReLU1); outputs reg ``[N, 4, k, k]``, prob ``[N, 1, k, k]``, k = pnet_out(T);
* ``rnet.onnx``, ``onet.onnx``: the shipped graphs (dynamic batch ``N``);
* ``plan.json``: everything a runtime needs to build tiles, masks and
  candidates itself (`rules`): the tile, the mask, the resampling and
  normalization, how a tile's cells map back to each image's boxes, the batch
  buckets, the cascade's steps and the ``trtexec`` commands; with sizes
  given, a worked example (`tile_plan`: every tile's pieces).

The rules' formulas are Python expressions on the pieces' integer fields, so
tests evaluate the very text of plan.json against the library's own code
(tests/test_export.py). Needs the ``onnx`` package (``pip install
'fastmtcnn[export]'``); torch is not used. TensorRT is not installable here:
the graphs are checked with onnx's checker and ONNX Runtime only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .config import Config
from .crop import MEAN, SCALE
from .nets import PNET_MASK_VALUE, onnx_path
from .pipeline import BATCH_BUCKETS, padded_batch
from .pyramid import CELL, STRIDE, TILE, Plan, make_plan, pnet_out

#: default most tiles per PNet call (the engine profile's max and opt batch): 64 tiles of 512 are
#: 16.8 MP, about 12 frames of 1920x1080 at minsize 20
MAX_TILES = 64
#: input pixels pieces of a level overlap by (PNet's receptive field, 12, less one stride)
OVERLAP = CELL - STRIDE


def _onnx():
    try:
        import onnx
    except ImportError:
        raise RuntimeError("export-onnx needs the onnx package: pip install 'fastmtcnn[export]'") from None
    return onnx


def check_tile(tile: int) -> int:
    """The tile side, if PNet can run on it: even (pieces sit at even offsets) and >= 12 (one cell)."""
    if int(tile) != tile or tile < CELL or tile % 2:
        raise ValueError(f"tile must be an even number of pixels >= {CELL}, got {tile}")
    return int(tile)


def _set_dims(value_info, dims: Sequence[int | str]) -> None:
    for d, v in zip(value_info.type.tensor_type.shape.dim, dims):
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v


def tile_pnet(tile: int = TILE):
    """The shipped PNet with its spatial dims fixed to tile x tile and one mask per tile (an onnx ModelProto).

    The graph is unchanged: the mask's batch dim (1 in the shipped graph, one mask
    for the whole batch) becomes N; the Add after PReLU1 broadcasts either way.
    """
    onnx = _onnx()
    tile = check_tile(tile)
    model = onnx.load(str(onnx_path("pnet")))
    g = model.graph
    inputs = {i.name: i for i in g.input}
    _set_dims(inputs["image"], ["N", 3, tile, tile])
    _set_dims(inputs["mask"], ["N", 1, tile - 2, tile - 2])
    k = pnet_out(tile)
    for out in g.output:
        _set_dims(out, ["N", out.type.tensor_type.shape.dim[1].dim_value, k, k])
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def crop_buckets(limit: int) -> list[int]:
    """The RNet/ONet batch sizes the library runs with a batch limit: crops in chunks of `limit`,
    each padded up to `pipeline.padded_batch`."""
    return sorted({padded_batch(n, limit) for n in (*BATCH_BUCKETS, limit) if n <= limit})


def tile_buckets(max_tiles: int) -> list[int]:
    """Tiles per PNet call, rounded up to powers of two as the library's GPU backend does, capped at max_tiles."""
    return sorted({min(1 << k, max_tiles) for k in range(max_tiles.bit_length() + 1)})


def trtexec_commands(tile: int, max_tiles: int, max_batch: tuple[int, int]) -> list[str]:
    """Engine builds for the exported files: PNet's profile covers 1..max_tiles tiles, RNet/ONet 1..max_batch."""
    t, m = tile, tile - 2

    def shapes(n: int) -> str:
        return f"image:{n}x3x{t}x{t},mask:{n}x1x{m}x{m}"

    cmds = [f"trtexec --onnx=pnet.onnx --saveEngine=pnet.engine --fp16 --minShapes={shapes(1)} "
            f"--optShapes={shapes(max_tiles)} --maxShapes={shapes(max_tiles)}"]
    for name, side, b in (("rnet", 24, max_batch[0]), ("onet", 48, max_batch[1])):
        cmds.append(f"trtexec --onnx={name}.onnx --saveEngine={name}.engine --fp16 "
                    f"--minShapes=image:1x3x{side}x{side} --optShapes=image:{b}x3x{side}x{side} "
                    f"--maxShapes=image:{b}x3x{side}x{side}")
    return cmds


def rules(tile: int, config: Config, max_tiles: int) -> dict:
    """The rules of plan.json: what a runtime does around the three engines, formulas as Python expressions."""
    k = pnet_out(tile)
    return {
        "expressions": "Python syntax: // is integer division (every value is >= 0, so C's / on integers is the "
                       "same); y, x, src_y, src_x are even; floats are float32",
        "pyramid": {
            "scales": "float64, step by step: scale = 12 / minsize; m = min(H, W) * scale; while m >= 12: "
                      "add scale, scale *= factor, m *= factor",
            "level_size": {"level_h": "int(H * scale + 1)", "level_w": "int(W * scale + 1)"},
        },
        "tile": {
            "side": tile, "cells": k, "overlap": OVERLAP,
            "cells_rule": "cells of n input pixels: (n - 1) // 2 - 4 (conv 3, max pool 2 ceil mode, conv 3, conv 3)",
            "pieces": "a piece is rows [src_y, src_y + h) x columns [src_x, src_x + w) of level `level` "
                      "of image `image`, at (y, x) of its tile. fastmtcnn's pyramid.make_plan places every "
                      "level of every image of a batch on a strip, cuts the strip into tiles overlapping by "
                      "`overlap` pixels, and each (level, tile) overlap with a valid cell is a piece "
                      "(`fastmtcnn plan` shows them). Any placement works that keeps: y, x, src_y, src_x "
                      "even; pieces of a tile disjoint and inside it; each level cell a valid cell of "
                      "exactly one piece",
            "cells_h": "(h - 1) // 2 - 4", "cells_w": "(w - 1) // 2 - 4",
        },
        "input": {
            "name": "image", "shape": ["N", 3, tile, tile], "layout": "NCHW", "channels": "RGB",
            "piece": "tile[n, :, y:y + h, x:x + w] = rows [src_y, src_y + h), columns [src_x, src_x + w) "
                     "of the level (resample), normalized",
            "elsewhere": "any value in [-1, 1] (fastmtcnn writes 0): the mask keeps it out of every valid cell",
        },
        "resample": {
            "rule": "area averaging of the whole image (H x W) to level_h x level_w: torch's interpolate("
                    "mode='area'), i.e. adaptive average pooling; bins of neighbouring level pixels may share "
                    "an image pixel. The bins are the whole level's, whatever piece is made",
            "row_bin": ["(i * H) // level_h", "((i + 1) * H + level_h - 1) // level_h"],
            "col_bin": ["(j * W) // level_w", "((j + 1) * W + level_w - 1) // level_w"],
            "value": "level[c, i, j] = float32(sum of channel c over image rows row_bin(i), columns col_bin(j): "
                     "[lo, hi), an exact integer) / float32(pixel count of the bin)",
            "crops": "RNet/ONet crops use the same bins over the crop window instead of the whole image",
        },
        "normalize": {"expression": "(value - mean) * scale", "mean": MEAN, "scale": SCALE,
                      "note": "float32, in that order (the reference's two steps)"},
        "mask": {
            "name": "mask", "shape": ["N", 1, tile - 2, tile - 2],
            "rule": "mask[n, 0, r, c] = 0 where some piece of tile n has rows[0] <= r < rows[1] and "
                    "cols[0] <= c < cols[1] (its valid conv1 area), `value` elsewhere",
            "rows": ["y", "y + h - 2"], "cols": ["x", "x + w - 2"], "value": PNET_MASK_VALUE,
            "why": "added after PReLU1, below any real activation: a ceil-mode pooling window over a "
                   "level's odd edge takes the level's own values only, as a per-level run does",
        },
        "pnet_output": {
            "reg": ["N", 4, k, k], "prob": ["N", 1, k, k],
            "cell": "output cell (cy, cx) of tile n sees input rows [2 * cy, 2 * cy + 12), "
                    "columns [2 * cx, 2 * cx + 12)",
            "valid": "cell (cy, cx) of tile n belongs to the piece of tile n with valid_rows[0] <= cy < "
                     "valid_rows[1] and valid_cols[0] <= cx < valid_cols[1]; a cell of no piece is padding: "
                     "skip it",
            "valid_rows": ["y // 2", "y // 2 + cells_h"], "valid_cols": ["x // 2", "x // 2 + cells_w"],
        },
        "decode": {
            "what": "each valid cell with score >= thresholds[0] is a candidate box of its piece's image, in "
                    "that image's pixels (float32 arithmetic: ly, lx, scale as float32)",
            "score": "prob[n, 0, cy, cx]", "reg": "reg[n, :, cy, cx]",
            "ly": "cy - y // 2 + src_y // 2", "lx": "cx - x // 2 + src_x // 2",
            "x1": "floor((stride * lx + 1) / scale)", "y1": "floor((stride * ly + 1) / scale)",
            "x2": "floor((stride * lx + cell) / scale)", "y2": "floor((stride * ly + cell) / scale)",
            "stride": STRIDE, "cell": CELL,
            "order": "candidates of an image sorted by (level, ly, lx) before NMS: equal scores keep that order",
        },
        "batches": {
            "pnet": {"tiles_per_call": "all tiles of a batch of images in one call, in chunks of at most "
                                       "max_tiles; fastmtcnn's GPU backend pads a call's tiles to the next "
                                       "bucket (tiles of zeros, whose cells are no piece's)",
                     "max_tiles": max_tiles, "buckets": tile_buckets(max_tiles)},
            "rnet": {"crops_per_call": "chunks of at most max_batch, each padded with zero crops to the "
                                       "smallest bucket that holds it", "max_batch": config.max_batch[0],
                     "buckets": crop_buckets(config.max_batch[0])},
            "onet": {"max_batch": config.max_batch[1], "buckets": crop_buckets(config.max_batch[1])},
        },
        "cascade": [
            "PNet on the tiles; candidates (decode); NMS IoU 0.5 per (image, level), then 0.7 per image; "
            "PNet regression without +1: x1 += dx1 * (x2 - x1), y1 += dy1 * (y2 - y1), x2 += dx2 * (x2 - x1), "
            "y2 += dy2 * (y2 - y1); square: side = max(w, h) around the centre",
            "crop windows: boxes truncated to integers, [max(x1, 1) - 1, min(x2, W)) x [max(y1, 1) - 1, "
            "min(y2, H)), empty ones dropped; 24x24 area crops (resample's bins over the window), normalized",
            "RNet: keep prob[:, 1] > thresholds[1]; NMS IoU 0.7 per image (the crops' boxes, RNet's "
            "scores); regression with +1 widths "
            "(w = x2 - x1 + 1); square",
            "48x48 crops the same way; ONet: keep prob[:, 1] > thresholds[2]; landmarks x = w * l[0:5] + x1 - 1, "
            "y = h * l[5:10] + y1 - 1 (w, h with +1, before regression); regression with +1 widths; NMS 0.7 "
            "over the smaller box, areas (x2 - x1 + 1) * (y2 - y1 + 1)",
            "NMS: greedy by decreasing score (stable), a box suppressed when its overlap > the threshold",
        ],
    }


def tile_plan(plan: Plan) -> dict:
    """A plan as plan.json writes it: the images (size, scales) and every tile's pieces."""
    return {
        "images": [{"width": w, "height": h, "scales": list(sc)} for (h, w), sc in zip(plan.sizes, plan.scales)],
        "tiles": [{"tile": n, "pieces": [
            {"image": p.image, "level": p.level, "scale": p.scale, "level_h": p.level_h, "level_w": p.level_w,
             "src_y": p.src_y, "src_x": p.src_x, "h": p.h, "w": p.w, "y": p.y, "x": p.x,
             "cells_h": p.out_h, "cells_w": p.out_w} for p in c.pieces]}
            for n, c in enumerate(plan.canvases)],
        "efficiency": round(plan.efficiency, 4),
    }


def example_plan(sizes: Sequence[tuple[int, int]], config: Config, tile: int) -> Plan:
    """The plan of a batch of (H, W) sizes in tiles of one side; an error when no image has a pyramid level."""
    plan = make_plan(sizes, config.minsize, config.factor, check_tile(tile))
    if sizes and not plan.canvases:
        names = ", ".join(f"{w}x{h}" for h, w in sizes)
        raise ValueError(f"{names}: smaller than minsize {config.minsize:g} allows (PNet's 12 px window needs "
                         f"a short side of at least {config.minsize:g} px): no pyramid level to show")
    return plan


def export_onnx(out_dir: str | Path, config: Config = Config(), tile: int = TILE, max_tiles: int = MAX_TILES,
                max_batch: int | tuple[int, int] | None = None, sizes: Sequence[tuple[int, int]] = ()) -> dict:
    """Write pnet.onnx (tiles of `tile`), rnet.onnx, onet.onnx and plan.json into out_dir; returns plan.json's dict.

    max_batch: the RNet/ONet engine profiles' largest batch (default: config.max_batch, the
    library's chunk size); sizes: (H, W) of images whose tiles plan.json shows as an example
    (one batch).
    """
    onnx = _onnx()
    tile = check_tile(tile)
    if int(max_tiles) != max_tiles or max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
    if max_batch is not None:
        config = config.replace(max_batch=max_batch)
    example = example_plan(sizes, config, tile) if sizes else None
    pnet = tile_pnet(tile)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(pnet, str(out / "pnet.onnx"))
    for name in ("rnet", "onet"):
        model = onnx.load(str(onnx_path(name)))
        onnx.checker.check_model(model)
        onnx.save(model, str(out / f"{name}.onnx"))
    info = {
        "format": "fastmtcnn tiles 1",
        "config": {"minsize": config.minsize, "factor": config.factor, "thresholds": list(config.thresholds),
                   "max_batch": list(config.max_batch)},
        "files": {"pnet.onnx": "image [N, 3, T, T] + mask [N, 1, T-2, T-2] -> reg [N, 4, k, k], prob [N, 1, k, k]",
                  "rnet.onnx": "image [N, 3, 24, 24] -> reg [N, 4], prob [N, 2]",
                  "onet.onnx": "image [N, 3, 48, 48] -> reg [N, 4], landmarks [N, 10], prob [N, 2]"},
        **rules(tile, config, int(max_tiles)),
        "trtexec": trtexec_commands(tile, int(max_tiles), config.max_batch),
        "tested": "onnx checker and ONNX Runtime (CPU) only: TensorRT is not installable where fastmtcnn is "
                  "developed, so the engines and the trtexec commands are untested",
    }
    if example is not None:
        info["example"] = tile_plan(example)
    (out / "plan.json").write_text(json.dumps(info, indent=1))
    return info
