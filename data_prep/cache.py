"""Cropped and resized copies of frames at the training stage sizes, so training reads
small files. Keyed by crop offset, size, scheme, ignore policy and label resizing;
reused when present; each file written atomically."""
from __future__ import annotations

import os
from pathlib import Path

from data_prep.label_io import read_image, read_label
from data_prep.labels import Scheme, apply_lut
from data_prep.resize import crop_top, resize_image, resize_label
from data_prep.io_utils import atomic_write_jpeg, atomic_write_png

JPEG_QUALITY = 95


def cache_dir(lists_dir: str | os.PathLike, offset: int, size: tuple[int, int], scheme: str,
              ignore_policy: str, label_resize: str) -> Path:
    w, h = size
    return Path(lists_dir) / "cache" / f"off{offset}_{w}x{h}_{scheme}_{ignore_policy}_{label_resize}"


def cached_paths(folder: Path, key: str) -> tuple[Path, Path]:
    return folder / f"{key}.jpg", folder / f"{key}_label.png"


def best_reduce(full_size: tuple[int, int], offset: int, size: tuple[int, int]) -> int:
    """Largest JPEG decode reduction (1, 2, 4, 8) that divides the crop offset (the crop stays
    on the exact same row) and covers the target size within 1 % (3384x1020 halves to
    1692x510, which serves 1536x512 with a 0.4 % vertical stretch instead of a full decode)."""
    fw, fh = full_size
    for r in (8, 4, 2):
        if offset % r == 0 and fw // r >= 0.99 * size[0] and (fh - offset) // r >= 0.99 * size[1]:
            return r
    return 1


def load_resized(image: str, label: str | None, scheme: Scheme, train_lut, offset: int,
                 size: tuple[int, int], label_resize: str, full_size: tuple[int, int]):
    """(rgb, train_ids or None) cropped and resized from the full-size files."""
    reduce = best_reduce(full_size, offset, size)
    rgb = read_image(image, reduce=reduce)
    rgb = resize_image(crop_top(rgb, offset // reduce), size)
    if label is None:
        return rgb, None
    train_ids = apply_lut(crop_top(read_label(label), offset), train_lut)
    return rgb, resize_label(train_ids, size, scheme.num_classes, label_resize)


def build_entry(args) -> dict:
    """Worker: write one frame's cached image and label unless both exist."""
    key, image, label, folder, scheme, train_lut, offset, size, label_resize, full_size = args
    img_path, lab_path = cached_paths(Path(folder), key)
    if img_path.exists() and lab_path.exists():
        return {"key": key, "status": "reused"}
    try:
        rgb, train_ids = load_resized(image, label, scheme, train_lut, offset, size, label_resize, full_size)
    except ValueError as exc:
        return {"key": key, "status": "error", "error": str(exc)}
    atomic_write_jpeg(img_path, rgb, JPEG_QUALITY)
    atomic_write_png(lab_path, train_ids)
    return {"key": key, "status": "written"}
