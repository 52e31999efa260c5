"""The alignment check's parts on tiny hand-made frames, against values worked out by hand:
shift geometry, the leaderboard-style shift scoring (ignored ids, ties), the round trips of each
mode and the printed table. Fast (the mutation-testing selection of the alignment module); the
full-size real/synthetic checks live in test_alignment.py."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from paddle_lane.core.labels import load_scheme
from paddle_lane.inference import alignment as al

SCHEME = load_scheme("apollo8")
SUBMIT = np.array([0, 204, 203, 217, 210, 214, 224, 227], np.uint8)  # apollo8 train id -> Apollo id, by hand


def stripe(h: int, w: int, x0: int, width: int, value: int = 204) -> np.ndarray:
    out = np.zeros((h, w), np.uint8)
    out[:, x0:x0 + width] = value
    return out


# ----------------------------------------------------------------------------- geometry
def test_shifted_moves_right_and_down_and_keeps_the_interior():
    pred = np.arange(7 * 8).reshape(7, 8)
    np.testing.assert_array_equal(al.shifted(pred, 0, 0, 2), pred[2:5, 2:6])
    # moved right by 1: each output pixel comes from one column to the left
    np.testing.assert_array_equal(al.shifted(pred, 1, 0, 2), pred[2:5, 1:5])
    np.testing.assert_array_equal(al.shifted(pred, -2, 0, 2), pred[2:5, 4:8])
    np.testing.assert_array_equal(al.shifted(pred, 0, 2, 2), pred[0:3, 2:6])
    np.testing.assert_array_equal(al.shifted(pred, 0, -1, 2), pred[3:6, 2:6])


def test_interior():
    a = np.arange(5 * 6).reshape(5, 6)
    np.testing.assert_array_equal(al._interior(a, 1), a[1:4, 1:5])
    np.testing.assert_array_equal(al._interior(a, 2), a[2:3, 2:4])
    assert al._interior(a, 0) is a


def test_perfect_probs_are_block_means_and_one_hot_skips_ignore():
    crop = np.array([[0, 1, 2, 2],
                     [1, 1, 2, 0],
                     [3, 3, 0, 0],
                     [3, 255, 0, 0]], np.uint8)
    probs = al.perfect_probs(crop, (2, 2), 4)
    assert probs.shape == (4, 2, 2) and probs.dtype == np.float32
    expected = np.zeros((4, 2, 2), np.float32)
    expected[0] = [[0.25, 0.25], [0.0, 1.0]]
    expected[1] = [[0.75, 0.0], [0.0, 0.0]]
    expected[2] = [[0.0, 0.75], [0.0, 0.0]]
    expected[3] = [[0.0, 0.0], [0.75, 0.0]]
    np.testing.assert_allclose(probs, expected)
    oh = al.one_hot(crop, 4)
    assert oh.shape == (4, 4, 4)
    assert oh.sum() == 15 and oh[:, 3, 1].sum() == 0  # the 255 pixel has no plane
    np.testing.assert_array_equal(oh[3], (crop == 3).astype(np.float32))


# ----------------------------------------------------------------------------- scoring
def test_score_shifts_finds_a_two_pixel_shift_with_hand_computed_scores():
    gt = stripe(20, 30, 10, 3)                 # dividing at columns 10-12
    pred = stripe(20, 30, 12, 3)               # predicted 2 px to the right
    r = al.score_shifts([(pred, gt)], SCHEME)
    assert r["frames"] == 1
    # whole frame: dividing 20/100, background 500/580 (unions of the column sets, 20 rows)
    assert r["miou"] == pytest.approx((0.2 + 500 / 580) / 2)
    assert r["miou_lanes"] == pytest.approx(0.2)
    assert r["per_class"][1]["gt_pixels"] == 60 and r["per_class"][1]["pred_pixels"] == 60
    # interior (margin 4): 12 rows x 22 columns
    assert r["shift_x"][0]["miou"] == pytest.approx((0.2 + 17 / 21) / 2)
    assert r["shift_x"][-1]["miou"] == pytest.approx((0.5 + 18 / 20) / 2)
    assert r["shift_x"][-2]["miou"] == pytest.approx(1.0)
    assert r["shift_x"][2]["miou_lanes"] == pytest.approx(0.0)
    assert r["best_dx"] == -2
    # a full-height stripe looks the same at every vertical shift: the tie goes to 0
    assert r["best_dy"] == 0
    assert all(v["miou"] == pytest.approx(r["shift_x"][0]["miou"]) for v in r["shift_y"].values())
    assert sorted(r["shift_x"]) == list(range(-4, 5)) == sorted(r["shift_y"])


def test_score_shifts_vertical_ignored_ids_and_several_frames():
    gt = np.zeros((24, 16), np.uint8)
    gt[10:13] = 204                            # a horizontal band at rows 10-12
    gt[0:4, 0:4] = 213                         # ignore_in_eval: never scored
    pred = np.zeros_like(gt)
    pred[9:12] = 204                           # one row too high
    pred[1:3, 1:3] = 204                       # on the ignored pixels (at every shift): no false positive
    r = al.score_shifts([(pred, gt), (gt * 0, gt * 0)], SCHEME, shifts=[-1, 1])
    assert r["frames"] == 2
    assert r["per_class"][1]["pred_pixels"] == 48 and r["per_class"][1]["gt_pixels"] == 48
    assert r["per_class"][0]["gt_pixels"] == 2 * 24 * 16 - 48 - 16
    assert r["best_dy"] == 1 and r["best_dx"] == 0
    assert r["shift_y"][1]["miou"] == pytest.approx(1.0)
    assert sorted(r["shift_y"]) == [-1, 0, 1]


def test_ties_go_to_the_smaller_shift():
    gt = stripe(12, 12, 5, 1)
    pred = np.zeros_like(gt)                   # misses the stripe at every shift
    r = al.score_shifts([(pred, gt)], SCHEME, shifts=[-2, -1, 1, 2])
    assert r["best_dx"] == 0 and r["best_dy"] == 0


# ----------------------------------------------------------------------------- round trips
def blocks(h: int, w: int, offset: int) -> np.ndarray:
    """Train ids constant on 2x2 blocks below the offset (exactly representable at half size)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 8, size=((h - offset) // 2, w // 2)).astype(np.uint8)
    full = np.zeros((h, w), np.uint8)
    full[offset:] = np.kron(small, np.ones((2, 2), np.uint8))
    full[:offset] = 5                          # above the crop: predicted as background
    return full


@pytest.mark.parametrize("mode", al.MODES)
def test_round_trip_of_block_labels_is_exact_in_every_mode(mode):
    offset, h, w = 4, 16, 12
    train = blocks(h, w, offset)
    ids = al.round_trip(train, (w // 2, (h - offset) // 2), offset, SCHEME, mode)
    expected = SUBMIT[train]
    expected[:offset] = 0
    assert ids.shape == (h, w) and ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, expected)


def test_round_trip_of_a_thin_line_differs_by_mode():
    offset, h, w = 2, 10, 8
    train = np.zeros((h, w), np.uint8)
    train[offset:, 3] = 1                      # a 1-px vertical line at an odd column
    size = (w // 2, (h - offset) // 2)
    # area: the line is half of column pair 2-3: probability 0.5 ties with background, argmax keeps 0
    assert (al.round_trip(train, size, offset, SCHEME, "area") == 0).all()
    # nearest both ways (top-left sampling) keeps even columns only: the line vanishes too
    assert (al.round_trip(train, size, offset, SCHEME, "nearest") == 0).all()
    train[offset:, 2] = 1                      # now columns 2-3: one whole block column
    for mode in al.MODES:
        got = al.round_trip(train, size, offset, SCHEME, mode)
        np.testing.assert_array_equal(got[offset:, 2:4], 204, err_msg=mode)
        assert (got[:, :2] == 0).all() and (got[:, 4:] == 0).all(), mode


def test_labels_to_ids_upsamples_one_hot_labels():
    stage = np.array([[0, 6], [1, 255]], np.uint8)
    ids = al.labels_to_ids(stage, 2, (4, 6), SCHEME)
    # bilinear x2 (source coordinate = out/2 - 0.25, clamped): the 255 cell has no plane, so its
    # pixels take what its neighbours' planes reach; the (0.1875, 0.1875) tie at its corner goes
    # to the lower class (dividing), its far corner stays background
    expected = np.array([[0, 0, 0, 0],
                         [0, 0, 0, 0],
                         [0, 0, 224, 224],
                         [0, 0, 224, 224],
                         [204, 204, 204, 224],
                         [204, 204, 204, 0]], np.uint8)
    np.testing.assert_array_equal(ids, expected)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be one of .*'bilinear'"):
        al.round_trip(np.zeros((4, 4), np.uint8), (2, 2), 0, SCHEME, "bilinear")
    with pytest.raises(ValueError, match="mode must be one of .*'label-bogus'"):
        al.resolution_ceiling([], (2, 2), 0, mode="label-bogus")


# ----------------------------------------------------------------------------- ceiling and CLI
def label_files(tmp_path, n=2):
    paths = []
    for i in range(n):
        ids = np.zeros((12, 16), np.uint8)
        ids[4:, 4 + 2 * i:8 + 2 * i] = 204
        ids[8:, 12:] = 224
        ids[4:6, 0:2] = 213                    # ignored in evaluation
        p = tmp_path / f"l{i}_bin.png"
        Image.fromarray(ids).save(p)
        paths.append(str(p))
    return paths


def test_resolution_ceiling_is_perfect_at_the_crop_size_and_names_its_inputs(tmp_path):
    paths = label_files(tmp_path)
    r = al.resolution_ceiling(paths, (16, 8), offset=4, shifts=[-1, 1], mode="area", scheme=SCHEME)
    assert (r["size"], r["mode"], r["offset"], r["frames"]) == ([16, 8], "area", 4, 2)
    assert r["miou"] == pytest.approx(1.0) and r["best_dx"] == 0 and r["best_dy"] == 0
    assert r["per_class"][1]["gt_pixels"] == 2 * 32 and r["per_class"][6]["gt_pixels"] == 2 * 16
    # at half width a 4-px stripe at an even column still survives exactly
    r2 = al.resolution_ceiling(paths, (8, 4), offset=4, shifts=[-1, 1], mode="label-nearest", scheme="apollo8")
    assert r2["miou"] == pytest.approx(1.0)


def test_format_table_and_main(tmp_path, capsys):
    res = {"size": [8, 4], "mode": "area", "miou": 0.5, "miou_lanes": 0.25, "best_dx": -1, "best_dy": 2,
           "shift_x": {-1: {"miou": 0.5}, 1: {"miou": 0.125}}, "shift_y": {1: {"miou": 1.0}, -1: {"miou": 0.0}}}
    assert al.format_table([res]).splitlines() == [
        "      size           mode  mIoU(8) mIoU(1-7) best dx best dy",
        "    8x4              area   0.5000    0.2500      -1       2",
        "",
        "mIoU (8 classes) of the interior by shift (px):",
        "8x4           area dx: -1:0.5000 +1:0.1250",
        "8x4           area dy: -1:0.0000 +1:1.0000",
    ]
    assert al._parse_size("768X256") == (768, 256)
    paths = label_files(tmp_path, 3)
    pd.DataFrame({"image": ["x"] * 3, "label": [p.split("/")[-1] for p in paths]}).to_csv(
        tmp_path / "pairs.csv", index=False)
    assert al.main(["--data", str(tmp_path), "--sizes", "16x8,8x4", "--modes", "area,nearest",
                    "--offset", "4", "--frames", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["16x8", "area", "1.0000", "1.0000", "0", "0"]
    assert [l.split()[:2] for l in lines[1:5]] == [["16x8", "area"], ["16x8", "nearest"], ["8x4", "area"],
                                                   ["8x4", "nearest"]]
