"""Folder scoring on tiny synthetic Apollo-id PNGs, and on the real dev pairs when present."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.labels import load_scheme
from paddle_lane.errors import UserError
from paddle_lane.scorer import score_folders

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
    from paddle_lane.scorer import frame_confusion
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
    from paddle_lane.scorer import frame_confusion
    gt_lut = np.zeros(256, np.uint8)
    pred = np.zeros((4, 5), np.uint8)
    pred[0, 0], pred[3, 4] = n, n + 3
    with pytest.raises(ValueError, match=rf"pred holds value\(s\) \[{n}, {n + 3}\] outside \[0, {n}\)"):
        frame_confusion(pred, np.zeros((4, 5), np.uint8), gt_lut, n)
