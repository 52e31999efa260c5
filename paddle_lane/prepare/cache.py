"""Cropped and resized copies of frames at the training stage sizes, so training reads
small files. A cache folder is keyed by content: the crop offset, the size, the train-id
table itself (so editing a scheme file or the ignore policy makes a new cache), the label
resize rule and its version, and the image encoding; reused when present; each file
written atomically."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from paddle_lane.core.io_utils import atomic_write_jpeg, atomic_write_json, atomic_write_png, atomic_write_text
from paddle_lane.core.label_io import read_image, read_label
from paddle_lane.core.labels import Scheme, apply_lut
from paddle_lane.core.resize import LABEL_RESIZE_VERSION, crop_top, resize_image, resize_label

JPEG_QUALITY = 95
KEY_FILE = "cache_key.json"


def cache_key(offset: int, size: tuple[int, int], train_lut: np.ndarray, label_resize: str) -> dict:
    """Everything a cached file depends on, with a short hash of it."""
    lut = np.asarray(train_lut, np.uint8)
    key = {"offset": int(offset), "size": [int(size[0]), int(size[1])],
           "train_lut_sha1": hashlib.sha1(lut.tobytes()).hexdigest(),
           "label_resize": label_resize, "label_resize_version": LABEL_RESIZE_VERSION,
           "jpeg_quality": JPEG_QUALITY}
    key["hash"] = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return key


def cache_dir(lists_dir: str | os.PathLike, offset: int, size: tuple[int, int], scheme: Scheme,
              ignore_policy: str, label_resize: str) -> Path:
    """<lists_dir>/cache/off<offset>_<w>x<h>_<scheme>_<policy>_<rule>_<content hash>: readable
    names, but only the hash decides reuse (a stale folder with the same words is not reused)."""
    w, h = size
    key = cache_key(offset, size, scheme.train_lut(ignore_policy), label_resize)
    return Path(lists_dir) / "cache" / f"off{offset}_{w}x{h}_{scheme.name}_{ignore_policy}_{label_resize}_{key['hash']}"


def write_cache_key(folder: Path, offset: int, size: tuple[int, int], scheme: Scheme, ignore_policy: str,
                    label_resize: str) -> None:
    """Record what the folder's files were made from, for a person looking at the cache."""
    if (folder / KEY_FILE).exists():
        return
    key = cache_key(offset, size, scheme.train_lut(ignore_policy), label_resize)
    atomic_write_json(folder / KEY_FILE, {**key, "scheme": scheme.name, "ignore_policy": ignore_policy})


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


def load_resized(image: str, label: str | None, train_lut, offset: int,
                 size: tuple[int, int], label_resize: str, full_size: tuple[int, int]):
    """(rgb, train_ids or None) cropped and resized from the full-size files."""
    reduce = best_reduce(full_size, offset, size)
    rgb = read_image(image, reduce=reduce)
    rgb = resize_image(crop_top(rgb, offset // reduce), size)
    if label is None:
        return rgb, None
    train_ids = apply_lut(crop_top(read_label(label), offset), train_lut)
    return rgb, resize_label(train_ids, size, label_resize)


def source_stamp(image: str, label: str | None) -> str:
    """Size and modification time of a frame's source files: a changed source, a changed stamp."""
    parts = []
    for p in (image, label):
        if p:
            st = os.stat(p)
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return " ".join(parts)


def build_entry(args) -> dict:
    """Worker: write one frame's cached image and label unless both exist and were made from
    the same source files (size and mtime); an entry whose source changed is rebuilt."""
    key, image, label, folder, scheme, train_lut, offset, size, label_resize, full_size = args
    img_path, lab_path = cached_paths(Path(folder), key)
    stamp_path = Path(folder) / f"{key}.src"
    try:
        stamp = source_stamp(image, label)
    except OSError as exc:
        return {"key": key, "image": image, "status": "error", "error": str(exc)}
    complete = img_path.exists() and lab_path.exists()
    existed = img_path.exists() or lab_path.exists() or stamp_path.exists()  # a whole or partial entry
    if complete and stamp_path.exists() and stamp_path.read_text() == stamp:
        return {"key": key, "status": "reused"}
    try:
        rgb, train_ids = load_resized(image, label, train_lut, offset, size, label_resize, full_size)
    except (ValueError, OSError) as exc:  # unreadable or mismatched frame: reported, not fatal
        return {"key": key, "image": image, "status": "error", "error": str(exc)}
    atomic_write_jpeg(img_path, rgb, JPEG_QUALITY)
    atomic_write_png(lab_path, train_ids)
    atomic_write_text(stamp_path, stamp)  # last: an entry without its stamp is rebuilt
    return {"key": key, "status": "rebuilt" if existed else "written"}
