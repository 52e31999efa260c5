"""The submission writer and validator on their own, with a stand-in predictor whose output is
known exactly, so every name, size, id, skip and zip entry is checked against hand-written
values (and the file runs in about a second: it is the mutation-testing selection)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_gray
from paddle_lane.core.apollo_files import is_label_file
from paddle_lane.core.labels import known_id_mask, load_scheme
from paddle_lane.inference import submission as sub
from paddle_lane.inference.predictor import FileResult

SCHEME = load_scheme("apollo8")


def write_jpg(path: Path, w: int, h: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path, quality=90)
    return str(path)


class HalvesPredictor:
    """Left half train id 1 (dividing, Apollo 204), right half 6 (thru_turn, Apollo 224)."""
    scheme = SCHEME

    def __init__(self):
        self.calls: list[list[str]] = []

    def predict_files(self, paths, batch_size=None, num_workers=None, progress=True):
        self.calls.append(list(paths))
        for i, p in enumerate(paths):
            try:
                with Image.open(p) as im:
                    im.load()
                    size = im.size
            except OSError:
                yield FileResult(i, p, None, None, f"{p}: cannot read image")
                continue
            yield FileResult(i, p, np.zeros((8, 2, 2), np.float32), size, None)

    def to_train_ids(self, probs, full_size):
        w, h = full_size
        out = np.full((h, w), 6, np.uint8)
        out[:, : w // 2] = 1
        return out


def expected_halves(w: int, h: int) -> np.ndarray:
    out = np.full((h, w), 224, np.uint8)
    out[:, : w // 2] = 204
    return out


# ----------------------------------------------------------------------------- names
def test_output_name_and_zip_path():
    assert sub.output_name("a/b/171206_x_Camera_5.jpg") == "171206_x_Camera_5_bin.png"
    assert sub.output_name("x.y.jpg", ".png") == "x.y.png"
    assert sub.zip_path_for("out/sub") == Path("out/sub.zip")
    assert sub.zip_path_for("out/sub/") == Path("out/sub.zip")


def test_two_images_with_one_output_name_are_refused():
    with pytest.raises(ValueError, match=r"same output a_bin.png: d1/a.jpg and d2/a.jpg"):
        sub._check_unique(["a_bin.png", "b_bin.png", "a_bin.png"],
                          [("a", "d1/a.jpg"), ("b", "d1/b.jpg"), ("a", "d2/a.jpg")])
    sub._check_unique(["a_bin.png", "b_bin.png"], [("a", "a.jpg"), ("b", "b.jpg")])


# ----------------------------------------------------------------------------- resume
def test_is_finished_only_for_a_complete_gray_png_of_the_size(tmp_path):
    good = write_gray(tmp_path / "g.png", np.zeros((4, 6), np.uint8))
    assert sub.is_finished(good, (6, 4))
    assert not sub.is_finished(good, (4, 6))
    assert not sub.is_finished(tmp_path / "absent.png", (6, 4))
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(rgb)
    assert not sub.is_finished(rgb, (6, 4))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:-20])
    assert not sub.is_finished(cut, (6, 4))
    assert not sub.is_finished(tmp_path, (6, 4))  # a folder is not a finished file


def test_already_done_needs_the_overlay_when_asked_and_a_readable_image(tmp_path):
    img = write_jpg(tmp_path / "a.jpg", 6, 4)
    out = write_gray(tmp_path / "a_bin.png", np.zeros((4, 6), np.uint8))
    assert sub._already_done(img, out, None)
    assert not sub._already_done(img, out, tmp_path / "overlay" / "a_bin.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    assert not sub._already_done(str(tmp_path / "bad.jpg"), out, None)


# ----------------------------------------------------------------------------- writing
def test_write_submission_ids_names_zip_and_summary(tmp_path):
    images = [("a", write_jpg(tmp_path / "in" / "a.jpg", 10, 4)), ("b", write_jpg(tmp_path / "in" / "b.jpg", 6, 3))]
    pred = HalvesPredictor()
    out = tmp_path / "sub"
    s = sub.write_submission(pred, images, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["a_bin.png", "b_bin.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_bin.png")), expected_halves(10, 4))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b_bin.png")), expected_halves(6, 3))
    assert Image.open(out / "a_bin.png").mode == "L"
    assert (s["images"], s["skipped"], s["written"], s["failed"]) == (2, 0, 2, [])
    assert s["out_dir"] == str(out) and s["zip"] == str(tmp_path / "sub.zip") and s["seconds"] > 0
    with zipfile.ZipFile(tmp_path / "sub.zip") as zf:
        assert sorted(zf.namelist()) == ["a_bin.png", "b_bin.png"]
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert zf.read("a_bin.png") == (out / "a_bin.png").read_bytes()
    assert pred.calls == [[images[0][1], images[1][1]]]


def test_rerun_predicts_only_what_is_missing_and_clears_stale_temp_files(tmp_path):
    images = [(k, write_jpg(tmp_path / "in" / f"{k}.jpg", 8, 4)) for k in "abc"]
    out = tmp_path / "sub"
    sub.write_submission(HalvesPredictor(), images, out, progress=False, zip_output=False)
    (out / "b_bin.png").unlink()
    (out / "c_bin.png").write_bytes(b"\x89PNG truncated")
    stale = out / ".a_bin.png.tmp123"
    stale.write_bytes(b"half")
    before = (out / "a_bin.png").stat().st_mtime_ns
    pred = HalvesPredictor()
    s = sub.write_submission(pred, images, out, progress=False, zip_output=False)
    assert pred.calls == [[images[1][1], images[2][1]]]
    assert (s["skipped"], s["written"], s["zip"]) == (1, 2, None)
    assert not stale.exists() and (out / "a_bin.png").stat().st_mtime_ns == before
    np.testing.assert_array_equal(np.asarray(Image.open(out / "c_bin.png")), expected_halves(8, 4))
    assert not (tmp_path / "sub.zip").exists()
    pred = HalvesPredictor()
    s = sub.write_submission(pred, images, out, progress=False, zip_output=False)
    assert pred.calls == [] and (s["skipped"], s["written"]) == (3, 0)


def test_unreadable_image_is_reported_skipped_and_left_out_of_the_zip(tmp_path):
    good = write_jpg(tmp_path / "in" / "good.jpg", 6, 4)
    bad = tmp_path / "in" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    s = sub.write_submission(HalvesPredictor(), [("bad", str(bad)), ("good", good)], tmp_path / "sub",
                             progress=False)
    assert s["written"] == 1 and s["skipped"] == 0
    assert s["failed"] == [{"key": "bad", "image": str(bad), "error": f"{bad}: cannot read image"}]
    with zipfile.ZipFile(s["zip"]) as zf:
        assert zf.namelist() == ["good_bin.png"]
    assert not (tmp_path / "sub" / "bad_bin.png").exists()


def test_overlays_are_written_and_count_for_resume(tmp_path):
    images = [("a", write_jpg(tmp_path / "in" / "a.jpg", 8, 4))]
    out = tmp_path / "sub"
    sub.write_submission(HalvesPredictor(), images, out, overlay=True, progress=False)
    ov = out / "overlay" / "a_bin.jpg"
    with Image.open(ov) as im:
        assert im.format == "JPEG" and im.size == (8, 4)
    with zipfile.ZipFile(tmp_path / "sub.zip") as zf:
        assert zf.namelist() == ["a_bin.png"]  # overlays never go into the submission
    ov.unlink()
    pred = HalvesPredictor()
    s = sub.write_submission(pred, images, out, overlay=True, progress=False)
    assert pred.calls == [[images[0][1]]] and s["written"] == 1 and ov.is_file()


def test_many_frames_through_few_writers(tmp_path):
    images = [(f"f{i}", write_jpg(tmp_path / "in" / f"f{i}.jpg", 4, 2)) for i in range(9)]
    s = sub.write_submission(HalvesPredictor(), images, tmp_path / "sub", workers=1, progress=False)
    assert s["written"] == 9
    for i in range(9):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / f"f{i}_bin.png")),
                                      expected_halves(4, 2))


def test_write_zip_is_flat_and_atomic(tmp_path):
    a = tmp_path / "d1" / "x.png"
    a.parent.mkdir()
    a.write_bytes(b"abc")
    z = sub.write_zip([a], tmp_path / "z.zip")
    assert z == tmp_path / "z.zip"
    with zipfile.ZipFile(z) as zf:
        assert zf.namelist() == ["x.png"] and zf.read("x.png") == b"abc"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------- validation
def test_expected_entry_for_keys_images_and_unreadable_images(tmp_path):
    img = write_jpg(tmp_path / "a.jpg", 7, 5)
    assert sub._expected_entry(img, "_bin.png") == ("a_bin.png", (7, 5))
    assert sub._expected_entry("k1", "_bin.png") == ("k1_bin.png", (3384, 1710))
    assert sub._expected_entry("gone/b.jpg", ".png") == ("b.png", (3384, 1710))
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert sub._expected_entry(str(tmp_path / "bad.jpg"), "_bin.png") == ("bad_bin.png", (3384, 1710))


def test_check_png_names_each_problem(tmp_path):
    allowed = known_id_mask()
    ok = write_gray(tmp_path / "ok.png", np.array([[0, 204], [224, 227]], np.uint8))
    assert sub.check_png(ok, (2, 2), allowed) == []
    assert sub.check_png(ok, (3, 2), allowed) == ["ok.png: size 2x2, expected 3x2"]
    bad_ids = write_gray(tmp_path / "ids.png", np.array([[0, 1], [254, 1]], np.uint8))
    assert sub.check_png(bad_ids, (2, 2), allowed, " (hint)") == [
        "ids.png: id(s) [1, 254] not in the Apollo label table (hint)"]
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(rgb)
    assert sub.check_png(rgb, (2, 2), allowed) == ["rgb.png: image mode RGB, expected 'L' (one uint8 Apollo id per pixel)"]
    jpg = tmp_path / "j.png"
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(jpg, format="JPEG")
    assert sub.check_png(jpg, (2, 2), allowed) == ["j.png: file format JPEG, expected PNG"]
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"junk")
    problems = sub.check_png(junk, (2, 2), allowed)
    assert len(problems) == 1 and problems[0].startswith("junk.png: unreadable PNG (")


def test_validate_submission_counts_missing_extra_and_truncates_lists(tmp_path):
    out = tmp_path / "sub"
    zeros = np.zeros((3, 4), np.uint8)
    for k in ["k0", "k1", "x0", "x1", "x2", "x3", "x4", "x5", "x6"]:
        write_gray(out / f"{k}_bin.png", zeros)
    write_gray(out / ".hidden_bin.png", zeros)
    imgs = [write_jpg(tmp_path / "in" / f"k{i}.jpg", 4, 3) for i in range(4)]
    problems = sub.validate_submission(out, imgs)
    assert problems == [
        "count: 9 PNG(s) in " + str(out) + ", 4 expected",
        "missing: 2 expected file(s) absent: k2_bin.png, k3_bin.png",
        "extra: 7 file(s) not in the test list: x0_bin.png, x1_bin.png, x2_bin.png, x3_bin.png, x4_bin.png, "
        "... (2 more)",
    ]
    assert sub.validate_submission(tmp_path / "nowhere", imgs) == [f"submission folder not found: {tmp_path / 'nowhere'}"]


def test_validate_submission_checks_sizes_ids_and_passes_a_good_folder(tmp_path):
    out = tmp_path / "sub"
    imgs = [write_jpg(tmp_path / "in" / "a.jpg", 4, 3), write_jpg(tmp_path / "in" / "b.jpg", 4, 3)]
    write_gray(out / "a_bin.png", np.full((3, 4), 204, np.uint8))
    write_gray(out / "b_bin.png", np.full((3, 4), 204, np.uint8))
    assert sub.validate_submission(out, imgs) == []
    write_gray(out / "b_bin.png", np.full((2, 4), 3, np.uint8))
    problems = sub.validate_submission(out, imgs, scheme=SCHEME, workers=1)
    assert problems == ["b_bin.png: size 4x2, expected 4x3",
                        "b_bin.png: id(s) [3] not in the Apollo label table "
                        "(scheme apollo8 writes [0, 203, 204, 210, 214, 217, 224, 227])"]
    # keys (no image file) expect the competition size
    assert sub.validate_submission(out, ["a"], name_suffix="_bin.png")[-1] == "a_bin.png: size 4x3, expected 3384x1710"


# ----------------------------------------------------------------------------- input listing
@pytest.mark.parametrize("rel,is_label", [
    ("ColorImage_road02/Camera 5/a.jpg", False),
    ("a_bin.png", True),
    ("A_BIN.PNG", True),
    ("Label/x.png", True),
    ("Gray_Label/x.png", True),
    ("Labels_road02/Label/x.png", True),
    ("Label_road03/x.png", True),
    ("labelled/x.png", False),
    ("my_label/x.jpg", False),
])
def test_is_label_file(tmp_path, rel, is_label):
    assert is_label_file(tmp_path / rel, tmp_path) is is_label


def test_list_images_skips_labels_hidden_and_own_output(tmp_path, capsys):
    root = tmp_path / "data"
    a = write_jpg(root / "img" / "b.jpg", 4, 2)
    b = write_jpg(root / "img" / "a.JPG", 4, 2)
    write_gray(root / "img" / "c.png", np.zeros((2, 4), np.uint8))
    write_gray(root / "Label" / "c.png", np.zeros((2, 4), np.uint8))
    write_gray(root / "img" / "c_bin.png", np.zeros((2, 4), np.uint8))
    write_jpg(root / "img" / ".hidden.jpg", 4, 2)
    write_gray(root / "out" / "z.png", np.zeros((2, 4), np.uint8))
    (root / "img" / "notes.txt").write_text("x")
    got = sub.list_images(root, exclude=[root / "out"])
    assert got == [("a", b), ("b", a), ("c", str(root / "img" / "c.png"))]
    assert capsys.readouterr().out.strip() == (
        f"{root}: 3 images; skipped 2 label file(s) (Label folders, *_bin.png) and 1 file(s) in the output folder")
    assert sub.list_images(root / "img", exclude=[]) == [("a", b), ("b", a), ("c", str(root / "img" / "c.png"))]


def test_list_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found: .*nowhere"):
        sub.list_images(tmp_path / "nowhere")
    write_gray(tmp_path / "Label" / "x.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"no \*.jpg or \*.png images under .* \(only 1 label files\)"):
        sub.list_images(tmp_path)
    with pytest.raises(ValueError, match=r"images under \S+$"):
        sub.list_images(tmp_path / "Label" / "..", exclude=[tmp_path / "Label"])


def test_format_summary(tmp_path):
    z = tmp_path / "s.zip"
    z.write_bytes(b"x" * 2_500_000)
    s = {"out_dir": "o", "images": 5, "skipped": 1, "written": 3, "seconds": 2.0, "zip": str(z),
         "failed": [{"key": "k", "image": "k.jpg", "error": "k.jpg: cannot read image"}]}
    assert sub.format_summary(s) == (
        "submission: 4/5 images in o (3 written, 1 already done, 1 failed) in 2.0 s (1.50 img/s)\n"
        "  failed: k: k.jpg: cannot read image\n"
        f"zip: {z} (2.5 MB)")
    s.update(seconds=0.0, zip=None, failed=[])
    assert sub.format_summary(s) == "submission: 4/5 images in o (3 written, 1 already done, 0 failed) in 0.0 s (0.00 img/s)"
