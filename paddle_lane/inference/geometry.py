"""The model-free halves of prediction, shared by every backend: a full frame -> the uint8
crops and normalized inputs a model takes (exactly as in training), CxHxW probabilities ->
full-size train ids / Apollo ids (bilinear up, argmax, decode), and the window and ensemble
weight arithmetic. No Paddle here: an exported model served by onnxruntime uses the same code.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from paddle_lane.core.label_io import decode_image
from paddle_lane.core.labels import Scheme
from paddle_lane.core.resize import argmax_full_size, crop_top, resize_image
from paddle_lane.data.transforms import normalize
from paddle_lane.prepare.cache import best_reduce

Size = tuple[int, int]  # (width, height)
InputKey = tuple[Size, tuple, tuple]  # (size, mean, std): one normalized input tensor


# ----------------------------------------------------------------------------- geometry
def scaled_size(size: Size, scale: float) -> Size:
    """The input size a TTA scale runs at: round(w*s) x round(h*s)."""
    return max(1, int(round(size[0] * scale))), max(1, int(round(size[1] * scale)))


def scale_weights(scales: Sequence[float]) -> list[float]:
    """The weight of each scale in multi-scale TTA: the plain mean, each scale once."""
    if not scales:
        raise ValueError("TTA needs at least one scale")
    return [1.0 / len(scales)] * len(scales)


def inputs_from_array(rgb_full: np.ndarray, sizes: Sequence[Size], offset: int) -> list[np.ndarray]:
    """uint8 RGB crops at each size from a decoded full frame (load_resized with reduce 1)."""
    _check_height(rgb_full.shape[0], offset, "<array>")
    crop = crop_top(rgb_full, offset)
    return [resize_image(crop, size) for size in sizes]


def inputs_from_file(path: str, sizes: Sequence[Size], offset: int, full_size: Size) -> list[np.ndarray]:
    """uint8 RGB crops at each size, decoded as paddle_lane.prepare.cache.load_resized does (same
    reduced JPEG decode per size), but decoding once per distinct reduction."""
    _check_height(full_size[1], offset, path)
    return inputs_from_bytes(np.fromfile(str(path), dtype=np.uint8), sizes, offset, full_size, path)


def inputs_from_bytes(data, sizes: Sequence[Size], offset: int, full_size: Size,
                      source: str = "<bytes>") -> list[np.ndarray]:
    """inputs_from_file for an encoded image in memory (an upload): the same decode, the same crops."""
    _check_height(full_size[1], offset, source)
    crops: dict[int, np.ndarray] = {}
    out = []
    for size in sizes:
        reduce = best_reduce(full_size, offset, size)
        if reduce not in crops:
            crops[reduce] = crop_top(decode_image(data, reduce, source), offset // reduce)
        out.append(resize_image(crops[reduce], size))
    return out


def _check_height(height: int, offset: int, source: str) -> None:
    if height <= offset:
        raise ValueError(f"{source}: image height {height} is not above data.crop_offset {offset}")


def probs_to_train_ids(probs: np.ndarray, offset: int, full_size: Size) -> np.ndarray:
    """CxHxW probabilities of the cropped area -> HxW train ids at full size (bilinear up, argmax)."""
    return argmax_full_size(probs, offset, full_size)


def probs_to_ids(probs: np.ndarray, offset: int, full_size: Size, scheme: Scheme) -> np.ndarray:
    """CxHxW probabilities -> HxW uint8 Apollo ids at full size: what a submission holds."""
    return scheme.decode(probs_to_train_ids(probs, offset, full_size))


def normalized_inputs(crops: Sequence[np.ndarray], sizes: Sequence[Size],
                      keys: Sequence[InputKey]) -> list[np.ndarray]:
    """One float32 3xHxW input per (size, mean, std) key, from uint8 crops at `sizes`."""
    return [normalize(crops[sizes.index(size)], mean, std) for size, mean, std in keys]


def window_starts(total: int, window: int, stride: int) -> list[int]:
    """Offsets of sliding windows covering [0, total): regular steps plus one flush with the end."""
    if total <= window:
        return [0]
    starts = list(range(0, total - window + 1, stride))
    if starts[-1] != total - window:
        starts.append(total - window)
    return starts


def normalize_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Ensemble weights scaled to sum 1 (equal when None)."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"ensemble weights: {len(weights)} weight(s) for {n} model(s)")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"ensemble weights must be >= 0 with a positive sum, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]
