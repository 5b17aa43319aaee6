"""`fastmtcnn profile`: the per-stage time table, packed vs per-scale."""
from __future__ import annotations

import json

import pytest

from fastmtcnn import read_image
from fastmtcnn.cli import main
from fastmtcnn.commands.profile import PIPELINE_STAGES, ROWS
from video_clips import fit, write_clip


def _table(out: str) -> dict[str, list[float]]:
    """Rows of the printed table: stage -> [packed ms, packed %, per-scale ms, per-scale %]."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ROWS + ("total",):
            rows[parts[0]] = [float(p.rstrip("%")) for p in parts[1:5]]
    return rows


def test_profile_image_prints_every_stage_for_packed_and_per_scale(shared_data, tmp_path, capsys):
    js = tmp_path / "p.json"
    assert main(["profile", str(shared_data / "skimage_astronaut.png"), "-n", "2", "--warmup", "1",
                 "--json", str(js)]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    rec = json.loads(js.read_text())
    # the pipeline's own stages, then decoding and drawing timed by the command: each one ran and was
    # timed for both detectors (the JSON's microseconds; the table prints 0.01 ms, which a small stage
    # of a fast machine may not reach), and the table prints the JSON's times
    for stage in ("decoding", "integral", "pyramid", "pnet", "candidates", "crops", "rnet", "onet", "drawing"):
        assert stage in rows, stage
        for col, name in ((0, "packed"), (2, "per-scale")):
            ms = rec["ms_per_frame"][name][stage]
            assert ms > 0, (name, stage)
            assert abs(rows[stage][col] - ms) <= 0.0055 + 1e-9, (name, stage, rows[stage][col], ms)  # 2 roundings
    stages = [v for k, v in rows.items() if k != "total"]
    for col in (0, 2):  # the total is the sum of the stages (each printed to 0.01 ms)
        assert abs(sum(v[col] for v in stages) - rows["total"][col]) <= 0.005 * (len(stages) + 1)
    for col in (1, 3):  # percentages add up (each printed to 0.1%)
        assert abs(sum(v[col] for v in stages) - 100) <= 0.05 * len(stages)
        assert rows["total"][col] == 100.0
    assert rows["decoding"][0] == rows["decoding"][2]  # same decoded frames for both
    packed_line = next(x for x in out.splitlines() if x.startswith("packed PNet:"))
    loop_line = next(x for x in out.splitlines() if x.startswith("per-scale PNet:"))
    levels = int(loop_line.split(": ")[2].split()[0])
    assert " tiles of " in packed_line or " tile of " in packed_line
    assert f"{levels} levels in {levels} pieces, per scale [" in loop_line
    assert rec["frames"] == 2 and (rec["width"], rec["height"]) == (512, 512)
    assert set(rec["ms_per_frame"]) == {"packed", "per-scale"}
    assert set(PIPELINE_STAGES) - {"to_host", "nms"} <= set(rec["ms_per_frame"]["packed"])


def test_profile_video_rewinds_short_clips_and_prints_cprofile(shared_data, tmp_path, capsys):
    rgb = fit(read_image(shared_data / "skimage_astronaut.png"), 320, 240)
    clip = write_clip(tmp_path / "c.avi", [rgb] * 3)
    assert main(["profile", str(clip), "-n", "5", "--warmup", "0", "--cprofile", "5"]) == 0
    out = capsys.readouterr().out
    assert "320x240, 5 frames" in out
    pnet = _table(out)["pnet"]
    assert pnet[0] > 0 and pnet[2] > 0  # PNet was timed on the video's frames, packed and per-scale
    assert "cProfile, packed, 5 frames" in out and "tottime" in out


@pytest.mark.parametrize("args,message", [(["missing.png"], "no such file"),
                                          (["rtsp://127.0.0.1:9/x"], "not live sources"),
                                          (["IMG", "-n", "0"], "--frames")])
def test_profile_bad_input_is_one_line_error(shared_data, args, message, capsys):
    args = [str(shared_data / "skimage_astronaut.png") if a == "IMG" else a for a in args]
    assert main(["profile", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
