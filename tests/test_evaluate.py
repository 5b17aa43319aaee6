"""Evaluation against labelled faces: hand-checked AP/recall, annotation readers, the eval command."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from fastmtcnn.cli import main
from fastmtcnn.evaluate import (AnnotationError, GroundTruth, MatchRule, average_precision, evaluate,
                                ignore_smaller, match_image, parse_json, parse_wider, pr_curve, read_annotations,
                                run_detector, to_wider)

MISSED_FACE = [122, 134, 159, 171]  # the blurred 37-pixel face in dlib_2008_002079.jpg


def _sq(x, y, s):
    return [x, y, x + s, y + s]


def _ev(gts: dict, dets: dict, rule=MatchRule("iou", 0.5), **kw):
    matches = {k: match_image(GroundTruth.of(gts[k]), np.array(dets[k][0]).reshape(-1, 4), dets[k][1], rule)
               for k in gts}
    return evaluate(matches, rule, **kw)


# ---------------------------------------------------------------- AP / recall, known answers

def test_ap_recall_precision_on_hand_checked_case():
    # a: two faces, one found (0.9), one false positive (0.8); b: one face found (0.7) and found again (0.6).
    # Down the pooled list: TP FP TP FP -> recall 1/3 1/3 2/3 2/3, precision 1 1/2 2/3 1/2.
    # Envelope: 1 up to recall 1/3, 2/3 up to 2/3 -> AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
    gts = {"a": [_sq(0, 0, 50), _sq(100, 0, 50)], "b": [_sq(0, 0, 40)]}
    dets = {"a": ([_sq(1, 1, 50), _sq(300, 300, 30)], [0.9, 0.8]),
            "b": ([_sq(0, 0, 40), _sq(2, 1, 40)], [0.7, 0.6])}
    ev = _ev(gts, dets)
    assert (ev.faces, ev.hits, ev.false_positives, ev.missed) == (3, 2, 2, 1)
    assert ev.recall == pytest.approx(2 / 3)
    assert ev.precision == pytest.approx(0.5)
    assert ev.fp_per_image == pytest.approx(1.0)
    assert ev.average_precision == pytest.approx(5 / 9)
    r, p, s = ev.curve
    np.testing.assert_allclose(r, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(p, [1, 1 / 2, 2 / 3, 1 / 2])
    np.testing.assert_allclose(s, [0.9, 0.8, 0.7, 0.6])


def test_average_precision_is_area_under_precision_envelope():
    # recall 0.5 at precision 0.5, then 1.0 at 2/3: the envelope lifts the first half to 2/3 -> AP 2/3
    assert average_precision(np.array([0.5, 1.0]), np.array([0.5, 2 / 3])) == pytest.approx(2 / 3)
    assert average_precision(np.array([0.25, 0.5]), np.array([1.0, 1.0])) == pytest.approx(0.5)
    assert average_precision(np.zeros(0), np.zeros(0)) == 0.0


def test_equal_scores_enter_the_curve_together():
    # a hit and a false positive with the same score: one point (recall 1, precision 1/2), whatever the order
    for hits in ([True, False], [False, True]):
        r, p, s = pr_curve(np.array([0.8, 0.8]), np.array(hits), 1)
        np.testing.assert_allclose(r, [1.0])
        np.testing.assert_allclose(p, [0.5])
        assert average_precision(r, p) == pytest.approx(0.5)


def test_no_detections_give_zero_recall_and_ap():
    ev = _ev({"a": [_sq(0, 0, 50)]}, {"a": ([], [])})
    assert (ev.hits, ev.false_positives, ev.recall, ev.average_precision) == (0, 0, 0.0, 0.0)
    assert math.isnan(ev.precision)


def test_higher_score_detection_takes_the_face_lower_is_false_positive():
    # the better-placed box scores lower: the higher score still wins the face (WIDER/VOC order)
    gts = {"a": [_sq(0, 0, 40)]}
    dets = {"a": ([_sq(0, 0, 40), _sq(6, 6, 40)], [0.5, 0.9])}
    m = match_image(GroundTruth.of(gts["a"]), np.array(dets["a"][0]), dets["a"][1], MatchRule("iou", 0.5))
    assert m.scores.tolist() == [0.9, 0.5] and m.det_status.tolist() == [1, 0]


def test_detection_on_ignored_face_is_neither_hit_nor_false_positive():
    gt = {"a": GroundTruth.of([_sq(0, 0, 50), _sq(200, 200, 10)], [False, True])}
    matches = {"a": match_image(gt["a"], np.array([_sq(0, 0, 50), _sq(200, 200, 10), _sq(400, 0, 30)]),
                                [0.9, 0.95, 0.8])}
    ev = evaluate(matches)
    assert (ev.faces, ev.ignored, ev.hits, ev.false_positives, ev.detections) == (1, 1, 1, 1, 2)
    assert ev.average_precision == pytest.approx(1.0)  # the ignored 0.95 does not sit above the hit


def test_ignore_below_drops_small_faces_from_recall():
    ann = ignore_smaller({"a": GroundTruth.of([_sq(0, 0, 15), _sq(50, 50, 60)])}, 20)
    assert ann["a"].ignore.tolist() == [True, False]
    m = match_image(ann["a"], np.array([_sq(50, 50, 60)]), [0.9])
    assert evaluate({"a": m}).recall == 1.0


def test_centre_rule_matches_a_loose_box_that_iou_rejects():
    gt = GroundTruth.of([[0, 0, 10, 10]])
    loose = np.array([[-4, -6, 14, 16]])  # IoU 100/396 = 0.25; centres coincide
    off = np.array([[8, 8, 30, 30]])  # centre (19, 19) outside the face
    assert match_image(gt, loose, [0.9], MatchRule("iou", 0.3)).det_status.tolist() == [0]
    assert match_image(gt, loose, [0.9], MatchRule("centre")).det_status.tolist() == [1]
    assert match_image(gt, off, [0.9], MatchRule("centre")).det_status.tolist() == [0]
    with pytest.raises(ValueError, match="matching rule"):
        MatchRule("center")


def test_size_buckets_count_misses_by_face_size():
    gts = {"a": [_sq(0, 0, 15), _sq(100, 0, 30), _sq(200, 0, 35), _sq(0, 100, 100)]}
    dets = {"a": ([_sq(200, 0, 35), _sq(0, 100, 100)], [0.9, 0.9])}
    b = _ev(gts, dets, edges=(20, 40, 80)).buckets
    assert [(x["min"], x["max"], x["faces"], x["missed"]) for x in b] == [
        (0, 20, 1, 1), (20, 40, 2, 1), (40, 80, 0, 0), (80, math.inf, 1, 0)]
    assert b[1]["miss_rate"] == 0.5 and math.isnan(b[2]["miss_rate"])


# ---------------------------------------------------------------- readers

WIDER_SAMPLE = """\
0--Parade/0_Parade_marchingband_1_465.jpg
3
345 211 4 4 2 0 0 0 2 0
331 126 3 3 0 0 0 1 0 0
10 20 30 40 0 0 0 0 1 0
1--Handshaking/1_Handshaking_1_94.jpg
0
0 0 0 0 0 0 0 0 0 0
2--Demonstration/2_Demonstration_1_10.jpg
1
5 6 7 8
"""


def test_wider_reader_on_written_sample():
    ann = parse_wider(WIDER_SAMPLE)
    assert list(ann) == ["0--Parade/0_Parade_marchingband_1_465.jpg", "1--Handshaking/1_Handshaking_1_94.jpg",
                         "2--Demonstration/2_Demonstration_1_10.jpg"]
    a = ann["0--Parade/0_Parade_marchingband_1_465.jpg"]
    assert a.boxes.tolist() == [[345, 211, 349, 215], [331, 126, 334, 129], [10, 20, 40, 60]]
    assert a.ignore.tolist() == [False, True, False]  # the 8th column is WIDER's 'invalid' flag
    assert ann["1--Handshaking/1_Handshaking_1_94.jpg"].boxes.shape == (0, 4)
    assert ann["2--Demonstration/2_Demonstration_1_10.jpg"].boxes.tolist() == [[5, 6, 12, 14]]


def test_wider_writer_round_trips():
    ann = parse_wider(WIDER_SAMPLE)
    again = parse_wider(to_wider(ann))
    assert list(again) == list(ann)
    for k in ann:
        np.testing.assert_array_equal(again[k].boxes, ann[k].boxes)
        np.testing.assert_array_equal(again[k].ignore, ann[k].ignore)


@pytest.mark.parametrize("text, where, what", [
    ("a.jpg\n2\n1 2 3 4\nfoo\n", ":4:", "face 2 of 'a.jpg'"),
    ("a.jpg\ntwo\n", ":2:", "number of faces"),
    ("a.jpg\n3\n1 2 3 4\n", ":3:", "ends after 1 of 3"),
    ("a.jpg\n1\n1 2 3 4\n1 2 3 4\n", ":4:", "image path"),
    ("a.jpg\n1\n1 2 -3 4\n", ":3:", "negative"),
    ("a.jpg\n0\nb.jpg\n1\n1 2 3 4 5\na.jpg\n0\n", ":7:", "listed twice"),
])
def test_bad_wider_file_error_names_the_line(text, where, what):
    with pytest.raises(AnnotationError) as e:
        parse_wider(text, "gt.txt")
    assert str(e.value).startswith("gt.txt" + where) and what in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, where, what", [
    ('{\n "a.jpg": [[1, 2, 3, 4]],\n "b.jpg": [[1, 2, 3]]\n}', ":3:", "box 0"),
    ('{\n "a.jpg": [[1, 2, 3, 4],\n}', ":3:", "invalid JSON"),
    ('{"a.jpg": [[5, 2, 3, 4]]}', ":1:", "x2 <= x1"),
    ('[[1, 2, 3, 4]]', ":1:", "expected an object"),
    ('{"a.jpg": {"box": [1, 2, 3, 4]}}', ":1:", "list of boxes"),
])
def test_bad_json_file_error_names_the_line(text, where, what):
    with pytest.raises(AnnotationError) as e:
        parse_json(text, "gt.json")
    assert str(e.value).startswith("gt.json" + where) and what in str(e.value)


def test_reader_tells_json_from_wider_by_content(tmp_path):
    (tmp_path / "gt").write_text('{"x.jpg": [[1, 2, 3, 4]]}')
    (tmp_path / "gt.json").write_text(WIDER_SAMPLE)
    assert read_annotations(tmp_path / "gt")["x.jpg"].boxes.tolist() == [[1, 2, 3, 4]]
    assert len(read_annotations(tmp_path / "gt.json")) == 3
    with pytest.raises(AnnotationError, match="no such file"):
        read_annotations(tmp_path / "missing.txt")


# ---------------------------------------------------------------- real photos

@pytest.fixture(scope="module")
def gt_eval(shared_data, detector):
    ann = read_annotations(shared_data / "gt.json")
    return ann, run_detector(detector, ann, shared_data, rule=MatchRule("iou", 0.3))[0]


def test_default_detector_finds_17_of_18_labelled_faces(gt_eval):
    ann, ev = gt_eval
    assert (ev.images, ev.faces, ev.hits, ev.false_positives) == (4, 18, 17, 0)
    missed = [b for rec in ev.per_image for b in rec["missed_boxes"]]
    assert missed == [MISSED_FACE]
    assert ev.average_precision == pytest.approx(17 / 18)


def test_gt_json_as_wider_text_gives_the_same_evaluation(gt_eval, shared_data, detector, tmp_path):
    ann, ev = gt_eval
    path = tmp_path / "wider_face_gt.txt"
    path.write_text(to_wider(ann))
    assert path.read_text().splitlines()[:3] == ["dlib_2007_007763.jpg", "7", "194 90 37 37 0 0 0 0 0 0"]
    wider = read_annotations(path)
    assert list(wider) == list(ann)
    for k in ann:
        np.testing.assert_array_equal(wider[k].boxes, ann[k].boxes)
    again = run_detector(detector, wider, shared_data, rule=MatchRule("iou", 0.3))[0]
    assert again.summary() == ev.summary()


def test_matching_rule_decides_a_borderline_face(shared_data):
    """A box that overlaps its tight label at 0.3 <= IoU < 0.5 is a hit at IoU 0.3 and by centre, and a
    miss plus a false positive at WIDER's 0.5 (the Jetson preset has such a face, at IoU 0.44).

    The expected counts come from each photo's IoU and centre matrices: no detection is near two
    labels and no label near two detections, so one-to-one matching is plain counting here.
    """
    from fastmtcnn import MTCNN, read_image
    from fastmtcnn.metrics import iou_matrix

    ann = read_annotations(shared_data / "gt.json")
    det = MTCNN(preset="jetson")
    expected = {"IoU >= 0.3": [0, 0], "centre inside (both ways)": [0, 0], "IoU >= 0.5": [0, 0]}
    borderline = 0
    for name, gt in ann.items():
        found = det.detect(read_image(shared_data / name)).boxes.astype(np.float64)
        iou = iou_matrix(gt.boxes, found)
        gc, dc = (gt.boxes[:, :2] + gt.boxes[:, 2:]) / 2, (found[:, :2] + found[:, 2:]) / 2
        centres = (((dc[None] >= gt.boxes[:, None, :2]) & (dc[None] <= gt.boxes[:, None, 2:])).all(-1)
                   & ((gc[:, None] >= found[None, :, :2]) & (gc[:, None] <= found[None, :, 2:])).all(-1))
        for rule, near in (("IoU >= 0.3", iou >= 0.3), ("centre inside (both ways)", centres),
                           ("IoU >= 0.5", iou >= 0.5)):
            assert near.sum(axis=0).max(initial=0) <= 1 and near.sum(axis=1).max(initial=0) <= 1, (name, rule)
            expected[rule][0] += int(near.sum())
            expected[rule][1] += len(found) - int(near.any(axis=0).sum())
        best = iou.max(axis=1, initial=0)
        borderline += int(((best >= 0.3) & (best < 0.5)).sum())
    assert borderline >= 1, "the photos should hold a borderline face for this preset"
    got = {}
    for rule in (MatchRule("iou", 0.3), MatchRule("centre"), MatchRule("iou", 0.5)):
        ev = run_detector(det, ann, shared_data, rule=rule)[0]
        got[rule.describe()] = (ev.hits, ev.false_positives)
    assert got == {k: tuple(v) for k, v in expected.items()}
    hits, fps = got["IoU >= 0.3"]
    assert got["IoU >= 0.5"] == (hits - borderline, fps + borderline)


def _check_png(path):
    assert path.stat().st_size > 5000
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 300
    assert img.std() > 10  # axes, text and a curve, not a blank canvas


def test_eval_command_writes_table_json_and_plot(shared_data, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "eval.json", tmp_path / "pr.png"
    rc = main(["eval", str(shared_data / "gt.json"), str(shared_data), "--iou", "0.3",
               "--json", str(out), "--plot", str(png)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "found (recall)            17 (94.4%)" in text and "20-40" in text
    doc = json.loads(out.read_text())
    assert (doc["faces"], doc["hits"], doc["false_positives"], doc["match"]) == (18, 17, 0, "IoU >= 0.3")
    assert doc["detector"]["minsize"] == 20 and len(doc["pr_curve"]["recall"]) == len(doc["pr_curve"]["score"]) > 0
    assert [r["image"] for r in doc["per_image"]] == list(json.loads((shared_data / "gt.json").read_text()))
    _check_png(png)


def test_eval_command_reports_unreadable_image_and_keeps_going(shared_data, tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"dlib_2008_001009.jpg": [[145, 79, 221, 155], [125, 214, 215, 305]],
                              "no_such.jpg": [[1, 1, 30, 30]]}))
    out = tmp_path / "e.json"
    rc = main(["eval", str(gt), str(shared_data), "--json", str(out)])
    cap = capsys.readouterr()
    assert rc == 1
    assert "no_such.jpg: no such file" in cap.err
    doc = json.loads(out.read_text())
    assert (doc["images"], doc["images_failed"], doc["faces"], doc["hits"]) == (1, 1, 2, 2)
    assert doc["per_image"][-1] == {"image": "no_such.jpg", "error": f"{shared_data / 'no_such.jpg'}: no such file"}


def test_eval_command_bad_annotation_is_one_line_naming_the_line(shared_data, tmp_path, capsys):
    bad = tmp_path / "gt.txt"
    bad.write_text("a.jpg\n2\n1 2 3 4\n1 2 x 4\n")
    assert main(["eval", str(bad), str(shared_data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}:4:" in err and "Traceback" not in err
    assert main(["eval", str(shared_data / "gt.json"), str(tmp_path / "nowhere")]) == 2
    assert "images folder not found" in capsys.readouterr().err
    assert main(["eval", str(shared_data / "gt.json"), str(shared_data), "--match", "iou", "--iou", "1.5"]) == 2
    assert "IoU threshold" in capsys.readouterr().err


def test_spread_picks_evenly_over_the_set():
    from fastmtcnn.evaluate import spread

    keys = [f"{i}.jpg" for i in range(10)]
    assert spread(keys, 3) == ["0.jpg", "4.jpg", "9.jpg"]  # first, middle, last event
    assert spread(keys, None) == keys and spread(keys, 50) == keys


def test_eval_command_on_wider_layout_with_limit(shared_data, gt_eval, tmp_path, capsys):
    # the WIDER FACE val layout: ANNOTATIONS lists event/file.jpg paths under WIDER_val/images
    import shutil

    ann, _ = gt_eval
    wider = {}
    for k, name in enumerate(ann):
        rel = f"{k}--Event/{name}"
        (tmp_path / "images" / f"{k}--Event").mkdir(parents=True)
        shutil.copy(shared_data / name, tmp_path / "images" / rel)
        wider[rel] = ann[name]
    (tmp_path / "wider_face_val_bbx_gt.txt").write_text(to_wider(wider))
    out = tmp_path / "e.json"
    rc = main(["eval", str(tmp_path / "wider_face_val_bbx_gt.txt"), str(tmp_path / "images"), "--limit", "2",
               "--iou", "0.3", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert [r["image"] for r in doc["per_image"]] == [list(wider)[0], list(wider)[-1]]
    # --limit 2 spreads over the set: its first and last image, with the labels and hits they have in the full run
    first, last = list(ann)[0], list(ann)[-1]
    full = {r["image"]: r for r in gt_eval[1].per_image}
    assert doc["images"] == 2
    assert doc["faces"] == len(ann[first].boxes) + len(ann[last].boxes)
    assert doc["hits"] == full[first]["hits"] + full[last]["hits"]
