"""Coloured overlays of train-id masks on images, for VisualDL, --overlay and video."""
from __future__ import annotations

import cv2
import numpy as np

from paddle_lane.core.labels import IGNORE_INDEX


def colorize(train_ids: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """HxW train ids -> HxWx3 RGB via the scheme palette (one table lookup)."""
    return palette[train_ids]


def overlay(rgb: np.ndarray, train_ids: np.ndarray, palette: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend class colours over the image where the class is not background or ignore."""
    if train_ids.shape != rgb.shape[:2]:
        train_ids = cv2.resize(train_ids, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
    color = colorize(train_ids, palette)
    mask = ((train_ids > 0) & (train_ids != IGNORE_INDEX))[..., None]
    blended = (rgb.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha).astype(np.uint8)
    return np.where(mask, blended, rgb)


def comparison_strip(rgb: np.ndarray, gt: np.ndarray | None, pred: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Image | ground-truth overlay | prediction overlay, stacked vertically."""
    rows = [rgb]
    if gt is not None:
        rows.append(overlay(rgb, gt, palette))
    rows.append(overlay(rgb, pred, palette))
    return np.concatenate(rows, axis=0)
