"""The shared geometry: full-size argmax equals bilinear upsampling of every class plane
followed by argmax (ties to the lower class), with background above the crop."""
from __future__ import annotations

import cv2
import numpy as np

from data_prep.resize import argmax_full_size


def _reference(probs: np.ndarray, offset: int, full_size: tuple[int, int]) -> np.ndarray:
    w, h = full_size
    planes = np.stack([cv2.resize(p, (w, h - offset), interpolation=cv2.INTER_LINEAR) for p in probs])
    out = np.zeros((h, w), np.uint8)
    out[offset:] = planes.argmax(axis=0)
    return out


def test_argmax_full_size_matches_upsample_then_argmax():
    probs = np.random.default_rng(0).random((8, 24, 72), dtype=np.float32)
    np.testing.assert_array_equal(argmax_full_size(probs, 17, (211, 93)), _reference(probs, 17, (211, 93)))


def test_argmax_full_size_ties_go_to_the_lower_class():
    probs = np.zeros((8, 6, 12), np.float32)
    probs[3] = probs[5] = 1.0
    out = argmax_full_size(probs, 4, (40, 20))
    assert (out[:4] == 0).all() and (out[4:] == 3).all()
