"""SegMetric against confusion matrices computed by hand on tiny arrays, and the packed and
fast counting paths at their limits against a reference count."""
import json
import math

import numpy as np
import pytest

from paddle_lane.core.metrics import (SegMetric, iou_parts, mean_iou, metric_to_jsonable, packed_confusion,
                                      pair_code_lut)

NAMES = ["bg", "lane_a", "lane_b"]
I = 255  # ignore

# gt: class 0 on the left half, class 1 top-right, ignore bottom-right. Class 2 never in gt.
GT = np.array([[0, 0, 1, 1],
               [0, 0, 1, 1],
               [0, 0, I, I],
               [0, 0, I, I]], np.uint8)
PRED = np.array([[0, 1, 1, 1],
                 [0, 0, 1, 0],
                 [0, 2, 2, 2],   # the two 2s under ignore do not count
                 [0, 0, 1, 1]], np.uint8)
# rows = gt, cols = pred, counted by hand from the arrays above
CONFUSION = np.array([[6, 1, 1],
                      [1, 3, 0],
                      [0, 0, 0]])


def _metric(**kw) -> SegMetric:
    m = SegMetric(3, NAMES, **kw)
    m.update(PRED, GT)
    return m


def test_confusion_matches_hand_count_and_skips_ignore():
    m = _metric()
    assert m.confusion.dtype == np.int64
    np.testing.assert_array_equal(m.confusion, CONFUSION)


def test_scores_match_hand_computation():
    r = _metric().compute()
    bg, a, b = r["per_class"]
    assert bg["iou"] == pytest.approx(6 / 9) and a["iou"] == pytest.approx(3 / 5)
    assert bg["precision"] == pytest.approx(6 / 7) and bg["recall"] == pytest.approx(6 / 8)
    assert bg["f1"] == pytest.approx(0.8) and a["f1"] == pytest.approx(0.75)
    assert (bg["gt_pixels"], bg["pred_pixels"], a["gt_pixels"], a["pred_pixels"]) == (8, 7, 4, 4)
    assert r["pixel_accuracy"] == pytest.approx(9 / 12)
    assert r["miou"] == pytest.approx((6 / 9 + 3 / 5 + 0) / 3)
    assert r["miou_lanes"] == pytest.approx((3 / 5 + 0) / 2)


def test_false_positives_only_class_scores_zero_and_counts_in_means():
    b = _metric().compute()["per_class"][2]
    assert b["status"] == "false positives only"
    assert b["iou"] == 0.0 and b["precision"] == 0.0 and b["f1"] == 0.0
    assert math.isnan(b["recall"])


def test_absent_class_is_nan_and_excluded_from_means():
    m = SegMetric(3, NAMES)
    m.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 1]]))  # class 2 nowhere
    r = m.compute()
    b = r["per_class"][2]
    assert b["status"] == "absent" and math.isnan(b["iou"])
    assert all(math.isnan(b[k]) for k in ("precision", "recall", "f1"))
    assert r["absent_classes"] == ["lane_b"]
    assert r["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r["miou_lanes"] == pytest.approx(2 / 3)
    assert "absent" in r["policy"] and "excluded" in r["policy"]


def test_all_absent_gives_nan_means():
    m = SegMetric(3, NAMES)
    m.update(np.zeros((2, 2), np.uint8), np.full((2, 2), I, np.uint8))  # everything ignored
    r = m.compute()
    assert math.isnan(r["miou"]) and math.isnan(r["miou_lanes"]) and math.isnan(r["pixel_accuracy"])
    assert r["absent_classes"] == NAMES


def test_merge_equals_updating_with_both_batches():
    rng = np.random.default_rng(0)
    a = (rng.integers(0, 3, (2, 4, 4)), rng.integers(0, 3, (2, 4, 4)))
    b = (rng.integers(0, 3, (4, 4)), np.where(rng.random((4, 4)) < 0.3, I, rng.integers(0, 3, (4, 4))))
    both = SegMetric(3)
    both.update(*a)
    both.update(*b)
    first, second = SegMetric(3), SegMetric(3)
    first.update(*a)
    second.update(*b)
    first.merge(second.confusion)
    np.testing.assert_array_equal(first.confusion, both.confusion)


def test_negative_ignore_index_gives_the_same_confusion():
    gt = np.where(GT == I, -1, GT.astype(np.int16))
    m = SegMetric(3, ignore_index=-1)
    m.update(PRED, gt)
    np.testing.assert_array_equal(m.confusion, CONFUSION)


@pytest.mark.parametrize("value", [3, 7, -1])
def test_out_of_range_pred_raises_naming_the_value(value):
    pred = PRED.astype(np.int64)
    pred[0, 0] = value
    with pytest.raises(ValueError, match=rf"pred holds value\(s\) \[{value}\]"):
        SegMetric(3).update(pred, GT)


def test_out_of_range_gt_raises_and_bad_input_is_refused():
    gt = GT.copy()
    gt[0, 0] = 9
    with pytest.raises(ValueError, match=r"gt holds value\(s\) \[9\]"):
        SegMetric(3).update(PRED, gt)
    with pytest.raises(ValueError, match="shape"):
        SegMetric(3).update(PRED, GT[:2])
    with pytest.raises(TypeError, match="integer"):
        SegMetric(3).update(PRED.astype(float), GT)
    with pytest.raises(ValueError, match="shape"):
        SegMetric(3).merge(np.zeros((2, 2), np.int64))


def test_reset_and_lane_classes_option():
    m = _metric(lane_classes=[1])
    assert m.compute()["miou_lanes"] == pytest.approx(3 / 5)
    m.reset()
    assert m.confusion.sum() == 0


def test_table_and_json_state_the_policy():
    m = SegMetric(3, NAMES)
    m.update(np.array([[0, 1]]), np.array([[0, 1]]))
    text = m.table()
    for needle in ("IoU", "GT pixels", "mIoU (3 classes): 1.0000", "mIoU (lanes 1-2): 1.0000",
                   "absent classes: lane_b", "policy:", "n/a"):
        assert needle in text
    data = json.loads(json.dumps(metric_to_jsonable(m.compute()), allow_nan=False))
    assert data["per_class"][2]["iou"] is None and data["miou"] == 1.0


def _codes(gt: np.ndarray, n: int = 3) -> np.ndarray:
    """Ground-truth codes for packed_confusion: class c -> c*n, ignore -> 255."""
    return pair_code_lut(np.arange(256), n)[gt]


def test_packed_confusion_matches_hand_count():
    np.testing.assert_array_equal(packed_confusion(PRED, _codes(GT), 3), CONFUSION)


def test_packed_confusion_refuses_predictions_outside_the_classes():
    """Without the check, pred 3 on gt 0 would count as (gt 1, pred 0) and pred 7 as (gt 2, pred 1)."""
    pred = PRED.copy()
    pred[0, 0], pred[1, 1] = 3, 7
    with pytest.raises(ValueError, match=r"pred holds value\(s\) \[3, 7\] outside \[0, 3\)"):
        packed_confusion(pred, _codes(GT), 3)
    with pytest.raises(TypeError, match="uint8"):
        packed_confusion(PRED.astype(np.int32), _codes(GT), 3)
    with pytest.raises(ValueError, match="shape"):
        packed_confusion(PRED[:2], _codes(GT), 3)


def _count_pairs(gt: np.ndarray, pred: np.ndarray, n: int, ignore: int) -> np.ndarray:
    """Reference confusion: one boolean count per (gt, pred) pair, ignore pixels skipped."""
    out = np.zeros((n, n), np.int64)
    for g in range(n):
        on_g = gt == g
        for p in range(n):
            out[g, p] = np.count_nonzero(on_g & (pred == p))
    assert out.sum() == np.count_nonzero(gt != ignore)
    return out


def test_packed_confusion_is_exact_on_frames_of_2_24_pixels_and_more():
    """Above 2**24 pixels (4097x4097) the counts stay exact: float32 histogram bins would round an odd count."""
    side = 4097
    gt = np.zeros((side, side), np.uint8)
    pred = np.zeros((side, side), np.uint8)
    gt[0, :4], pred[0, :2] = 1, 1          # lane_a: 2 hits, 2 missed as bg
    gt[1, :3], pred[1, 0] = 2, 1           # lane_b: 1 as lane_a, 2 as bg
    gt[2, :2], pred[2, :2] = I, 2          # ignored
    pred[3, :5] = 2                        # bg: 5 called lane_b
    expected = np.zeros((3, 3), np.int64)
    expected[1, 1], expected[1, 0], expected[2, 1], expected[2, 0], expected[0, 2] = 2, 2, 1, 2, 5
    expected[0, 0] = side * side - 14      # 16785395: odd and above 2**24, not a float32 value
    assert expected[0, 0] > 1 << 24 and expected[0, 0] % 2 == 1
    np.testing.assert_array_equal(_count_pairs(gt, pred, 3, I), expected)
    got = packed_confusion(pred, _codes(gt), 3)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_pair_code_lut_packs_up_to_15_classes():
    """15 classes: class c -> 15*c (at most 210), anything else -> 255; 16 classes do not fit a byte."""
    train_lut = np.full(256, 255, np.uint8)
    train_lut[:15] = np.arange(15)
    train_lut[20] = 15  # not a class of 15: ignored like 255
    codes = pair_code_lut(train_lut, 15)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes[:15], [0, 15, 30, 45, 60, 75, 90, 105, 120, 135, 150, 165, 180, 195, 210])
    assert (codes[15:] == 255).all()
    with pytest.raises(ValueError, match="up to 15 classes, got 16"):
        pair_code_lut(np.arange(256), 16)


@pytest.mark.parametrize("n, ignore", [(3, 21844), (3, 21845), (8, 8191), (8, 8192)])
def test_joint_counts_fast_path_boundary(n, ignore):
    """gt values up to (2**16)//n - 1 take the uint16 bincount, from (2**16)//n the masked one; both count
    exactly (at the boundary the uint16 code gt*n + pred would wrap into a real class's row)."""
    assert ignore in ((1 << 16) // n - 1, (1 << 16) // n)
    rng = np.random.default_rng(ignore)
    gt = rng.integers(0, n, (9, 11)).astype(np.int32)
    gt[rng.random((9, 11)) < 0.4] = ignore
    pred = rng.integers(0, n, (9, 11)).astype(np.uint8)
    pred[gt == ignore] = n - 1  # the largest code under ignore: wraps first
    m = SegMetric(n, ignore_index=ignore)
    m.update(pred, gt)
    np.testing.assert_array_equal(m.confusion, _count_pairs(gt, pred, n, ignore))


# ----------------------------------------------------------------------------- edges and limits
def test_packed_confusion_refuses_the_first_value_past_the_classes():
    pred = PRED.copy()
    pred[0, 0] = 3  # exactly num_classes
    with pytest.raises(ValueError, match=r"pred holds value\(s\) \[3\] outside \[0, 3\)"):
        packed_confusion(pred, _codes(GT), 3)


def test_lane_classes_are_checked_and_named_in_the_table():
    with pytest.raises(ValueError, match=r"lane_classes \[3\] outside \[0, 3\)"):
        SegMetric(3, lane_classes=[1, 3])
    with pytest.raises(ValueError, match=r"lane_classes \[-1\]"):
        SegMetric(3, lane_classes=[-1])
    m = SegMetric(4, lane_classes=[0])
    m.update(np.array([[0, 1]]), np.array([[0, 1]]))
    assert m.compute()["miou_lanes"] == 1.0 and "mIoU (lanes 0): 1.0000" in m.table()
    spread = SegMetric(6, lane_classes=[1, 3, 5])
    spread.update(np.array([[1, 3, 5]]), np.array([[1, 3, 5]]))
    assert "mIoU (lanes 1,3,5): 1.0000" in spread.table()
    assert "mIoU (lanes 1-5): " in SegMetric(6).table()


def test_no_warning_and_nan_where_nothing_was_counted():
    """Empty denominators give NaN quietly: no divide-by-zero or empty-mean warning."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = SegMetric(3).compute()
        partly = _metric().compute()
    assert math.isnan(empty["miou"]) and math.isnan(empty["pixel_accuracy"]) and math.isnan(empty["miou_lanes"])
    assert partly["per_class"][2]["precision"] == 0.0 and math.isnan(partly["per_class"][2]["recall"])


def test_single_pixel_counts():
    """One scored pixel: pixel accuracy 1, its class present (not 'false positives only')."""
    m = SegMetric(3)
    m.update(np.array([[1]]), np.array([[1]]))
    r = m.compute()
    assert r["pixel_accuracy"] == 1.0
    assert [c["status"] for c in r["per_class"]] == ["absent", "present", "absent"]
    assert r["scored_pixels"] == 1 and "equal to 255 are excluded" in r["policy"]


def test_class_count_and_ignore_index_rules():
    assert SegMetric(1).num_classes == 1
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        SegMetric(0)
    with pytest.raises(ValueError, match="ignore_index 0 collides"):
        SegMetric(3, ignore_index=0)
    with pytest.raises(ValueError, match="ignore_index 2 collides"):
        SegMetric(3, ignore_index=2)
    assert SegMetric(3, ignore_index=3).ignore_index == 3


def test_empty_and_uint64_inputs():
    m = SegMetric(3)
    m.update(np.zeros((0, 4), np.uint8), np.zeros((0, 4), np.uint8))
    assert m.confusion.sum() == 0
    m.update(PRED.astype(np.uint64), GT)
    np.testing.assert_array_equal(m.confusion, CONFUSION)
    with pytest.raises(TypeError, match="pred must hold integer train ids"):
        m.update(PRED.astype(np.float32), GT)
    with pytest.raises(TypeError, match="gt must hold integer train ids"):
        m.update(PRED, GT.astype(np.float32))


def test_out_of_range_ground_truth_messages_on_both_counting_paths():
    fast = GT.copy()
    fast[0, 0] = 9
    with pytest.raises(ValueError) as err:
        SegMetric(3).update(PRED, fast)
    assert str(err.value) == "gt holds value(s) [9] outside [0, 3) and != ignore_index 255"
    # values past the fast path's 16-bit codes take the general path, with the same rule
    slow = np.array([[0, 3, 70000]], np.int64)
    with pytest.raises(ValueError) as err:
        SegMetric(3, ignore_index=70000).update(np.array([[0, 1, 2]]), slow)
    assert str(err.value) == "gt holds value(s) [3] outside [0, 3) and != ignore_index 70000"
    with pytest.raises(ValueError, match=r"gt holds value\(s\) \[90000\]"):
        SegMetric(3, ignore_index=70000).update(np.array([[0, 1]]), np.array([[0, 90000]], np.int64))
    ok = SegMetric(3, ignore_index=70000)
    ok.update(np.array([[0, 1, 2]]), np.array([[0, 1, 70000]], np.int64))
    np.testing.assert_array_equal(ok.confusion, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_table_of_given_results_and_its_layout():
    m = _metric()
    other = SegMetric(3, NAMES)
    other.update(np.array([[1]]), np.array([[1]]))
    text = m.table(other.compute())
    assert "mIoU (3 classes): 1.0000" in text  # the given results, not the metric's own
    head = m.table().splitlines()[0]
    assert head == f"{'class':<12} {'IoU':>7} {'prec':>7} {'recall':>7} {'F1':>7} {'GT pixels':>13} {'pred pixels':>13}  status"


def test_metric_to_jsonable_converts_numpy_and_non_finite():
    got = metric_to_jsonable({"a": np.array([1.5, np.nan]), "b": np.float32(2.5), "c": np.int64(3),
                              4: (math.inf, "x")})
    assert got == {"a": [1.5, None], "b": 2.5, "c": 3, "4": [None, "x"]}
    assert type(got["c"]) is int and type(got["b"]) is float


def test_iou_parts_and_means_by_hand():
    conf = np.array([[50, 10, 0],
                     [5, 20, 0],
                     [0, 0, 0]])                         # class 2 absent on both sides
    p = iou_parts(conf)
    np.testing.assert_allclose(p["iou"][:2], [50 / 65, 20 / 35])
    assert np.isnan(p["iou"][2]) and np.isnan(p["precision"][2]) and np.isnan(p["recall"][2])
    assert np.isnan(p["f1"][2])
    np.testing.assert_allclose(p["precision"][:2], [50 / 55, 20 / 30])
    np.testing.assert_allclose(p["recall"][:2], [50 / 60, 20 / 25])
    np.testing.assert_allclose(p["f1"][:2], [100 / 115, 40 / 55])
    np.testing.assert_array_equal(p["gt_pixels"], [60, 25, 0])
    np.testing.assert_array_equal(p["pred_pixels"], [55, 30, 0])
    assert mean_iou(p["iou"]) == pytest.approx((50 / 65 + 20 / 35) / 2)
    assert mean_iou(p["iou"], [1, 2]) == pytest.approx(20 / 35)
    assert np.isnan(mean_iou(p["iou"], [2]))
    stacked = iou_parts(np.stack([conf, np.eye(3, dtype=int) * 4]))
    np.testing.assert_allclose(stacked["iou"][1], [1, 1, 1])
    np.testing.assert_allclose(stacked["iou"][0, :2], [50 / 65, 20 / 35])
    np.testing.assert_allclose(mean_iou(stacked["iou"]), [(50 / 65 + 20 / 35) / 2, 1.0])
