"""Alignment on real labels: a perfect model's probabilities, area-averaged to each stage
size and brought back through inference's own post-processing, score near 1 and are best
with no shift at all (the winners needed a 4-pixel shift). Skips without ../shared/apollo_dev."""
from __future__ import annotations

import numpy as np
import pandas as pd
import paddle
import pytest

from conftest import ROOT, real_data_or_skip
from data_prep.label_io import read_label
from data_prep.labels import apply_lut, load_scheme
from data_prep.resize import crop_top
from paddle_lane.config import load_config
from paddle_lane.infer.alignment import format_table, perfect_probs, resolution_ceiling, round_trip
from paddle_lane.infer.predictor import Predictor

SIZES = [(768, 256), (1024, 384), (1536, 512)]
OFFSET = 690
SHIFTS = range(-4, 5)
# Measured on the 6 frames below (every 5th of the 30), mIoU 8 classes: 0.8942, 0.9362, 0.9634.
# The subset is lower than the full set because 'stopping' has only ~5k pixels there (IoU 0.63-0.86).
# On all 30 frames: 0.9525, 0.9706, 0.9830; the DESIGN target (>= 0.98 at 1536x512) is the slow test.
SUBSET_FLOOR = {(768, 256): 0.884, (1024, 384): 0.926, (1536, 512): 0.953}
FULL_SET_TARGET = 0.98


def label_paths(step: int = 1) -> list[str]:
    root = real_data_or_skip()
    return [str(root / p) for p in pd.read_csv(root / "pairs.csv")["label"]][::step]


@pytest.fixture(scope="module")
def ceilings():
    """Area (our inference) at every stage size, plus nearest both ways (the winners) at 1536x512."""
    labels = label_paths(step=5)
    results = [resolution_ceiling(labels, size, OFFSET, SHIFTS) for size in SIZES]
    results.append(resolution_ceiling(labels, SIZES[-1], OFFSET, SHIFTS, mode="nearest"))
    print("\n" + format_table(results))
    return {(tuple(r["size"]), r["mode"]): r for r in results}


@pytest.mark.parametrize("size", SIZES)
def test_ceiling_and_no_shift_needed(ceilings, size):
    r = ceilings[(size, "area")]
    assert r["frames"] == 6
    assert r["miou"] >= SUBSET_FLOOR[size], r["miou"]
    assert (r["best_dx"], r["best_dy"]) == (0, 0), (r["shift_x"], r["shift_y"])
    # a one-pixel shift must cost clearly, or the check could not see a misalignment
    assert r["shift_x"][0]["miou"] - max(r["shift_x"][-1]["miou"], r["shift_x"][1]["miou"]) > 0.01
    assert r["shift_y"][0]["miou"] - max(r["shift_y"][-1]["miou"], r["shift_y"][1]["miou"]) > 0.01


def test_nearest_both_ways_is_worse_and_misaligned(ceilings):
    area, nearest = ceilings[((1536, 512), "area")], ceilings[((1536, 512), "nearest")]
    assert nearest["miou"] < area["miou"] - 0.05
    assert (nearest["best_dx"], nearest["best_dy"]) != (0, 0)


def test_ceiling_uses_the_predictor_post_processing():
    """round_trip('area') is exactly what the Predictor writes for those probabilities."""
    path = label_paths()[0]
    scheme = load_scheme("apollo8")
    train = apply_lut(read_label(path), scheme.train_lut("background"))
    cfg = load_config(ROOT / "configs" / "_base_" / "datasets" / "apollo8.yml")
    predictor = Predictor(cfg, models=[(paddle.nn.Conv2D(3, 8, 1), SIZES[0])])
    probs = perfect_probs(crop_top(train, OFFSET), SIZES[0], scheme.num_classes)
    written = predictor.scheme.decode(predictor.to_train_ids(probs, (train.shape[1], train.shape[0])))
    np.testing.assert_array_equal(round_trip(train, SIZES[0], OFFSET, scheme, "area"), written)


@pytest.mark.slow
def test_full_set_ceiling_meets_the_design_target():
    r = resolution_ceiling(label_paths(), SIZES[-1], OFFSET, shifts=[0])
    assert r["frames"] == 30 and r["miou"] >= FULL_SET_TARGET, r["miou"]
