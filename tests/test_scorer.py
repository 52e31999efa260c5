"""Folder scoring on tiny synthetic Apollo-id PNGs (known answers counted by hand, problems and
counts), and on the real dev pairs when present."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddle_lane.core.errors import UserError
from paddle_lane.core.labels import load_scheme
from paddle_lane.evaluation.scorer import score_folders

SCHEME = load_scheme("apollo8")
APOLLO_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "apollo_dev"
H, W = 6, 8


def _label(lanes: dict[int, tuple[slice, slice]] | None = None, shape=(H, W)) -> np.ndarray:
    """Background frame with the given id painted into each (rows, cols) region."""
    ids = np.zeros(shape, np.uint8)
    for value, region in (lanes or {}).items():
        ids[region] = value
    return ids


def _write(folder: Path, name: str, ids: np.ndarray) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids, mode="L").save(path)
    return path


FRAME_A = _label({200: (slice(0, 2), slice(0, 4)), 201: (slice(3, 5), slice(4, 8))})
FRAME_B = _label({214: (slice(2, 4), slice(0, 8)), 255: (slice(5, 6), slice(None))})


@pytest.fixture
def dirs(tmp_path):
    """gt/ with two frames (one in a sub-folder) and an empty pred/."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write(gt, "a_bin.png", FRAME_A)
    _write(gt, "rec/b_bin.png", FRAME_B)
    pred.mkdir()
    return gt, pred


def _score(pred, gt, **kw):
    return score_folders(pred, gt, SCHEME, workers=kw.pop("workers", 1), progress=False, **kw)


def test_identical_folders_score_one(dirs):
    gt, _ = dirs
    report = _score(gt, gt)
    assert report.miou == 1.0 and report.miou_lanes == 1.0
    assert report.counts["scored"] == 2 and report.problems == []
    assert "stopping" in report.results["absent_classes"]


def test_predictions_matched_by_name_in_any_subfolder(dirs):
    gt, pred = dirs
    _write(pred, "x/y/a_bin.png", FRAME_A)
    _write(pred, "b_bin.png", FRAME_B)
    assert _score(pred, gt).miou == 1.0


def test_pred_suffix(dirs):
    gt, pred = dirs
    _write(pred, "a_bin_pred.png", FRAME_A)
    _write(pred, "b_bin_pred.png", FRAME_B)
    assert _score(pred, gt, pred_suffix="_pred").miou == 1.0


def test_missing_prediction_counts_as_background_and_is_listed(dirs):
    gt, pred = dirs
    _write(pred, "a_bin.png", FRAME_A)
    report = _score(pred, gt)
    assert report.counts["missing"] == 1 and report.counts["scored"] == 2
    assert any(p["file"].endswith("b_bin.png") and "missing" in p["reason"] for p in report.problems)
    zebra = SCHEME.class_names.index("zebra")
    assert report.confusion[zebra, 0] == 16 and report.confusion[zebra, zebra] == 0
    assert report.results["per_class"][zebra]["iou"] == 0.0


def test_extra_prediction_is_listed_and_ignored(dirs):
    gt, pred = dirs
    _write(pred, "a_bin.png", FRAME_A)
    _write(pred, "rec/b_bin.png", FRAME_B)
    _write(pred, "stray.png", _label({200: (slice(None), slice(None))}))
    report = _score(pred, gt)
    assert report.counts["extra"] == 1 and report.miou == 1.0
    assert [p["file"] for p in report.problems] == [str(pred / "stray.png")]


def test_wrong_size_prediction_scores_as_background_and_is_listed(dirs):
    gt, pred = dirs
    _write(pred, "a_bin.png", FRAME_A)
    _write(pred, "b_bin.png", _label({214: (slice(2, 4), slice(0, 8))}, shape=(H, W + 2)))  # right zebra, wrong width
    report = _score(pred, gt)
    assert report.counts["mismatched"] == 1 and report.counts["scored"] == 2
    # by hand: A is perfect (32 bg, 8 dividing, 8 guiding); B counts as all background:
    # its 16 zebra pixels become misses, its 24 background pixels hits, its 8 ego-hood pixels are ignored
    expected = np.zeros((8, 8), np.int64)
    expected[0, 0], expected[1, 1], expected[2, 2], expected[5, 0] = 32 + 24, 8, 8, 16
    np.testing.assert_array_equal(report.confusion, expected)
    assert report.miou == pytest.approx((56 / 72 + 1 + 1 + 0) / 4)  # skipping B would have scored 1.0
    [problem] = [p for p in report.problems if "wrong size" in p["reason"]]
    assert problem["file"] == str(pred / "b_bin.png")
    assert "prediction b_bin.png is 10x6 but ground truth b_bin.png is 8x6" in problem["reason"]
    assert "scored as all background" in problem["reason"]
    assert "1 wrong-size" in report.table()


def test_wrong_size_scores_no_better_than_a_missing_file(dirs):
    gt, pred = dirs
    _write(pred, "a_bin.png", FRAME_A)
    missing = _score(pred, gt)
    _write(pred, "b_bin.png", _label(shape=(H + 1, W)))
    broken = _score(pred, gt)
    np.testing.assert_array_equal(broken.confusion, missing.confusion)
    assert broken.prediction_gaps() == {"missing": 0, "unreadable": 0, "wrong size": 1}
    assert missing.prediction_gaps() == {"missing": 1, "unreadable": 0, "wrong size": 0}


def test_other_id_of_the_same_category_counts_as_correct(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write(gt, "f.png", _label({200: (slice(0, 3), slice(None)), 201: (slice(4, 6), slice(None))}))
    _write(pred, "f.png", _label({204: (slice(0, 3), slice(None)), 203: (slice(4, 6), slice(None))}))
    assert _score(pred, gt).miou == 1.0


def test_ignore_in_eval_ground_truth_is_excluded(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write(gt, "f.png", _label({200: (slice(0, 1), slice(None)), 213: (slice(2, 3), slice(None)),
                                255: (slice(4, 6), slice(None))}))
    _write(pred, "f.png", _label({200: (slice(0, 1), slice(None)), 214: (slice(2, 3), slice(None)),
                                  210: (slice(4, 6), slice(None))}))
    report = _score(pred, gt)
    assert report.confusion.sum() == H * W - 3 * W
    assert report.miou == 1.0


def test_unreadable_and_unknown_ids_are_listed(dirs):
    gt, pred = dirs
    (pred / "a_bin.png").write_bytes(b"not a png")
    _write(pred, "b_bin.png", _label({7: (slice(0, 1), slice(None))}))
    report = _score(pred, gt)
    reasons = {Path(p["file"]).name: p["reason"] for p in report.problems}
    assert "unreadable prediction" in reasons["a_bin.png"]
    assert "unknown id(s) [7]" in reasons["b_bin.png"]
    assert report.counts["unreadable_pred"] == 1 and report.counts["unknown_ids"] == 1


def test_unreadable_ground_truth_is_listed_and_skipped(dirs):
    gt, _ = dirs
    (gt / "c_bin.png").write_bytes(b"\x89PNG truncated")
    report = _score(gt, gt)
    assert report.counts["unreadable_gt"] == 1 and report.counts["scored"] == 2 and report.miou == 1.0
    assert any("unreadable ground truth" in p["reason"] for p in report.problems)


def test_two_workers_match_one_worker(dirs):
    gt, pred = dirs
    _write(pred, "a_bin.png", FRAME_B[:, ::-1].copy())
    _write(pred, "b_bin.png", FRAME_A)
    one, two = _score(pred, gt, workers=1), _score(pred, gt, workers=2)
    np.testing.assert_array_equal(one.confusion, two.confusion)
    assert one.problems == two.problems


def test_write_produces_csv_and_json(dirs, tmp_path):
    gt, _ = dirs
    out = tmp_path / "out"
    report = _score(gt, gt, out_dir=out)
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == SCHEME.class_names
    data = json.loads((out / "scores.json").read_text())
    assert data["results"]["miou"] == 1.0 and data["counts"]["gt_files"] == 2
    assert data["results"]["per_class"][3]["iou"] is None  # absent stopping class: NaN -> null
    assert sorted(p.name for p in out.iterdir()) == ["scores.csv", "scores.json"]  # no temp files left
    assert "policy:" in report.table()


def test_missing_folders_and_empty_ground_truth_raise(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="prediction folder not found"):
        _score(tmp_path / "nope", tmp_path / "empty")
    with pytest.raises(UserError, match="ground-truth folder not found"):
        _score(tmp_path / "empty", tmp_path / "nope")
    with pytest.raises(UserError, match="no \\*.png ground truth"):
        _score(tmp_path / "empty", tmp_path / "empty")


# --- real data (read in place, never copied) ---

def _real_pairs() -> list[dict]:
    if not (APOLLO_DEV / "pairs.csv").is_file():
        pytest.skip(f"real dev pairs not found at {APOLLO_DEV}")
    with open(APOLLO_DEV / "pairs.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_real_ground_truth_against_itself_scores_one():
    pairs = _real_pairs()
    gray = APOLLO_DEV / "Gray_Label"
    report = score_folders(gray, gray, SCHEME, workers=2, progress=False)
    assert report.counts["scored"] == len(pairs) and report.problems == []
    assert report.miou == 1.0 and report.miou_lanes == 1.0


def test_real_palette_labels_against_gray_labels_score_one(tmp_path):
    pairs = _real_pairs()
    for row in pairs:  # symlinks into the shared folder: the files stay where they are
        (tmp_path / Path(row["label_alt"]).name).symlink_to(APOLLO_DEV / row["label_alt"])
    report = score_folders(tmp_path, APOLLO_DEV / "Gray_Label", SCHEME, workers=1, progress=False)
    assert report.counts["scored"] == len(pairs) and report.problems == []
    assert report.miou == 1.0 and report.miou_lanes == 1.0
    assert not math.isnan(report.results["pixel_accuracy"])


@pytest.mark.parametrize("n", [3, 8, 16])
def test_packed_histogram_confusion_equals_bincount(n):
    """The one-byte packed histogram path agrees with a plain bincount, ignore included."""
    from paddle_lane.evaluation.scorer import frame_confusion
    rng = np.random.default_rng(n)
    gt_lut = rng.integers(0, n, 256).astype(np.uint8)
    gt_lut[rng.choice(256, 40, replace=False)] = 255
    gt_ids = rng.integers(0, 256, (97, 131)).astype(np.uint8)
    pred = rng.integers(0, n, (97, 131)).astype(np.uint8)
    gt = gt_lut[gt_ids]
    keep = gt != 255
    ref = np.bincount(gt[keep].astype(np.int64) * n + pred[keep], minlength=n * n).reshape(n, n)
    np.testing.assert_array_equal(frame_confusion(pred, gt_ids, gt_lut, n), ref)


@pytest.mark.parametrize("n", [8, 16])
def test_out_of_range_prediction_raises_naming_the_values(n):
    """A train id >= n would land in another class's bin of the packed histogram; both paths refuse it."""
    from paddle_lane.evaluation.scorer import frame_confusion
    gt_lut = np.zeros(256, np.uint8)
    pred = np.zeros((4, 5), np.uint8)
    pred[0, 0], pred[3, 4] = n, n + 3
    with pytest.raises(ValueError, match=rf"pred holds value\(s\) \[{n}, {n + 3}\] outside \[0, {n}\)"):
        frame_confusion(pred, np.zeros((4, 5), np.uint8), gt_lut, n)


# --- known answers, counted by hand ---

APOLLO9 = load_scheme("apollo9")
# Ground truth (Apollo ids). 218/219 (chevron) and 213 are ignoreInEval, 249 is noise, 255 the ego hood:
# the evaluation table drops all of them, although apollo9's training table makes 218/219 class 8
# (chevron) and 213, 249, 255 background.
GT9 = np.array([[0, 0, 200, 200, 218, 218],
                [0, 0, 200, 204, 219, 213],
                [255, 255, 249, 249, 0, 0],
                [217, 217, 0, 0, 210, 210]], np.uint8)
# Prediction (Apollo ids): 204 counts as dividing, 218 as chevron.
PRED9 = np.array([[0, 200, 200, 0, 0, 218],
                  [0, 0, 204, 204, 218, 200],
                  [0, 217, 0, 0, 0, 218],
                  [217, 0, 0, 0, 210, 0]], np.uint8)
# In train ids the 16 scored pixels are (gt rows 0-1 cols 4-5 and row 2 cols 0-3 are excluded):
#   gt  0 0 1 1 . .    pred 0 1 1 0 . .
#       0 0 1 1 . .         0 0 1 1 . .
#       . . . . 0 0         . . . . 0 8
#       3 3 0 0 4 4         3 0 0 0 4 0
# rows = ground truth (background, dividing, guiding, stopping, parking, zebra, thru_turn, reduction, chevron)
CONFUSION9 = np.zeros((9, 9), np.int64)
CONFUSION9[0, 0], CONFUSION9[0, 1], CONFUSION9[0, 8] = 6, 1, 1
CONFUSION9[1, 0], CONFUSION9[1, 1] = 1, 3
CONFUSION9[3, 0], CONFUSION9[3, 3] = 1, 1
CONFUSION9[4, 0], CONFUSION9[4, 4] = 1, 1
NAN = math.nan
# IoU = tp / (gt + pred - tp): background 6/(8+9-6), dividing 3/(4+4-3), stopping and parking 1/(2+1-1);
# chevron is predicted once but never in the evaluated ground truth: IoU 0, counted; the rest are absent.
IOU9 = [6 / 11, 3 / 5, NAN, 1 / 2, 1 / 2, NAN, NAN, NAN, 0.0]


def _assert_ious(report, expected):
    got = [c["iou"] for c in report.results["per_class"]]
    assert got == pytest.approx(expected, nan_ok=True)


def test_frame_confusion_maps_ground_truth_with_the_evaluation_table():
    """frame_confusion with apollo9's eval table gives the hand-counted confusion (ignoreInEval ids dropped)."""
    from paddle_lane.core.labels import apply_lut
    from paddle_lane.evaluation.scorer import frame_confusion
    pred = apply_lut(PRED9, APOLLO9.pred_lut())
    np.testing.assert_array_equal(frame_confusion(pred, GT9, APOLLO9.eval_lut(), 9), CONFUSION9)


def test_score_folders_uses_the_evaluation_table_not_the_training_table(tmp_path):
    """apollo9 (whose eval and training tables differ on 213, 218, 219, 249, 255): confusion, IoUs and means by hand."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write(gt, "f_bin.png", GT9)
    _write(pred, "f_bin.png", PRED9)
    report = score_folders(pred, gt, APOLLO9, workers=1, progress=False)
    np.testing.assert_array_equal(report.confusion, CONFUSION9)
    _assert_ious(report, IOU9)
    assert report.miou == pytest.approx((6 / 11 + 3 / 5 + 1 / 2 + 1 / 2 + 0) / 5)
    assert report.miou_lanes == pytest.approx((3 / 5 + 1 / 2 + 1 / 2 + 0) / 4)
    assert report.results["pixel_accuracy"] == pytest.approx(11 / 16)
    assert report.results["scored_pixels"] == 16
    assert report.results["per_class"][8]["status"] == "false positives only"
    assert report.problems == []


def test_apollo8_known_answer_over_two_frames(dirs):
    """apollo8, predictions a few pixels off the ground truth in two frames: confusion, IoUs and means by hand."""
    gt, pred = dirs
    a = FRAME_A.copy()
    a[0, 0] = 0      # dividing pixel missed
    a[5, 0] = 204    # background called dividing
    a[3, 4] = 203    # another guiding id: still correct
    a[4, 7] = 217    # guiding called stopping
    b = FRAME_B.copy()
    b[2, 0:2] = 0    # two zebra pixels missed
    b[5, :] = 210    # parking over the ego hood (255): not scored
    b[0, 0] = 214    # background called zebra
    _write(pred, "a_bin.png", a)
    _write(pred, "b_bin.png", b)
    report = _score(pred, gt)
    # A: 32 background (31 right, 1 -> dividing), 8 dividing (7 right, 1 -> background),
    #    8 guiding (7 right, 1 -> stopping); B: 24 background (23 right, 1 -> zebra),
    #    16 zebra (14 right, 2 -> background), 8 ego-hood pixels excluded.
    expected = np.zeros((8, 8), np.int64)
    expected[0, 0], expected[0, 1], expected[0, 5] = 31 + 23, 1, 1
    expected[1, 0], expected[1, 1] = 1, 7
    expected[2, 2], expected[2, 3] = 7, 1
    expected[5, 0], expected[5, 5] = 2, 14
    np.testing.assert_array_equal(report.confusion, expected)
    # background 54/(56+57-54), dividing 7/(8+8-7), guiding 7/(8+7-7), stopping 0 (predicted only),
    # parking, thru_turn and reduction absent, zebra 14/(16+15-14)
    _assert_ious(report, [54 / 59, 7 / 9, 7 / 8, 0.0, NAN, 14 / 17, NAN, NAN])
    assert report.miou == pytest.approx((54 / 59 + 7 / 9 + 7 / 8 + 0 + 14 / 17) / 5)
    assert report.miou_lanes == pytest.approx((7 / 9 + 7 / 8 + 0 + 14 / 17) / 4)
    assert report.results["pixel_accuracy"] == pytest.approx(82 / 88)


# --- problems and counts ---

def test_unknown_ids_in_ground_truth_are_listed_counted_and_mapped_to_background(dirs):
    """Unknown ids in a ground-truth file: one problem naming the file and the values, one file counted;
    a prediction with unknown ids counts as another file; unknown pixels still go through the table."""
    gt, pred = dirs
    frame = FRAME_A.copy()
    frame[5, 0:3] = 7      # not Apollo ids: eval table -> background
    frame[5, 3] = 100
    _write(gt, "a_bin.png", frame)
    _write(pred, "a_bin.png", FRAME_A)
    _write(pred, "b_bin.png", FRAME_B)
    report = _score(pred, gt)
    assert report.counts["unknown_ids"] == 1
    [problem] = report.problems
    assert problem["file"] == str(gt / "a_bin.png")
    assert problem["reason"].startswith("unknown id(s) [7, 100] in ground truth")
    assert report.miou == 1.0
    assert report.results["per_class"][0]["gt_pixels"] == 32 + 24  # the 4 unknown pixels scored as background
    bad_pred = FRAME_B.copy()
    bad_pred[0, 0] = 9
    _write(pred, "b_bin.png", bad_pred)
    report = _score(pred, gt)
    assert report.counts["unknown_ids"] == 2
    assert sorted(p["file"] for p in report.problems) == [str(gt / "a_bin.png"), str(pred / "b_bin.png")]
    assert "2 files with unknown ids" in report.table()


def test_unreadable_prediction_is_scored_as_background_and_counted(dirs):
    """An unreadable prediction: the frame is still scored (as all background), counted once as unreadable."""
    gt, pred = dirs
    _write(pred, "a_bin.png", FRAME_A)
    (pred / "b_bin.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = _score(pred, gt)
    c = report.counts
    assert (c["gt_files"], c["scored"], c["unreadable_pred"], c["missing"], c["mismatched"]) == (2, 2, 1, 0, 0)
    assert (c["unreadable_gt"], c["extra"], c["unknown_ids"]) == (0, 0, 0)
    # by hand: A perfect (32 bg, 8 dividing, 8 guiding); B all background: 24 bg hits, 16 zebra misses
    expected = np.zeros((8, 8), np.int64)
    expected[0, 0], expected[1, 1], expected[2, 2], expected[5, 0] = 32 + 24, 8, 8, 16
    np.testing.assert_array_equal(report.confusion, expected)
    assert report.prediction_gaps() == {"missing": 0, "unreadable": 1, "wrong size": 0}
    [problem] = report.problems
    assert problem["file"] == str(pred / "b_bin.png") and "unreadable prediction" in problem["reason"]
    assert "2 scored (0 missing, 1 unreadable and 0 wrong-size" in report.table()


def test_duplicate_names_are_listed_with_both_paths_and_the_first_is_used(dirs):
    """Two ground truths and two predictions of one name: each pair is one problem naming both paths."""
    gt, pred = dirs
    _write(gt, "rec2/b_bin.png", FRAME_A)              # sorts after rec/b_bin.png
    _write(pred, "a_bin.png", FRAME_A)
    _write(pred, "x/b_bin.png", FRAME_B)
    _write(pred, "y/b_bin.png", np.zeros((H, W), np.uint8))
    report = _score(pred, gt)
    dups = {p["file"]: p["reason"] for p in report.problems}
    assert set(dups) == {str(gt / "rec/b_bin.png"), str(pred / "x/b_bin.png")}
    assert dups[str(gt / "rec/b_bin.png")] == (f"duplicate ground-truth name, also at {gt / 'rec2/b_bin.png'}; "
                                               "the first is used")
    assert dups[str(pred / "x/b_bin.png")] == (f"duplicate prediction name, also at {pred / 'y/b_bin.png'}; "
                                               "the first is used")
    assert report.miou == 1.0  # rec/b_bin.png scored against x/b_bin.png, both FRAME_B
    assert (report.counts["gt_files"], report.counts["scored"]) == (3, 2)


def test_report_files_and_table_say_what_was_scored(dirs, tmp_path):
    """scores.csv has one row per class and no index column, NaN spelled out; scores.json names
    the scheme and both folders; the table names the classes and the lane mean; a scheme may be
    given by name; nested output folders are created."""
    gt, _ = dirs
    out = tmp_path / "deep" / "out"
    report = score_folders(gt, gt, "apollo8", workers=2, progress=False, out_dir=out)
    lines = (out / "scores.csv").read_text().splitlines()
    assert lines[0].split(",")[0] == "name" and len(lines) == 1 + SCHEME.num_classes
    stopping = next(l for l in lines if l.startswith("stopping,"))
    assert stopping.split(",")[1] == "NaN"
    data = json.loads((out / "scores.json").read_text())
    assert (data["scheme"], data["pred_dir"], data["gt_dir"]) == ("apollo8", str(gt), str(gt))
    text = report.table()
    assert all(name in text for name in SCHEME.class_names) and "mIoU (lanes 1-7): 1.0000" in text
    report.write(out)  # a second write into the existing folder replaces the files
    assert sorted(p.name for p in out.iterdir()) == ["scores.csv", "scores.json"]


@pytest.mark.parametrize("n_missing, more_line", [(20, False), (21, True)])
def test_problem_list_is_cut_after_twenty(tmp_path, n_missing, more_line):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for i in range(n_missing):
        _write(gt, f"f{i:02d}_bin.png", FRAME_A)
    pred.mkdir()
    text = _score(pred, gt).table()
    shown = [l for l in text.splitlines() if "missing prediction; scored as all background" in l]
    assert len(shown) == 20
    assert ("... and 1 more problems (see scores.json)" in text) == more_line
