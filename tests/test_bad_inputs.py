"""Every bad input a user can hand the detector, through the API and the CLI.

Why: users feed folders of whatever they have. Each input must give either a
correct result (grayscale, RGBA and 16-bit images are converted; tiny images,
a minsize larger than the image and photos without faces give zero faces) or
a clear one-line error naming the file; a folder run never stops at a bad
file, reports every input (one JSON Lines record each) and exits non-zero
when any input failed. The files are made from real photos in tmp dirs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import load_reference
from fastmtcnn import MTCNN, Detections, ImageError, images, read_image
from fastmtcnn.cli import main
from fastmtcnn.metrics import greedy_match

PHOTO = "matplotlib_grace_hopper.jpg"  # 512 x 600, one face

# file name -> words its one-line error must contain
ERRORS = {
    "missing.jpg": "no such file",
    "not_an_image.jpg": "not an image",
    "truncated.jpg": "truncated",
    "corrupt.jpg": "corrupt",
    "truncated.png": "truncated",
    "empty.jpg": "empty file",
}
# file name -> the image it must be read as (key into the `expected_rgb` fixture)
CONVERTED = {"gray.png": "gray", "gray16.png": "gray", "rgba.png": "rgb", "rgb16.png": "rgb", "rgba16.png": "rgb"}
NO_FACES = ("tiny.png", "no_faces.png")


@pytest.fixture(scope="module")
def photo_bgr(shared_data) -> np.ndarray:
    return cv2.imread(str(shared_data / PHOTO), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def expected_rgb(photo_bgr) -> dict[str, np.ndarray]:
    gray = cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY)
    return {"rgb": cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2RGB), "gray": np.repeat(gray[:, :, None], 3, axis=2)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data, photo_bgr) -> Path:
    """A folder holding one file of each kind (missing.jpg is deliberately not created)."""
    d = tmp_path_factory.mktemp("inputs")
    jpeg = (shared_data / PHOTO).read_bytes()
    rng = np.random.default_rng(0)
    (d / "not_an_image.jpg").write_text("this is a text file with an image suffix\n")
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    # JPEG start and end markers around noise: looks like a JPEG, decodes to nothing
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8" + rng.integers(0, 256, 20000, dtype=np.uint8).tobytes() + b"\xff\xd9")
    (d / "empty.jpg").write_bytes(b"")
    gray = cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(d / "gray.png"), gray)
    png = (d / "gray.png").read_bytes()
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    cv2.imwrite(str(d / "gray16.png"), gray.astype(np.uint16) * 257)
    alpha = np.linspace(0, 255, photo_bgr.shape[1]).astype(np.uint8)[None, :].repeat(photo_bgr.shape[0], 0)
    bgra = np.dstack([photo_bgr, alpha])  # alpha varies: it must be dropped, not blended
    cv2.imwrite(str(d / "rgba.png"), bgra)
    cv2.imwrite(str(d / "rgb16.png"), photo_bgr.astype(np.uint16) * 257)
    cv2.imwrite(str(d / "rgba16.png"), bgra.astype(np.uint16) * 257)
    cv2.imwrite(str(d / "tiny.png"), photo_bgr[200:208, 250:258])  # 8 x 8 px of the face
    shutil.copy(shared_data / "skimage_coffee.png", d / "no_faces.png")
    return d


@pytest.fixture(scope="module")
def photo_faces(detector, expected_rgb) -> dict[str, Detections]:
    return {k: detector.detect(v) for k, v in expected_rgb.items()}


def _assert_one_line_error(msg: str, path: Path, words: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg
    assert str(path) in msg, f"the error must name the file: {msg!r}"
    assert words in msg, msg


def _assert_same(a: Detections, b: Detections) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3, rtol=0)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- API


@pytest.mark.parametrize("name", ERRORS)
def test_unusable_file_raises_one_line_image_error(detector, inputs, name):
    path = inputs / name
    for call in (read_image, detector.detect, lambda p: detector.detect_batch([p])):
        with pytest.raises(ImageError) as e:
            call(path)
        _assert_one_line_error(str(e.value), path, ERRORS[name])
    assert issubclass(ImageError, ValueError)  # so the CLI reports it as one line, exit 2, outside a batch


def test_directory_is_not_an_image(detector, inputs):
    with pytest.raises(ImageError, match="is a directory"):
        detector.detect(inputs)


@pytest.mark.parametrize("name", CONVERTED)
def test_grayscale_rgba_and_16_bit_files_are_converted(detector, inputs, expected_rgb, photo_faces, name):
    img = read_image(inputs / name)
    assert img.dtype == np.uint8 and img.shape == (600, 512, 3)
    np.testing.assert_array_equal(img, expected_rgb[CONVERTED[name]])
    _assert_same(detector.detect(inputs / name), photo_faces[CONVERTED[name]])


def test_grayscale_version_of_a_photo_still_finds_the_face(photo_faces):
    ref = Detections.from_list(load_reference(PHOTO))
    assert len(greedy_match(ref.boxes, photo_faces["gray"].boxes, 0.7)) == len(photo_faces["gray"]) == 1
    assert len(greedy_match(ref.boxes, photo_faces["rgb"].boxes, 0.7)) == 1


def test_arrays_of_other_layouts_and_types_are_converted(detector, expected_rgb, photo_faces):
    rgb, gray = expected_rgb["rgb"], expected_rgb["gray"][:, :, 0]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    for arr, want in [(rgba, "rgb"), (rgb.astype(np.uint16) * 257, "rgb"), (rgb / 255.0, "rgb"),
                      (rgb.astype(np.float32), "rgb"), (gray, "gray"), (gray[:, :, None], "gray"),
                      (np.ascontiguousarray(rgb[::-1])[::-1], "rgb")]:
        _assert_same(detector.detect(arr), photo_faces[want])


@pytest.mark.parametrize("arr, words", [
    (np.zeros((0, 0, 3), np.uint8), "empty"),
    (np.zeros((10, 0, 3), np.uint8), "empty"),
    (np.zeros((50, 50, 2), np.uint8), "shape"),
    (np.zeros((50, 50, 5), np.uint8), "shape"),
    (np.zeros(50, np.uint8), "shape"),
    (np.zeros((2, 50, 50, 3, 1), np.uint8), "shape"),
    (np.full((50, 50, 3), np.nan, np.float32), "NaN"),
    (np.zeros((50, 50, 3), np.int64), "pixel type"),
    (np.zeros((50, 50, 3), np.complex64), "pixel type"),
    ("not an array", "no such file"),
    (None, "expected a numpy array or a path"),
    (12, "expected a numpy array or a path"),
], ids=lambda v: getattr(v, "shape", None) and f"{v.dtype}{v.shape}" or repr(v))
def test_unusable_arrays_raise_one_line_image_error(detector, arr, words):
    with pytest.raises(ImageError) as e:
        detector.detect(arr)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("hw", [(1, 1), (8, 8), (11, 11), (12, 12), (19, 300), (20, 20), (300, 19), (1, 5000)])
def test_tiny_images_give_zero_faces_without_error(detector, expected_rgb, hw):
    h, w = hw
    tiny = cv2.resize(expected_rgb["rgb"], (w, h), interpolation=cv2.INTER_AREA)
    assert len(detector.detect(tiny)) == 0


def test_tiny_and_faceless_files_give_zero_faces(detector, inputs):
    for name in NO_FACES:
        d = detector.detect(inputs / name)
        assert isinstance(d, Detections) and len(d) == 0, name


def test_minsize_larger_than_the_image_gives_zero_faces(expected_rgb, photo_faces):
    rgb = expected_rgb["rgb"]
    assert len(MTCNN(minsize=1000).detect(rgb)) == 0
    assert MTCNN(minsize=1000).plan(*rgb.shape[:2]).canvases == ()
    # minsize equal to the short side still looks at the whole image (one level)
    assert len(MTCNN(minsize=512).plan(600, 512).scales[0]) == 1


def test_jpeg_damaged_inside_decodes_with_the_rows_before_the_damage_intact(inputs, shared_data):
    """Noise in the middle of a JPEG (markers intact): the decoder recovers, as cameras' damaged files need.

    The image keeps its size; the rows coded before the damage are exactly the
    clean photo's, and the damage shows below them (it is not papered over).
    """
    data = bytearray((shared_data / PHOTO).read_bytes())
    k = len(data) // 3
    data[k:k + 2000] = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    path = inputs.parent / "damaged_inside.jpg"
    path.write_bytes(bytes(data))
    img, clean = read_image(path), read_image(shared_data / PHOTO)
    assert img.shape == clean.shape == (600, 512, 3) and img.dtype == np.uint8
    changed = np.flatnonzero((img != clean).any(axis=(1, 2)))
    assert len(changed), "the noise must show in the decoded image"
    # the first third of the file codes at least the top 100 of 600 rows (here: 175)
    assert changed[0] >= 100
    np.testing.assert_array_equal(img[:changed[0]], clean[:changed[0]])


@pytest.mark.parametrize("name", [PHOTO, "skimage_astronaut.png"])
def test_valid_file_with_appended_bytes_is_read(shared_data, tmp_path, name):
    path = tmp_path / name
    path.write_bytes((shared_data / name).read_bytes() + bytes(1000))  # e.g. a camera's trailer
    np.testing.assert_array_equal(read_image(path), read_image(shared_data / name))


@pytest.fixture(scope="module")
def huge(tmp_path_factory, photo_bgr) -> tuple[Path, float]:
    """The photo upscaled 8x to 4096 x 4800 (~20 Mpx) as a JPEG, and the scale."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    big = cv2.resize(photo_bgr, None, fx=8, fy=8, interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path, 8.0


def test_huge_image_finds_the_face(huge, photo_faces):
    # minsize scaled with the image (a 20 px minsize on 20 Mpx runs, slowly; the plan is checked below)
    path, s = huge
    d = MTCNN(minsize=20 * s).detect(path)
    want = photo_faces["rgb"].boxes * s
    assert len(d) == 1
    assert len(greedy_match(want, d.boxes, 0.7)) == 1


def test_huge_image_plan_at_default_minsize_is_tiles_of_one_shape():
    det = MTCNN()
    plan = det.plan(4800, 4096)
    # README's rule: levels s_k = (12 / minsize) * factor^k while min(H, W) * s_k >= 12
    levels = 0
    while 4096 * (12 / 20) * 0.709 ** levels >= 12:
        levels += 1
    assert len(plan.scales[0]) == levels
    assert len({(c.h, c.w) for c in plan.canvases}) == 1 and plan.tile in det.backend.tiles
    assert plan.efficiency >= 0.85


def test_image_over_the_pixel_limit_is_refused_with_one_line(huge, monkeypatch):
    path, _ = huge
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000_000)
    with pytest.raises(ImageError) as e:
        read_image(path)
    _assert_one_line_error(str(e.value), path, "larger than")


# --------------------------------------------------------------------------- CLI


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_run_reports_every_input_and_fails_when_any_failed(inputs, photo_faces, capsys, tmp_path):
    out = tmp_path / "out.jsonl"
    missing = inputs / "missing.jpg"
    rc = main(["detect", str(inputs), str(missing), "--json", str(out), "-q"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in cap.err + cap.out
    recs = _records(out)
    files = sorted(p.name for p in inputs.iterdir()) + ["missing.jpg"]
    assert [Path(r["path"]).name for r in recs] == files, "one record per input, in order"
    by_name = {Path(r["path"]).name: r for r in recs}
    for name, words in ERRORS.items():
        r = by_name[name]
        assert set(r) == {"path", "error"}
        _assert_one_line_error(r["error"], Path(r["path"]), words)
        assert f"error: {r['error']}" in cap.err.splitlines(), "each failure is one stderr line"
    for name, want in CONVERTED.items():
        r = by_name[name]
        assert "error" not in r and (r["width"], r["height"]) == (512, 600)
        assert r["faces"] == photo_faces[want].to_list()
    for name in NO_FACES:
        assert by_name[name]["faces"] == [] and "error" not in by_name[name]
    assert len([ln for ln in cap.err.splitlines() if ln.startswith("error: ")]) == len(ERRORS)
    assert f"{len(files)} images" in cap.out and f"{len(ERRORS)} failed" in cap.out


@pytest.mark.parametrize("name", ERRORS)
def test_cli_single_bad_file_exits_1_with_one_error_line(inputs, capsys, name):
    rc = main(["detect", str(inputs / name)])
    cap = capsys.readouterr()
    assert rc == 1
    errors = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(errors) == 1, cap.err
    _assert_one_line_error(errors[0], inputs / name, ERRORS[name])


def test_cli_minsize_larger_than_image_gives_zero_faces(shared_data, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    assert main(["detect", str(shared_data / PHOTO), "--minsize", "1000", "--json", str(out)]) == 0
    (rec,) = _records(out)
    assert rec["faces"] == [] and (rec["width"], rec["height"]) == (512, 600)
    assert "0 faces" in capsys.readouterr().out


def test_cli_huge_image(huge, tmp_path, capsys):
    path, s = huge
    out = tmp_path / "o.jsonl"
    assert main(["detect", str(path), "--minsize", str(20 * s), "--json", str(out)]) == 0
    (rec,) = _records(out)
    assert (rec["width"], rec["height"]) == (4096, 4800) and len(rec["faces"]) == 1


def test_cli_image_over_the_pixel_limit_is_an_error_record(huge, tmp_path, capsys, monkeypatch):
    path, _ = huge
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000_000)
    out = tmp_path / "o.jsonl"
    assert main(["detect", str(path), "--json", str(out)]) == 1
    (rec,) = _records(out)
    assert "larger than" in rec["error"] and "faces" not in rec


def test_a_jpeg_is_complete_whatever_follows_its_end_and_truncated_anywhere_in_its_scans(shared_data):
    """The completeness check finds the end of image after the scan data, whether bytes follow it (some
    cameras append data) or not, and misses it in a file cut anywhere after its first scan starts."""
    from fastmtcnn.images import check_complete

    jpeg = (shared_data / PHOTO).read_bytes()
    scan = jpeg.index(b"\xff\xda")
    for data in (jpeg, jpeg + b"\x00" * 64 + b"trailing", jpeg + jpeg[:scan]):
        check_complete("ok.jpg", np.frombuffer(data, np.uint8))
    for cut in (scan + 20, (scan + len(jpeg)) // 2, len(jpeg) - 2, len(jpeg) - 1):
        with pytest.raises(ImageError, match="truncated"):
            check_complete("cut.jpg", np.frombuffer(jpeg[:cut], np.uint8))
