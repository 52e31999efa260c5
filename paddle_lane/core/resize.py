"""Crop and resize primitives shared by the cache, the training data and inference,
so every path sees exactly the same geometry.

Geometry: the top `offset` rows are cut, then the remaining HxW area is resized to the
stage size. cv2.resize maps pixel centres ((x+0.5)*scale - 0.5), the same convention as
bilinear upsampling with align_corners=False, so down and back up stay aligned.
"""
from __future__ import annotations

import cv2
import numpy as np

FULL_SIZE = (3384, 1710)  # the competition frame (w, h); lists record each frame's own size
CROP_OFFSET = 690         # rows of sky and far road cut from the top of a FULL_SIZE frame


def crop_top(array: np.ndarray, offset: int) -> np.ndarray:
    return array[offset:]


def crop_rows(offset: int, frame_height: int, height: int) -> int:
    """Rows to cut from a frame `height` rows tall when the crop is `offset` rows of
    `frame_height`-row frames: the crop follows the frame (690 of 1710 is 345 of 855)."""
    if height == frame_height:
        return offset
    return int(round(offset * height / frame_height))


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area averaging when shrinking (no aliasing of thin lines), bilinear when enlarging."""
    w, h = size
    if (rgb.shape[1], rgb.shape[0]) == (w, h):
        return rgb
    shrink = w < rgb.shape[1] and h < rgb.shape[0]
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


# Label resize rules; both sample around pixel centres, like the image path (INTER_AREA /
# INTER_LINEAR). cv2.INTER_NEAREST samples the top-left of each source block instead, which put
# training labels ~2 full-size pixels off their images (768x256: -2.2 px in x, -1.5 px in y).
LABEL_RESIZE_RULES = ("vote", "nearest")
# Bump when a rule's output changes: the resized cache is keyed on it and rebuilt.
LABEL_RESIZE_VERSION = 2


def resize_label(train_ids: np.ndarray, size: tuple[int, int], mode: str = "vote") -> np.ndarray:
    """Resize a train-id map around pixel centres.

    'vote': each target pixel takes the value with the largest area share of its source block
    (INTER_AREA on one 0/255 mask per present value; ties go to the lower value; ignore competes
    like a class). 'nearest': the source pixel under each target pixel's centre
    (cv2.INTER_NEAREST_EXACT). Enlarging uses 'nearest' in both modes."""
    if mode not in LABEL_RESIZE_RULES:
        raise ValueError(f"label resize rule must be one of {list(LABEL_RESIZE_RULES)}, got {mode!r}")
    w, h = size
    if (train_ids.shape[1], train_ids.shape[0]) == (w, h):
        return train_ids
    if mode == "nearest" or w >= train_ids.shape[1] or h >= train_ids.shape[0]:
        return cv2.resize(train_ids, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
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
