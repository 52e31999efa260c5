"""Alignment: a perfect model's probabilities (image half) and a model reproducing its training
labels exactly (label half), sent through each stage size and back through inference's own
post-processing, score near 1 and are best with no shift at all (the winners needed a 4-pixel
shift). Every check runs on the real frames (../shared/apollo_dev, skipped when absent) and on
a synthetic full-size twin that runs everywhere."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pandas as pd
import paddle
import pytest

from conftest import ROOT, real_data_or_skip
from paddle_lane.config import load_config
from paddle_lane.core.label_io import read_label
from paddle_lane.core.labels import apply_lut, load_scheme
from paddle_lane.core.resize import crop_top
from paddle_lane.inference.alignment import (format_table, labels_to_ids, perfect_probs, resolution_ceiling, round_trip,
                                         score_shifts)
from paddle_lane.inference.predictor import Predictor

SIZES = [(768, 256), (1024, 384), (1536, 512)]
OFFSET = 690
SHIFTS = range(-4, 5)
SOURCES = ["real", "synthetic"]
# Image half, mIoU 8 classes. Real: measured on 6 frames (every 5th of the 30): 0.8942, 0.9362,
# 0.9634 (lower than the full set: 'stopping' has only ~5k pixels there); all 30: 0.9525, 0.9706,
# 0.9830 (the DESIGN target >= 0.98 at 1536x512 is the slow test). Synthetic (8 frames): 0.974-0.993.
IMAGE_FLOOR = {"real": {(768, 256): 0.884, (1024, 384): 0.926, (1536, 512): 0.953},
               "synthetic": {(768, 256): 0.96, (1024, 384): 0.97, (1536, 512): 0.98}}
# Label half: real 6 frames 0.8283, 0.8771, 0.9017 (all 30: README); synthetic 0.8996 .. 0.9401.
LABEL_FLOOR = {"real": {(768, 256): 0.82, (1024, 384): 0.87, (1536, 512): 0.895},
               "synthetic": {(768, 256): 0.88, (1024, 384): 0.90, (1536, 512): 0.92}}
FULL_SET_TARGET = 0.98
DECODE = np.array([0, 204, 203, 217, 210, 214, 224, 227], np.uint8)  # apollo8 submit ids, from DESIGN.md


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """Eight synthetic frames at the competition's full size, in its folder layout."""
    from paddle_lane.prepare.synth import make_dataset
    root = tmp_path_factory.mktemp("synth_full")
    make_dataset(root, roads=("Road02",), records_per_road=2, frames_per_record=2, width=3384, height=1710, seed=11)
    return root


def label_paths(source: str, synthetic_root, step: int = 1) -> list[str]:
    if source == "synthetic":
        return sorted(str(p) for p in (synthetic_root / "Gray_Label").rglob("*.png"))
    root = real_data_or_skip()
    return [str(root / p) for p in pd.read_csv(root / "pairs.csv")["label"]][::step]


@pytest.fixture(scope="module", params=SOURCES)
def ceilings(request, synthetic_root):
    """Area (our inference) at every stage size, plus nearest both ways (the winners) at 1536x512."""
    labels = label_paths(request.param, synthetic_root, step=5)
    results = [resolution_ceiling(labels, size, OFFSET, SHIFTS) for size in SIZES]
    results.append(resolution_ceiling(labels, SIZES[-1], OFFSET, SHIFTS, mode="nearest"))
    print("\n" + format_table(results))
    return request.param, len(labels), {(tuple(r["size"]), r["mode"]): r for r in results}


@pytest.mark.parametrize("size", SIZES)
def test_ceiling_and_no_shift_needed(ceilings, size):
    source, n, by = ceilings
    r = by[(size, "area")]
    assert r["frames"] == n == (6 if source == "real" else 8)
    assert r["miou"] >= IMAGE_FLOOR[source][size], r["miou"]
    assert (r["best_dx"], r["best_dy"]) == (0, 0), (r["shift_x"], r["shift_y"])
    # a one-pixel shift must cost clearly, or the check could not see a misalignment
    assert r["shift_x"][0]["miou"] - max(r["shift_x"][-1]["miou"], r["shift_x"][1]["miou"]) > 0.01
    assert r["shift_y"][0]["miou"] - max(r["shift_y"][-1]["miou"], r["shift_y"][1]["miou"]) > 0.01


def test_nearest_both_ways_is_worse_and_misaligned(ceilings):
    _, _, by = ceilings
    area, nearest = by[((1536, 512), "area")], by[((1536, 512), "nearest")]
    assert nearest["miou"] < area["miou"] - 0.05
    assert (nearest["best_dx"], nearest["best_dy"]) != (0, 0)


def _bilinear(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reference bilinear resize with pixel-centre alignment (align_corners=False), float64:
    source coordinate (x + 0.5) * in / out - 0.5, clamped at the borders."""
    def axis(n_in, n_out):
        c = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(c).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, c - lo
    y0, y1, wy = axis(plane.shape[0], size[1])
    x0, x1, wx = axis(plane.shape[1], size[0])
    rows = plane[y0] * (1 - wy)[:, None] + plane[y1] * wy[:, None]
    return rows[:, x0] * (1 - wx) + rows[:, x1] * wx


@pytest.mark.parametrize("source", SOURCES)
def test_post_processing_equals_an_independent_upsampling(source, synthetic_root):
    """What the Predictor writes for perfect probabilities equals a numpy bilinear upsampling,
    argmax and the competition's decode table written here (no shared code on the way up)."""
    path = label_paths(source, synthetic_root)[0]
    scheme = load_scheme("apollo8")
    train = apply_lut(read_label(path), scheme.train_lut("background"))
    full = (train.shape[1], train.shape[0])
    cfg = load_config(ROOT / "configs" / "_base_" / "datasets" / "apollo8.yml")
    predictor = Predictor(cfg, models=[(paddle.nn.Conv2D(3, 8, 1), SIZES[0])])
    probs = perfect_probs(crop_top(train, OFFSET), SIZES[0], scheme.num_classes)
    written = predictor.scheme.decode(predictor.to_train_ids(probs, full))
    up = np.stack([_bilinear(p.astype(np.float64), (full[0], full[1] - OFFSET)) for p in probs])
    expected = np.zeros(train.shape, np.uint8)
    expected[OFFSET:] = DECODE[up.argmax(axis=0)]
    # float32 (cv2) and float64 (here) may break exact ties differently: allow 1 in 10^4 pixels
    assert (written != expected).mean() < 1e-4
    assert (round_trip(train, SIZES[0], OFFSET, scheme, "area") == written).all()


@pytest.mark.slow
def test_full_set_ceiling_meets_the_design_target(synthetic_root):
    r = resolution_ceiling(label_paths("real", synthetic_root), SIZES[-1], OFFSET, shifts=[0])
    assert r["frames"] == 30 and r["miou"] >= FULL_SET_TARGET, r["miou"]


# ----------------------------------------------------------------------------- the label half
@pytest.fixture(scope="module", params=SOURCES)
def prepared(request, synthetic_root, tmp_path_factory):
    """Frames through `prepare --cache` with the shipped recipe's stage sizes and defaults."""
    from paddle_lane.prepare.pipeline import prepare
    root = real_data_or_skip() if request.param == "real" else synthetic_root
    out = tmp_path_factory.mktemp(f"prepare_{request.param}")
    cfg = load_config(ROOT / "configs" / "deeplabv3p_r50vd-os8_2xb8-3x16k_apollo8-768x256-1536x512.yml",
                      [f"data.lists_dir={out}", "prepare.cache=true"])
    prepare(root, out, cfg, workers=2)
    rows = pd.concat([pd.read_csv(out / "train.csv"), pd.read_csv(out / "val.csv")]).sort_values("key")
    return request.param, cfg, rows.iloc[::5] if request.param == "real" else rows


def _label_frames(source, rows, scheme):
    """(full-size ids of a model reproducing the training label exactly, ground-truth ids) per frame."""
    for r in rows.itertuples():
        full = (int(r.width), int(r.height))
        _, stage_label = source.load(r.key, r.image, r.label, full)
        yield labels_to_ids(stage_label, OFFSET, full, scheme), read_label(r.label)


@pytest.mark.parametrize("size", SIZES)
def test_training_labels_are_aligned_cached_and_on_the_fly(prepared, size):
    """The labels training reads (from prepare's cache, and made on the fly) need no shift either."""
    from paddle_lane.data.transforms import FrameSource
    name, cfg, rows = prepared
    scheme = load_scheme(cfg.data.scheme)
    cached = FrameSource.from_config(cfg, size)
    assert cached.cache_folder is not None and cfg.data.label_resize == "nearest"
    on_the_fly = dataclasses.replace(cached, cache_folder=None)
    for r in rows.itertuples():
        full = (int(r.width), int(r.height))
        np.testing.assert_array_equal(cached.load(r.key, r.image, r.label, full)[1],
                                      on_the_fly.load(r.key, r.image, r.label, full)[1])
    res = score_shifts(_label_frames(cached, rows, scheme), scheme, range(-3, 4))
    assert res["frames"] == len(rows) == (6 if name == "real" else 8)
    assert (res["best_dx"], res["best_dy"]) == (0, 0), (res["shift_x"], res["shift_y"])
    assert res["miou"] >= LABEL_FLOOR[name][size], res["miou"]


def test_the_check_sees_top_left_label_sampling(prepared):
    """The old rule (cv2.INTER_NEAREST, top-left of each block) is caught: best shift is not 0."""
    _, cfg, rows = prepared
    scheme = load_scheme(cfg.data.scheme)
    lut = scheme.train_lut(cfg.data.ignore_policy)

    def frames():
        for r in rows.itertuples():
            ids = read_label(r.label)
            small = cv2.resize(crop_top(apply_lut(ids, lut), OFFSET), SIZES[0], interpolation=cv2.INTER_NEAREST)
            yield labels_to_ids(small, OFFSET, (ids.shape[1], ids.shape[0]), scheme), ids

    res = score_shifts(frames(), scheme, range(-3, 4))
    assert res["best_dx"] < 0 and res["best_dy"] < 0, (res["best_dx"], res["best_dy"])
