"""The speed/recall sweep: Pareto front, grid, a tiny sweep on the labelled photos, the tune command."""
from __future__ import annotations

import json
import math

import cv2
import pytest

from fastmtcnn import MTCNN
from fastmtcnn.cli import main
from fastmtcnn.evaluate import MatchRule, load_images, read_annotations
from fastmtcnn.tune import BASELINE, Setting, auto_repeat, format_front, format_table, grid, pareto_front, sweep


def test_pareto_front_keeps_only_undominated_points():
    speed = [1.0, 1.5, 3.0, 3.0, 10.0, 2.0, math.nan]
    recall = [0.95, 0.95, 0.95, 0.90, 0.55, 0.50, 1.0]
    # 1.0 and 1.5 are beaten by 3.0 at equal recall; (3.0, 0.90) by (3.0, 0.95); (2.0, 0.5) by (3.0, 0.95);
    # NaN (a failed setting) is never on the front and beats nothing
    assert pareto_front(speed, recall) == [False, False, True, False, True, False, False]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [True, True]  # ties stay


def test_grid_is_every_combination_with_the_baseline_first():
    g = grid(minsizes=(20, 40), factors=(0.709, 0.6), thresholds=((0.6, 0.7, 0.7), (0.7, 0.6, 0.7)))
    assert g[0] == BASELINE and len(g) == len(set(g)) == 8
    assert Setting(40, 0.6, (0.7, 0.6, 0.7)) in g
    g2 = grid(minsizes=(40,), factors=(0.6,), packed=(True, False))
    assert g2 == [BASELINE, Setting(40, 0.6), Setting(40, 0.6, packed=False)]
    with pytest.raises(ValueError, match="factor"):
        Setting(20, 1.5)


def test_auto_repeat_times_small_sets_several_times():
    assert auto_repeat(4) == 10 and auto_repeat(20) == 2 and auto_repeat(1000) == 1


@pytest.fixture(scope="module")
def gt_set(shared_data):
    ann = read_annotations(shared_data / "gt.json")
    images = {k: img for k, img, err in load_images(ann, shared_data)}
    return ann, images


def _make(s: Setting):
    return MTCNN(minsize=s.minsize, factor=s.factor, thresholds=s.thresholds, packed=s.packed, backend=s.backend)


def test_sweep_measures_speed_relative_to_baseline_and_recall_per_setting(gt_set):
    ann, images = gt_set
    settings = grid(minsizes=(80,), factors=(0.709,), packed=(True, False))
    res = sweep(settings, images, ann, _make, MatchRule("iou", 0.3), repeat=1)
    assert [r.setting for r in res] == settings
    base, m80, m80_per_scale = res
    assert base.speed == 1.0 and all(r.speed > 0 and r.ms_per_image > 0 for r in res)
    assert base.evaluation.hits == 17
    # faces of 37-91 px: minsize 80 looks for none below 80 px, so it finds far fewer
    assert m80.evaluation.hits < 12
    # packed and per-scale PNet give the same detections, so the same accuracy
    assert m80_per_scale.evaluation.summary() == m80.evaluation.summary()
    assert base.pareto  # nothing finds more faces than the default here
    table = format_table(res)
    assert "minsize 80 factor 0.709 thr 0.6/0.7/0.7 per-scale" in table and "94.4%" in table
    assert format_front(res).count("\n") + 1 == sum(r.pareto for r in res)


def test_setting_that_cannot_run_is_reported_not_dropped(gt_set):
    ann, images = gt_set
    one = dict(list(images.items())[:1])

    def make(s):
        if s.minsize == 40:
            raise RuntimeError("no such backend here\nsecond line")
        return _make(s)

    res = sweep([BASELINE, Setting(40), Setting(80)], one, ann, make, repeat=1)
    assert [r.error for r in res] == [None, "no such backend here", None]
    assert math.isnan(res[1].speed) and not res[1].pareto
    assert res[2].evaluation is not None
    assert "error: no such backend here" in format_table(res)


def test_tune_command_prints_front_and_writes_json_and_plot(shared_data, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "tune.json", tmp_path / "tune.png"
    rc = main(["tune", str(shared_data / "gt.json"), str(shared_data), "--iou", "0.3", "--minsize", "40", "80",
               "--factor", "0.6", "--repeat", "1", "--json", str(out), "--plot", str(png)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "Pareto front" in text and "minsize 80 factor 0.6" in text
    doc = json.loads(out.read_text())
    labels = [r["label"] for r in doc["results"]]
    assert labels == [BASELINE.label(), "minsize 40 factor 0.6 thr 0.6/0.7/0.7",
                      "minsize 80 factor 0.6 thr 0.6/0.7/0.7"]
    assert doc["results"][0]["speed"] == 1.0 and doc["results"][0]["hits"] == 17
    # the front written is the one the written numbers give: a setting is on it iff no other is as fast and
    # as accurate and better at one of the two (speeds are this run's timings, so derived, not fixed here)
    pts = [(r["speed"], r["recall"]) for r in doc["results"]]
    for r, (v, c) in zip(doc["results"], pts):
        assert r["recall"] == r["hits"] / r["faces"]
        beaten = any(v2 >= v and c2 >= c and (v2, c2) != (v, c) for v2, c2 in pts)
        assert r["pareto"] == (not beaten), (r["label"], pts)
    assert doc["results"][2]["recall"] < doc["results"][0]["recall"]  # minsize 80 misses the 37-91 px faces
    assert png.stat().st_size > 5000 and cv2.imread(str(png)).std() > 10


def test_tune_command_rejects_bad_thresholds(shared_data, capsys):
    with pytest.raises(SystemExit):
        main(["tune", str(shared_data / "gt.json"), str(shared_data), "--thresholds", "0.6,0.7"])
    assert "three numbers" in capsys.readouterr().err
