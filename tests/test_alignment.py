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


# ----------------------------------------------------------------------------- the label half
# Measured on these 6 frames (every 5th): 0.8283, 0.8771, 0.9017; all 30: see README.
LABEL_FLOOR = {(768, 256): 0.82, (1024, 384): 0.87, (1536, 512): 0.895}


@pytest.fixture(scope="module")
def real_prepared(tmp_path_factory):
    """The real frames through `prepare --cache` with the shipped recipe's stage sizes and defaults."""
    from data_prep.prepare import prepare
    root = real_data_or_skip()
    out = tmp_path_factory.mktemp("real_prepare")
    cfg = load_config(ROOT / "configs" / "deeplabv3p_r50vd-os8_2xb8-3x16k_apollo8-768x256-1536x512.yml",
                      [f"data.lists_dir={out}", "prepare.cache=true"])
    prepare(root, out, cfg, workers=2)
    rows = pd.concat([pd.read_csv(out / "train.csv"), pd.read_csv(out / "val.csv")]).sort_values("key")
    return cfg, rows.iloc[::5]


def _label_frames(source, rows, scheme):
    """(full-size ids of a model reproducing the training label exactly, ground-truth ids) per frame."""
    from paddle_lane.infer.alignment import labels_to_ids
    for r in rows.itertuples():
        full = (int(r.width), int(r.height))
        _, stage_label = source.load(r.key, r.image, r.label, full)
        yield labels_to_ids(stage_label, OFFSET, full, scheme), read_label(r.label)


@pytest.mark.parametrize("size", SIZES)
def test_training_labels_are_aligned_cached_and_on_the_fly(real_prepared, size):
    """The labels training reads (from prepare's cache, and made on the fly) need no shift either."""
    import dataclasses
    from paddle_lane.data.transforms import FrameSource
    from paddle_lane.infer.alignment import score_shifts
    cfg, rows = real_prepared
    scheme = load_scheme(cfg.data.scheme)
    cached = FrameSource.from_config(cfg, size)
    assert cached.cache_folder is not None and cfg.data.label_resize == "nearest"
    on_the_fly = dataclasses.replace(cached, cache_folder=None)
    for r in rows.itertuples():
        full = (int(r.width), int(r.height))
        np.testing.assert_array_equal(cached.load(r.key, r.image, r.label, full)[1],
                                      on_the_fly.load(r.key, r.image, r.label, full)[1])
    res = score_shifts(_label_frames(cached, rows, scheme), scheme, range(-3, 4))
    assert res["frames"] == len(rows) == 6
    assert (res["best_dx"], res["best_dy"]) == (0, 0), (res["shift_x"], res["shift_y"])
    assert res["miou"] >= LABEL_FLOOR[size], res["miou"]


def test_the_check_sees_top_left_label_sampling(real_prepared):
    """The old rule (cv2.INTER_NEAREST, top-left of each block) is caught: best shift is not 0."""
    import cv2
    from paddle_lane.infer.alignment import labels_to_ids, score_shifts
    cfg, rows = real_prepared
    scheme = load_scheme(cfg.data.scheme)
    lut = scheme.train_lut(cfg.data.ignore_policy)

    def frames():
        for r in rows.itertuples():
            ids = read_label(r.label)
            small = cv2.resize(crop_top(apply_lut(ids, lut), OFFSET), SIZES[0], interpolation=cv2.INTER_NEAREST)
            yield labels_to_ids(small, OFFSET, (ids.shape[1], ids.shape[0]), scheme), ids

    res = score_shifts(frames(), scheme, range(-3, 4))
    assert res["best_dx"] < 0 and res["best_dy"] < 0, (res["best_dx"], res["best_dy"])
