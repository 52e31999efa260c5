"""Sampler, dataset and transforms: exact batch counts, resumable order, rank split,
deterministic augmentation, and the preprocessing inference shares with training."""
from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import ROOT
from paddle_lane.config import AugmentConfig, load_config
from paddle_lane.data.dataset import LaneDataset, StageBatchSampler, rare_class_weights, read_list
from paddle_lane.data.transforms import FrameSource, augment, denormalize, normalize


def test_sampler_yields_exactly_the_stage_batches():
    s = StageBatchSampler(10, 4, total_batches=7, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 7
    assert all(len(b) == 4 for b in batches)
    epochs = [g // 10 for b in batches for g in b]
    assert epochs == sorted(epochs) and max(epochs) == 3  # 2 full batches per epoch of 10


def test_sampler_resume_is_the_tail_of_the_full_run():
    full = list(StageBatchSampler(13, 3, total_batches=11, seed=5))
    assert list(StageBatchSampler(13, 3, total_batches=11, seed=5, start_batch=6)) == full[6:]
    assert list(StageBatchSampler(13, 3, total_batches=11, seed=6)) != full


def test_ranks_split_each_epoch_without_overlap():
    r0 = StageBatchSampler(12, 2, total_batches=3, rank=0, world_size=2, seed=0)
    r1 = StageBatchSampler(12, 2, total_batches=3, rank=1, world_size=2, seed=0)
    a = {g for b in r0 for g in b}
    b = {g for b in r1 for g in b}
    assert not a & b and len(a | b) == 12


def test_oversampling_weights_are_honoured():
    w = np.array([1.0, 0.0, 0.0, 1.0])
    drawn = {g % 4 for b in StageBatchSampler(4, 2, total_batches=50, weights=w, seed=0) for g in b}
    assert drawn == {0, 3}
    df = pd.DataFrame({"px_background": [9, 9, 9], "px_a": [5, 0, 5], "px_b": [0, 1, 0], "px_c": [7, 7, 0]})
    weights = rare_class_weights(df, ["background", "a", "b", "c"], 2.0)
    assert weights.tolist() == [1.0, 3.0, 1.0]  # only frame 1 holds the rarest class b


def test_normalize_round_trip_and_layout():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x = normalize(rgb, mean, std)
    assert x.shape == (3, 5, 7) and x.dtype == np.float32
    ref = ((rgb.astype(np.float64) / 255 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(x, ref, atol=1e-5)
    np.testing.assert_array_equal(denormalize(x, mean, std), rgb)


def test_augment_is_deterministic_and_consistent():
    rng = np.random.default_rng
    rgb = np.random.default_rng(1).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    lab = np.zeros((32, 64), np.uint8)
    lab[:, :10] = 3
    aug = AugmentConfig(hflip=1.0, scale=[0.8, 1.2], color_jitter=0.2, blur=0.5, noise=0.02, cutout=1.0)
    a1 = augment(rgb, lab, aug, rng(7))
    a2 = augment(rgb, lab, aug, rng(7))
    np.testing.assert_array_equal(a1[0], a2[0])
    np.testing.assert_array_equal(a1[1], a2[1])
    assert a1[0].shape == rgb.shape and a1[1].shape == lab.shape
    assert (a1[1] == 255).any()  # cutout (and padding when shrunk) marks ignore
    flipped = augment(rgb, lab, AugmentConfig(hflip=1.0), rng(0))[1]
    assert (flipped[:, -10:] == 3).all() and (flipped[:, :-10] == 0).all()


def test_dataset_epochs_draw_different_augmentations(prepared_synth):
    _, lists = prepared_synth
    cfg = load_config(ROOT / "configs" / "demo_tiny.yml", [f"data.lists_dir={lists}", "data.crop_offset=76", "data.frame_height=192"])
    df = read_list(lists / "train.csv")
    ds = LaneDataset(df, FrameSource.from_config(cfg, (96, 32)), cfg.data.mean, cfg.data.std,
                     AugmentConfig(color_jitter=0.3), seed=0)
    n = len(ds)
    same = [np.array_equal(ds[0][0], ds[0][0]), np.array_equal(ds[0][0], ds[n][0])]
    assert same == [True, False]  # same id -> same sample; next epoch -> new draw
    image, label = ds[1]
    assert image.shape == (3, 32, 96) and image.dtype == np.float32
    assert label.shape == (32, 96) and label.dtype == np.uint8


def test_read_list_empty_is_an_error_unless_allowed(tmp_path):
    import pytest
    path = tmp_path / "val.csv"
    path.write_text("image,label,key\n")
    with pytest.raises(ValueError, match=r"list is empty: .*val.csv"):
        read_list(path)
    assert read_list(path, allow_empty=True).empty
    path.write_text("")
    assert read_list(path, allow_empty=True).empty
