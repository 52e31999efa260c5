"""The stage-size cache in-process and fast (the mutation-testing selection of paddle_lane.prepare.cache):
its key recipe, folder names, decode reduction at its boundaries, the cached pixels against a
reference decode written here, and every entry state."""
from __future__ import annotations

import hashlib
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from paddle_lane.core.labels import load_scheme
from paddle_lane.core.resize import LABEL_RESIZE_VERSION
from paddle_lane.prepare import cache

SCHEME = load_scheme("apollo8")
LUT = SCHEME.train_lut("background")


def recipe_hash(fields: dict) -> str:
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def test_cache_key_fields_and_hash_recipe():
    key = cache.cache_key(690, (768, 256), LUT, "nearest")
    fields = {"offset": 690, "size": [768, 256], "train_lut_sha1": hashlib.sha1(LUT.astype(np.uint8).tobytes()).hexdigest(),
              "label_resize": "nearest", "label_resize_version": LABEL_RESIZE_VERSION, "jpeg_quality": 95}
    assert key == {**fields, "hash": recipe_hash(fields)}
    # the table's values decide, not the container it comes in
    assert cache.cache_key(690, (768, 256), [int(v) for v in LUT], "nearest") == key
    assert cache.cache_key(690, (256, 768), LUT, "nearest")["hash"] != key["hash"]


def test_cache_dir_name_carries_the_content_hash(tmp_path):
    for rule in ("nearest", "vote"):
        folder = cache.cache_dir(tmp_path, 690, (768, 256), SCHEME, "ignore", rule)
        want = recipe_hash({k: v for k, v in cache.cache_key(690, (768, 256), SCHEME.train_lut("ignore"), rule).items()
                            if k != "hash"})
        assert folder == tmp_path / "cache" / f"off690_768x256_apollo8_ignore_{rule}_{want}"
    assert (cache.cache_dir(tmp_path, 690, (768, 256), SCHEME, "background", "vote").name.rsplit("_", 1)[1]
            != cache.cache_dir(tmp_path, 690, (768, 256), SCHEME, "background", "nearest").name.rsplit("_", 1)[1])


def test_write_cache_key_records_its_inputs_once(tmp_path):
    cache.write_cache_key(tmp_path, 690, (768, 256), SCHEME, "background", "vote")
    written = json.loads((tmp_path / cache.KEY_FILE).read_text())
    assert written == {**cache.cache_key(690, (768, 256), LUT, "vote"), "scheme": "apollo8",
                       "ignore_policy": "background"}
    cache.write_cache_key(tmp_path, 0, (8, 8), SCHEME, "ignore", "nearest")  # present: kept as it is
    assert json.loads((tmp_path / cache.KEY_FILE).read_text()) == written


@pytest.mark.parametrize("full, offset, size, reduce", [
    ((3391, 1000), 0, (428, 100), 4),     # 3391 // 8 = 423 < 0.99 * 428 = 423.72 (423.875 before flooring)
    ((792, 1000), 0, (100, 100), 8),      # 792 // 8 = 99 = 0.99 * 100: enough
    ((800, 3391), 0, (100, 428), 4),      # the same boundaries on the height
    ((800, 792), 0, (100, 100), 8),
    ((800, 808), 16, (100, 100), 8),      # rows below the offset: (808 - 16) // 8 = 99
    ((800, 1000), 4, (100, 100), 4),      # 4 % 8 != 0
    ((100, 100), 0, (100, 100), 1),
])
def test_best_reduce_boundaries(full, offset, size, reduce):
    assert cache.best_reduce(full, offset, size) == reduce


def write_frame(tmp_path, w=848, h=430):
    rng = np.random.default_rng(7)
    rgb = cv2.resize(rng.integers(0, 256, (h // 10, w // 10, 3)).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    img = tmp_path / "f.jpg"
    Image.fromarray(rgb).save(img, quality=95)
    ids = np.zeros((h, w), np.uint8)
    ids[200:, 100:140] = 200                   # dividing (train id 1)
    ids[300:, 400:500] = 214                   # zebra (5)
    ids[:10] = 210                             # above the crop: never reaches the cache
    lab = tmp_path / "f_bin.png"
    Image.fromarray(ids).save(lab)
    return str(img), str(lab), ids


def test_load_resized_pixels_against_a_reference_decode(tmp_path):
    img, lab, ids = write_frame(tmp_path)
    offset, size = 172, (212, 64)             # reduce 4: 848 / 4 = 212, (430 - 172) // 4 = 64
    assert cache.best_reduce((848, 430), offset, size) == 4
    rgb, train = cache.load_resized(img, lab, LUT, offset, size, "nearest", (848, 430))
    with Image.open(img) as im:
        im.draft("RGB", (212, 107))
        quarter = np.asarray(im.convert("RGB"))
    assert quarter.shape[:2] == (108, 212)
    # 212x65 after the crop of 172 / 4 rows: the width is kept, so the 65 -> 64 rows are bilinear
    np.testing.assert_array_equal(rgb, cv2.resize(quarter[43:], size, interpolation=cv2.INTER_LINEAR))
    train_full = np.zeros_like(ids)
    train_full[ids == 200] = 1
    train_full[ids == 214] = 5
    train_full[ids == 210] = 4
    want = cv2.resize(train_full[offset:], size, interpolation=cv2.INTER_NEAREST_EXACT)
    assert train.dtype == np.uint8 and (train == 4).sum() == 0
    np.testing.assert_array_equal(train, want)
    only_rgb, none = cache.load_resized(img, None, LUT, offset, size, "vote", (848, 430))
    assert none is None
    np.testing.assert_array_equal(only_rgb, rgb)


def test_build_entry_every_state(tmp_path):
    img, lab, _ = write_frame(tmp_path)
    folder = tmp_path / "cache"
    folder.mkdir()
    job = ("k", img, lab, str(folder), SCHEME, LUT, 172, (212, 64), "nearest", (848, 430))
    img_path, lab_path = cache.cached_paths(folder, "k")
    stamp = folder / "k.src"
    assert cache.build_entry(job) == {"key": "k", "status": "written"}
    st_i, st_l = os.stat(img), os.stat(lab)
    assert stamp.read_text() == f"{st_i.st_size}:{st_i.st_mtime_ns} {st_l.st_size}:{st_l.st_mtime_ns}"
    rgb, train = cache.load_resized(img, lab, LUT, 172, (212, 64), "nearest", (848, 430))
    np.testing.assert_array_equal(np.asarray(Image.open(lab_path)), train)
    assert Image.open(img_path).size == (212, 64)
    assert cache.build_entry(job) == {"key": "k", "status": "reused"}
    # each partial entry (one file or only the stamp left) is rebuilt, not reused or reported new
    for keep in (img_path, lab_path, stamp):
        for p in (img_path, lab_path, stamp):
            if p != keep:
                p.unlink()
        assert cache.build_entry(job)["status"] == "rebuilt", keep.name
        assert img_path.exists() and lab_path.exists() and stamp.exists()
    stamp.write_text("other")
    assert cache.build_entry(job)["status"] == "rebuilt"
    gone = ("g", str(tmp_path / "gone.jpg"), lab, *job[3:])
    res = cache.build_entry(gone)
    assert res["status"] == "error" and res["key"] == "g" and res["image"] == str(tmp_path / "gone.jpg")
    assert "gone.jpg" in res["error"] and "No such file" in res["error"]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 cut")
    res = cache.build_entry(("b", str(bad), lab, *job[3:]))
    assert res == {"key": "b", "image": str(bad), "status": "error",
                   "error": f"{bad}: truncated JPEG (no end-of-image marker)"}
    assert not cache.cached_paths(folder, "b")[0].exists()


def test_source_stamp_without_a_label(tmp_path):
    img, _, _ = write_frame(tmp_path)
    st = os.stat(img)
    assert cache.source_stamp(img, None) == f"{st.st_size}:{st.st_mtime_ns}"
