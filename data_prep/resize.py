"""Crop and resize primitives shared by the cache, the training data and inference,
so every path sees exactly the same geometry.

Geometry: the top `offset` rows are cut, then the remaining HxW area is resized to the
stage size. cv2.resize maps pixel centres ((x+0.5)*scale - 0.5), the same convention as
bilinear upsampling with align_corners=False, so down and back up stay aligned.
"""
from __future__ import annotations

import cv2
import numpy as np



def crop_top(array: np.ndarray, offset: int) -> np.ndarray:
    return array[offset:]


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area averaging when shrinking (no aliasing of thin lines), bilinear when enlarging."""
    w, h = size
    if (rgb.shape[1], rgb.shape[0]) == (w, h):
        return rgb
    shrink = w < rgb.shape[1] and h < rgb.shape[0]
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_label(train_ids: np.ndarray, size: tuple[int, int], num_classes: int,
                 mode: str = "vote") -> np.ndarray:
    """Resize a train-id map. 'vote': per-class area share, argmax (keeps thin lanes that
    nearest-neighbour drops); 'nearest': plain nearest neighbour. Ignore competes as a class."""
    w, h = size
    if (train_ids.shape[1], train_ids.shape[0]) == (w, h):
        return train_ids
    if mode == "nearest" or (w >= train_ids.shape[1] and h >= train_ids.shape[0]):
        return cv2.resize(train_ids, (w, h), interpolation=cv2.INTER_NEAREST)
    # per present value, its area share in each target pixel (INTER_AREA on a 0/255 mask);
    # the value with the largest share wins. Ignore competes like a class.
    present = np.flatnonzero(cv2.calcHist([train_ids], [0], None, [256], [0, 256]).ravel())
    best = np.full((h, w), -1, np.int16)
    out = np.zeros((h, w), np.uint8)
    for v in present:
        share = cv2.resize(cv2.compare(train_ids, int(v), cv2.CMP_EQ), (w, h), interpolation=cv2.INTER_AREA)
        win = share > best
        best[win] = share[win]
        out[win] = v
    return out


def argmax_full_size(probs: np.ndarray, offset: int, full_size: tuple[int, int]) -> np.ndarray:
    """CxHxW scores for the cropped area -> HxW train ids at full size; rows above the
    crop are background (0). Each class plane is upsampled bilinearly and a running max keeps
    the winner (ties go to the lower class, as argmax), so no CxHxW full-size array is built."""
    full_w, full_h = full_size
    size = (full_w, full_h - offset)
    out = np.zeros((full_h, full_w), np.uint8)
    ids = out[offset:]
    best = cv2.resize(np.ascontiguousarray(probs[0], dtype=np.float32), size, interpolation=cv2.INTER_LINEAR)
    for c in range(1, probs.shape[0]):
        plane = cv2.resize(np.ascontiguousarray(probs[c], dtype=np.float32), size, interpolation=cv2.INTER_LINEAR)
        wins = cv2.compare(plane, best, cv2.CMP_GT)  # strict: ties keep the lower class, like argmax
        ids[wins > 0] = c
        cv2.max(best, plane, dst=best)
    return out
