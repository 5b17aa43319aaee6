"""`fastmtcnn export-onnx` (PNet of a fixed tile size, RNet/ONet with a dynamic batch, plan.json) and `fastmtcnn plan`.

Why: the exported graphs are for engine builders (TensorRT) we cannot run
here, so what we can prove is (1) they are valid ONNX and ONNX Runtime runs
them: the tile PNet on a batch of real tiles (two photos of different sizes,
levels cut across tiles, tiles shared by both) computes exactly what the
shipped PNet computes tile by tile; and (2) plan.json tells a runtime the
library's real rules: its formulas, evaluated as written, build the library's
tiles and masks from the photos and decode PNet's cells into the very
candidates `pipeline.pnet_candidates` gives. A wrong formula in plan.json
fails these tests.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from types import SimpleNamespace  # noqa: E402

from fastmtcnn import read_image  # noqa: E402
from fastmtcnn.backends.host import HOST_TILES  # noqa: E402
from fastmtcnn.cli import main  # noqa: E402
from fastmtcnn.crop import integrals  # noqa: E402
from fastmtcnn.nets import PNET_MASK_VALUE, onnx_path  # noqa: E402
from fastmtcnn.pipeline import canvas_input, canvas_mask, padded_batch, pnet_candidates  # noqa: E402
from fastmtcnn.pyramid import TILE, level_size, make_plan, pnet_out, pyramid_scales  # noqa: E402

PHOTOS = ("bob_multiple-faces.jpg", "yolov5_zidane.jpg")  # 520x385 and 1280x720
T = 128  # small tiles: levels of both photos are cut across tiles, and small levels of both share tiles
MINSIZE, FACTOR = 20, 0.709
MAX_TILES, MAX_BATCH = 16, 100


@pytest.fixture(scope="module")
def images(shared_data):
    return [read_image(shared_data / name) for name in PHOTOS]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, images):
    out = tmp_path_factory.mktemp("export")
    sizes = [f"{im.shape[1]}x{im.shape[0]}" for im in images]
    assert main(["export-onnx", str(out), "--tile", str(T), "--max-tiles", str(MAX_TILES), "--max-batch",
                 str(MAX_BATCH), "--minsize", str(MINSIZE), "--factor", str(FACTOR),
                 "--size", sizes[0], "--size", sizes[1]]) == 0
    return out


@pytest.fixture(scope="module")
def info(exported):
    return json.loads((exported / "plan.json").read_text())


@pytest.fixture(scope="module")
def plan(images):
    return make_plan([im.shape[:2] for im in images], MINSIZE, FACTOR, T)


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _dims(value_info):
    return [d.dim_value or d.dim_param for d in value_info.type.tensor_type.shape.dim]


def _eval(expr: str, **names):
    """A formula of plan.json, evaluated as written."""
    return eval(expr, {"__builtins__": {}, "floor": np.floor, "int": int}, names)


@pytest.fixture(scope="module")
def tiles(images, plan, exported):
    """Every tile of the two photos (built by the library), their masks, and the exported PNet's output in ONE call."""
    ids = list(range(len(plan.canvases)))
    x = np.ascontiguousarray(canvas_input(integrals(images), plan, ids), np.float32)
    mask = canvas_mask(plan, ids)
    reg, prob = _session(exported / "pnet.onnx").run(None, {"image": x, "mask": mask})
    return ids, x, mask, reg, prob


# --------------------------------------------------------------------------- the graphs


def test_exported_graphs_pass_the_onnx_checker_with_the_tile_fixed(exported):
    for name in ("pnet", "rnet", "onet"):
        onnx.checker.check_model(str(exported / f"{name}.onnx"))
    g = onnx.load(str(exported / "pnet.onnx")).graph
    k = pnet_out(T)
    assert {i.name: _dims(i) for i in g.input} == {"image": ["N", 3, T, T], "mask": ["N", 1, T - 2, T - 2]}
    assert {o.name: _dims(o) for o in g.output} == {"reg": ["N", 4, k, k], "prob": ["N", 1, k, k]}
    for name, side in (("rnet", 24), ("onet", 48)):
        assert _dims(onnx.load(str(exported / f"{name}.onnx")).graph.input[0]) == ["N", 3, side, side]


def test_tile_pnet_on_a_batch_of_real_tiles_equals_the_shipped_pnet_tile_by_tile(tiles, plan):
    ids, x, mask, reg, prob = tiles
    assert len(ids) > 8 and x.shape == (len(ids), 3, T, T) and mask.shape == (len(ids), 1, T - 2, T - 2)
    assert any((p.h, p.w) != (p.level_h, p.level_w) for p in plan.pieces), "levels cut across tiles"
    assert any(len({p.image for p in c.pieces}) > 1 for c in plan.canvases), "tiles shared by both photos"
    shipped = _session(onnx_path("pnet"))
    for k in ids:
        want = shipped.run(None, {"image": x[k:k + 1], "mask": mask[k:k + 1]})
        np.testing.assert_allclose(reg[k:k + 1], want[0], rtol=0, atol=1e-6, err_msg=f"tile {k} reg")
        np.testing.assert_allclose(prob[k:k + 1], want[1], rtol=0, atol=1e-6, err_msg=f"tile {k} prob")


def test_rnet_and_onet_take_any_batch(exported):
    rng = np.random.default_rng(0)
    for name, side, outs in (("rnet", 24, 2), ("onet", 48, 3)):
        sess = _session(exported / f"{name}.onnx")
        for n in (1, 7, MAX_BATCH):
            res = sess.run(None, {"image": rng.uniform(-1, 1, (n, 3, side, side)).astype(np.float32)})
            assert len(res) == outs and all(r.shape[0] == n for r in res)


# --------------------------------------------------------------------------- plan.json's rules, evaluated


def test_plan_json_example_is_the_library_plan(info, plan, images):
    ex = info["example"]
    assert [(i["height"], i["width"]) for i in ex["images"]] == [im.shape[:2] for im in images]
    assert [tuple(i["scales"]) for i in ex["images"]] == list(plan.scales)
    assert len(ex["tiles"]) == len(plan.canvases)
    for tile, c in zip(ex["tiles"], plan.canvases):
        for q, p in zip(tile["pieces"], c.pieces, strict=True):
            assert q == {**{f: getattr(p, f) for f in ("image", "level", "scale", "level_h", "level_w", "src_y",
                                                        "src_x", "h", "w", "y", "x")},
                         "cells_h": p.out_h, "cells_w": p.out_w}
    # the pyramid rules, as written, give the example's scales and level sizes
    for im in ex["images"]:
        H, W = im["height"], im["width"]
        assert im["scales"] == pyramid_scales(H, W, MINSIZE, FACTOR)
        for s in im["scales"]:
            rule = info["pyramid"]["level_size"]
            assert (_eval(rule["level_h"], H=H, scale=s), _eval(rule["level_w"], W=W, scale=s)) == level_size(H, W, s)
    for tile in ex["tiles"]:
        for p in tile["pieces"]:
            assert p["cells_h"] == _eval(info["tile"]["cells_h"], **p) and p["cells_w"] == _eval(
                info["tile"]["cells_w"], **p)


def _integral(img: np.ndarray) -> np.ndarray:
    """(H+1, W+1, C) int64 prefix sums: the test's own, not the library's."""
    ii = np.zeros((img.shape[0] + 1, img.shape[1] + 1, img.shape[2]), np.int64)
    ii[1:, 1:] = img.astype(np.int64).cumsum(0).cumsum(1)
    return ii


def test_plan_json_rules_build_the_library_tiles_and_masks(info, images, tiles):
    """Resampling, normalization and mask, each from plan.json's formulas, give `canvas_input`/`canvas_mask`."""
    _, x, mask, _, _ = tiles
    rs, nm, mk = info["resample"], info["normalize"], info["mask"]
    side = info["tile"]["side"]
    ii = [_integral(im) for im in images]
    for tile in info["example"]["tiles"]:
        n = tile["tile"]
        want_x = np.zeros((3, side, side), np.float32)
        want_mask = np.full((side - 2, side - 2), mk["value"], np.float32)
        for p in tile["pieces"]:
            H, W = images[p["image"]].shape[:2]
            i = np.arange(p["src_y"], p["src_y"] + p["h"])
            j = np.arange(p["src_x"], p["src_x"] + p["w"])
            ylo, yhi = (_eval(e, i=i, H=H, level_h=p["level_h"]) for e in rs["row_bin"])
            xlo, xhi = (_eval(e, j=j, W=W, level_w=p["level_w"]) for e in rs["col_bin"])
            s = ii[p["image"]]
            total = s[yhi][:, xhi] - s[ylo][:, xhi] - s[yhi][:, xlo] + s[ylo][:, xlo]  # (h, w, C)
            count = ((yhi - ylo)[:, None] * (xhi - xlo)[None, :])[:, :, None]
            value = total.astype(np.float32) / count.astype(np.float32)
            px = _eval(nm["expression"], value=value, mean=np.float32(nm["mean"]), scale=np.float32(nm["scale"]))
            want_x[:, p["y"]:p["y"] + p["h"], p["x"]:p["x"] + p["w"]] = px.transpose(2, 0, 1)
            (r0, r1), (c0, c1) = ([_eval(e, **p) for e in mk[k]] for k in ("rows", "cols"))
            want_mask[r0:r1, c0:c1] = 0
        np.testing.assert_allclose(x[n], want_x, rtol=0, atol=1e-6, err_msg=f"tile {n}")
        np.testing.assert_array_equal(mask[n, 0], want_mask, err_msg=f"tile {n} mask")
    assert mk["value"] == PNET_MASK_VALUE


def test_decoding_with_plan_json_gives_the_pipeline_candidates(info, plan, tiles):
    """Every candidate box of both photos, from the exported PNet's cells decoded by plan.json's formulas as
    written, equals `pipeline.pnet_candidates`: box, score and regression, image and level."""
    ids, _, _, reg, prob = tiles
    dec, out = info["decode"], info["pnet_output"]
    threshold = info["config"]["thresholds"][0]
    f32 = np.float32
    consts = {"stride": f32(dec["stride"]), "cell": f32(dec["cell"]), "floor": np.floor}
    rows = []
    for tile in info["example"]["tiles"]:
        n = tile["tile"]
        for p in tile["pieces"]:
            (r0, r1), (c0, c1) = ([_eval(e, **p) for e in out[k]] for k in ("valid_rows", "valid_cols"))
            cy, cx = (a.ravel() for a in np.mgrid[r0:r1, c0:c1])
            score = _eval(dec["score"], prob=prob, n=n, cy=cy, cx=cx)
            hit = score >= threshold
            cy, cx, score = cy[hit], cx[hit], score[hit]
            ly, lx = _eval(dec["ly"], cy=cy, **p), _eval(dec["lx"], cx=cx, **p)
            env = {**consts, "ly": ly.astype(f32), "lx": lx.astype(f32), "scale": f32(p["scale"])}
            box = [_eval(dec[k], **env) for k in ("x1", "y1", "x2", "y2")]
            r = _eval(dec["reg"], reg=reg, n=n, cy=cy, cx=cx)
            m = len(cy)
            rows.append((np.column_stack([*box, score, r]).astype(f32), np.full(m, p["image"]),
                         np.full(m, p["level"]), ly, lx))
    mine, image, level, ly, lx = (np.concatenate(a) for a in zip(*rows))
    order = np.lexsort((lx, ly, level, image))
    be = SimpleNamespace(asarray=np.asarray)  # the pipeline's array adapter, on numpy
    b, f, group, key = pnet_candidates(be, ids, None, reg, prob, plan, threshold)
    theirs = np.argsort(key, kind="stable")
    assert len(b) == len(mine) and set(np.unique(f)) == {0, 1}, "candidates in both photos"
    assert len(b) > 100
    np.testing.assert_array_equal(f[theirs], image[order])
    np.testing.assert_array_equal(group[theirs], image[order] * plan.levels + level[order])
    np.testing.assert_array_equal(b[theirs], mine[order])


def test_plan_json_batches_and_trtexec_profiles(info):
    b = info["batches"]
    for net in ("rnet", "onet"):
        assert b[net]["max_batch"] == MAX_BATCH
        # exactly the batch sizes the library pads RNet/ONet chunks to
        assert set(b[net]["buckets"]) == {padded_batch(n, MAX_BATCH) for n in range(1, MAX_BATCH + 1)}
    assert b["pnet"]["max_tiles"] == MAX_TILES and b["pnet"]["buckets"] == [1, 2, 4, 8, 16]
    m = T - 2
    pnet = next(c for c in info["trtexec"] if "pnet.onnx" in c)
    assert f"--minShapes=image:1x3x{T}x{T},mask:1x1x{m}x{m}" in pnet
    assert f"--maxShapes=image:{MAX_TILES}x3x{T}x{T},mask:{MAX_TILES}x1x{m}x{m}" in pnet
    assert any(f"--maxShapes=image:{MAX_BATCH}x3x24x24" in c for c in info["trtexec"])
    assert any(f"--maxShapes=image:{MAX_BATCH}x3x48x48" in c for c in info["trtexec"])
    assert "untested" in info["tested"] and "ONNX Runtime" in info["tested"]


def test_default_export_is_the_gpu_tile_without_an_example(tmp_path, capsys):
    assert main(["export-onnx", str(tmp_path), "--preset", "jetson"]) == 0
    said = capsys.readouterr().out
    g = onnx.load(str(tmp_path / "pnet.onnx")).graph
    assert _dims(g.input[0]) == ["N", 3, TILE, TILE] and _dims(g.input[1]) == ["N", 1, TILE - 2, TILE - 2]
    info = json.loads((tmp_path / "plan.json").read_text())
    assert "example" not in info and info["tile"]["side"] == TILE
    assert info["config"]["minsize"] == 40 and info["config"]["max_batch"] == [256, 64]
    assert "pnet.onnx" in said and "untested" in said and said.count("trtexec") == 3


# --------------------------------------------------------------------------- fastmtcnn plan

_PIECE = re.compile(r"^\s+(\d+)\s+(\d+)\s+[\d.]+\s+\d+x\d+\s+\(.*\)\s+\(.*\)\s+(\d+)x(\d+)$")


def _plan_output(capsys, argv):
    """The command's lines, and its tiles: (header line, [(image, level, cells_w, cells_h) of each piece])."""
    assert main(["plan", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    tiles = []
    for line in lines:
        if re.match(r"^tile \d+ ", line):
            tiles.append((line, []))
        elif m := _PIECE.match(line):
            tiles[-1][1].append(tuple(int(v) for v in m.groups()))
    return lines, tiles


@pytest.mark.parametrize("sizes, tile", [([(720, 1280)], None), ([(385, 520)], 128),
                                         ([(720, 1280), (480, 640)], 256)])
def test_plan_command_lists_every_tile_and_cells_add_up_to_the_levels(capsys, sizes, tile):
    argv = [a for h, w in sizes for a in ("--size", f"{w}x{h}")] + (["--tile", str(tile)] if tile else [])
    lines, tiles = _plan_output(capsys, argv)
    plan = make_plan(sizes, 20, 0.709, tile or HOST_TILES)
    assert [int(head.split()[1]) for head, _ in tiles] == list(range(len(plan.canvases)))
    assert all(f"({plan.tile}x{plan.tile})" in head for head, _ in tiles)
    # each level's cells, summed over its pieces in every tile, are that level's cells (counted from the pyramid)
    got: dict[tuple[int, int], int] = {}
    for _, pieces in tiles:
        for image, level, cw, ch in pieces:
            got[image, level] = got.get((image, level), 0) + cw * ch
    want = {(i, k): pnet_out(lh) * pnet_out(lw) for i, (h, w) in enumerate(sizes)
            for k, (lh, lw) in enumerate(level_size(h, w, s) for s in pyramid_scales(h, w, 20, 0.709))}
    assert got == want
    assert lines[0] == plan.describe()
    assert any(line.startswith("PNet input pixels: ") and "vertical stacking" in line for line in lines)
    if len(sizes) > 1:  # a batch: some tile holds pieces of both images
        assert any(len({p[0] for p in pieces}) > 1 for _, pieces in tiles)


def test_plan_command_per_scale_has_one_canvas_per_level(capsys):
    assert main(["plan", "--size", "640x480", "--per-scale"]) == 0
    out = capsys.readouterr().out
    assert out.count("\ncanvas ") == len(pyramid_scales(480, 640, 20, 0.709))
    assert "1.000 efficient" in out


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("command", [["export-onnx", "OUT", "--size", "640"], ["plan", "--size", "640"],
                                     ["plan", "--size", "0x480"]])
def test_a_malformed_size_is_a_usage_error(tmp_path, capsys, command):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / a) if a == "OUT" else a for a in command])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "size must look like" in err or "size must be positive" in err


@pytest.mark.parametrize("argv, message", [
    (["export-onnx", "OUT", "--tile", "101"], "tile must be an even number"),
    (["export-onnx", "OUT", "--tile", "8"], "tile must be an even number"),
    (["export-onnx", "OUT", "--max-tiles", "0"], "max_tiles must be >= 1"),
    (["export-onnx", "OUT", "--max-batch", "0"], "--max-batch must be >= 1"),
    (["export-onnx", "OUT", "--minsize", "5"], "--minsize must be >= 12"),
    (["export-onnx", "OUT", "--size", "16x16", "--minsize", "40"], "no pyramid level"),
    (["plan", "--size", "640x360", "--tile", "7"], "tile must be an even number"),
    (["plan", "--size", "640x360", "--factor", "1.5"], "--factor must be in"),
    (["plan", "--size", "16x16", "--minsize", "40"], "no pyramid level"),
])
def test_impossible_settings_give_one_line_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main([str(out) if a == "OUT" else a for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (out / "pnet.onnx").exists()
