"""`prepare` on synthetic data in the real layout: scan, problem reporting, record split,
cleaning rules, stats, cache, CLI and worker-count independence."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import write_gray
from paddle_lane.cli import main as cli
from paddle_lane.config import load_config
from paddle_lane.core.label_io import read_image, read_label
from paddle_lane.core.labels import load_scheme
from paddle_lane.prepare import synth
from paddle_lane.prepare.pipeline import prepare
from paddle_lane.prepare.scan import scan
from paddle_lane.prepare.split import split_by_group

W, H = 384, 192
OFFSET = 77  # the real 690 of 1710 rows, scaled to H
STAGE = ["stages.0.width=192", "stages.0.height=64"]
PX = [f"px_{n}" for n in load_scheme("apollo8").class_names]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """2 roads x 3 records x 2 frames x 2 cameras = 24 pairs, under a root whose own
    name holds a space, 'label' and 'road' (only folders below the root may count)."""
    root = tmp_path_factory.mktemp("prep") / "road 9 labels"
    return synth.make_dataset(root, roads=("Road02", "Road03"), records_per_road=3, frames_per_record=2,
                              width=W, height=H, seed=0)


@pytest.fixture
def copy(dataset, tmp_path):
    """A private copy of the dataset that a test may damage; returns (root, pairs)."""
    root = tmp_path / "data copy"
    shutil.copytree(dataset["root"], root)
    old = dataset["root"]
    pairs = [{k: v.replace(old, str(root), 1) if isinstance(v, str) and v.startswith(old) else v
              for k, v in p.items()} for p in dataset["pairs"]]
    return root, pairs


def config(*opts, path=None):
    return load_config(path, [f"data.crop_offset={OFFSET}", f"data.frame_height={H}", *STAGE, *opts])


def run(root, out, *opts, workers=1, path=None, test_dir=None):
    return prepare(root, out, config(*opts, path=path), workers=workers, test_dir=test_dir)


def lists(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(out / "train.csv"), pd.read_csv(out / "val.csv")


def problems(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "problems.csv")


def write_jpeg(path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    Path(path).write_bytes(buf.tobytes())


# ----------------------------------------------------------------------------- scan

def test_scan_finds_every_pair_with_gray_label_preferred(dataset):
    found = scan(dataset["root"])
    assert not found.problems and not found.test_images
    by_key = {f.key: f for f in found.pairs}
    assert len(by_key) == len(dataset["pairs"]) == 24
    for p in dataset["pairs"]:
        f = by_key[p["key"]]
        assert (f.image, f.label, f.label_alt) == (p["image"], p["label"], p["label_alt"])
        assert "/Gray_Label/" in f.label and "/Labels_road0" in f.label_alt
        assert (f.road, f.record, f.camera) == (p["road"], p["record"], p["camera"])
        assert " " in f.camera and Path(f.image).exists() and Path(f.label).exists()
    assert {f.group for f in found.pairs} == {f"road0{r}/Record00{i}" for r in (2, 3) for i in (1, 2, 3)}


def test_scan_falls_back_to_older_label_tree(copy):
    root, pairs = copy
    Path(pairs[0]["label"]).unlink()
    frame = next(f for f in scan(root).pairs if f.key == pairs[0]["key"])
    assert frame.label == pairs[0]["label_alt"] and frame.label_alt == ""


def test_scan_lists_label_without_image_and_image_without_label(copy):
    root, pairs = copy
    for k in ("label", "label_alt"):
        Path(pairs[0][k]).unlink()
    orphan = Path(pairs[1]["label"]).with_name("170927_000000000_Camera_5_bin.png")
    shutil.copy(pairs[1]["label"], orphan)
    found = scan(root)
    reasons = {p["file"]: p["reason"] for p in found.problems}
    assert reasons == {pairs[0]["image"]: "missing label (no *_bin.png with this key)",
                       str(orphan): "label without image"}
    assert len(found.pairs) == 23


# ----------------------------------------------------------------------------- problems and stats

def plant_problems(pairs) -> dict[str, str]:
    """Damage five frames in five ways; return {file expected in problems.csv: reason fragment}."""
    rng = np.random.default_rng(0)
    Path(pairs[0]["image"]).write_bytes(rng.bytes(5000))
    lab = Path(pairs[1]["label"])
    lab.write_bytes(lab.read_bytes()[: lab.stat().st_size // 2])
    write_gray(pairs[2]["label"], np.zeros((H, W - 4), np.uint8))
    ids = read_label(pairs[3]["label"]).copy()
    ids[100:110, 10:20] = 123
    write_gray(pairs[3]["label"], ids)
    for k in ("label", "label_alt"):
        Path(pairs[4][k]).unlink()
    return {pairs[0]["image"]: "cannot read image header", pairs[1]["label"]: "cannot decode label",
            pairs[2]["label"]: f"size mismatch: image {W}x{H}, label {W - 4}x{H}",
            pairs[3]["label"]: "unknown label id(s) [123]", pairs[4]["image"]: "missing label"}


def test_each_bad_frame_is_reported_and_the_rest_go_through(copy, tmp_path):
    root, pairs = copy
    expected = plant_problems(pairs)
    out = tmp_path / "out"
    res = run(root, out)
    rep = problems(out)
    assert list(rep.columns) == ["file", "reason"] and len(rep) == 5
    for file, fragment in expected.items():
        reason = rep.loc[rep["file"] == file, "reason"]
        assert len(reason) == 1 and fragment in reason.iloc[0], (file, reason.tolist())
    train, val = lists(out)
    listed = set(train["key"]) | set(val["key"])
    assert listed == {p["key"] for p in pairs[5:]}
    assert (res.train, res.val, res.pairs_found) == (len(train), len(val), 23)


def test_stats_frequencies_and_weights(dataset, tmp_path):
    out = tmp_path / "out"
    run(dataset["root"], out)
    stats = json.loads((out / "stats.json").read_text())
    train, val = lists(out)
    pixels = train[PX].sum().to_numpy()
    assert stats["class_pixels"] == pixels.tolist()
    freq = np.array(stats["class_frequencies"])
    assert freq.sum() == pytest.approx(1.0) and (freq > 0).all()
    np.testing.assert_allclose(freq, pixels / pixels.sum())
    weights = np.array(stats["class_weights"])
    assert len(weights) == len(stats["class_names"]) == 8
    expected = (1 / np.log(1.02 + freq)) * np.log(1.02 + freq[0])
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    assert stats["frames"]["train"] == len(train) and stats["frames"]["val"] == len(val)
    # counts exclude the rows above the crop
    row = train.iloc[0]
    assert row[PX].sum() == (H - OFFSET) * W


# ----------------------------------------------------------------------------- split

def all_frames(out: Path) -> pd.DataFrame:
    train, val = lists(out)
    return pd.concat([train.assign(is_val=False), val.assign(is_val=True)], ignore_index=True)


def test_records_never_straddle_the_split_and_seed_decides(dataset, tmp_path):
    a, b = run(dataset["root"], tmp_path / "a"), run(dataset["root"], tmp_path / "b")
    frames = all_frames(tmp_path / "a")
    sides = frames.groupby("group")["is_val"].nunique()
    assert (sides == 1).all() and len(sides) == 6
    assert 0 < a.val < a.train
    for name in ("train.csv", "val.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    val_sets = {tuple(sorted(frames.loc[split_by_group(frames, PX, 0.2, s)[0], "group"].unique()))
                for s in range(8)}
    assert len(val_sets) > 1


def test_every_class_in_two_or_more_records_reaches_val(dataset, tmp_path):
    run(dataset["root"], tmp_path / "out")
    frames = all_frames(tmp_path / "out")
    per_group = frames.groupby("group")[PX].sum().gt(0)
    shared = [c for c in PX if per_group[c].sum() >= 2]
    assert len(shared) == 8
    assert (frames.loc[frames["is_val"], shared].sum() > 0).all()
    for seed in range(6):
        is_val, _ = split_by_group(frames, PX, 0.2, seed)
        assert (frames.loc[is_val, shared].sum() > 0).all(), seed
        assert not set(frames.loc[is_val, "group"]) & set(frames.loc[~is_val, "group"])


@pytest.mark.parametrize("seed", range(6))
def test_class_of_a_single_record_stays_in_training_with_a_warning(seed):
    frames = pd.DataFrame({"group": ["a", "a", "b", "c", "d"], "px_x": [1, 1, 1, 1, 1],
                           "px_rare": [0, 5, 0, 0, 0]})
    is_val, warnings = split_by_group(frames, ["px_x", "px_rare"], 0.4, seed)
    assert not is_val[:2].any() and is_val.sum() == 2
    assert any("px_rare" in w and "single record" in w for w in warnings)


@pytest.mark.parametrize("seed", range(4))
def test_split_never_takes_a_class_out_of_training(seed):
    # each class lives in two of three records: any two records in val would empty one class
    frames = pd.DataFrame({"group": ["g1", "g2", "g3"], "px_a": [1, 1, 0], "px_b": [0, 1, 1], "px_c": [1, 0, 1]})
    is_val, warnings = split_by_group(frames, ["px_a", "px_b", "px_c"], 0.6, seed)
    assert is_val.sum() == 1
    assert (frames.loc[~is_val, ["px_a", "px_b", "px_c"]].sum() > 0).all()
    assert any("absent from validation" in w for w in warnings)


# ----------------------------------------------------------------------------- cleaning

def test_cleaning_rules_drop_and_list_frames(copy, tmp_path):
    root, pairs = copy
    write_jpeg(pairs[0]["image"], np.full((H, W, 3), 255, np.uint8))
    ids = read_label(pairs[1]["label"])
    write_gray(pairs[1]["label"], np.where(ids == 255, 255, 0))
    run(root, tmp_path / "plain")
    plain = all_frames(tmp_path / "plain")
    min_lane = int(np.percentile(plain["lane_pixels"], 25))
    res = run(root, tmp_path / "clean", "prepare.clean.max_overexposed_fraction=0.5",
              f"prepare.clean.min_lane_pixels={min_lane}")

    bright = set(plain.loc[plain["overexposed"] > 0.5, "image"])
    few = set(plain.loc[plain["lane_pixels"] < min_lane, "image"]) - bright
    assert bright == {pairs[0]["image"]} and pairs[1]["image"] in few
    dropped = {d["file"]: d["rule"] for d in res.dropped}
    assert dropped == {**{f: "overexposed fraction > 0.5" for f in bright},
                       **{f: f"lane pixels < {min_lane}" for f in few}}
    rep = problems(tmp_path / "clean")
    assert dict(zip(rep["file"], rep["reason"])) == {f: f"dropped by rule: {r}" for f, r in dropped.items()}
    kept = all_frames(tmp_path / "clean")
    assert set(kept["image"]) == set(plain["image"]) - set(dropped)


# ----------------------------------------------------------------------------- cache

def centre_sampled(ids: np.ndarray, size) -> np.ndarray:
    """Reference for the default label rule: the source pixel under each target pixel's centre
    (a centre on a pixel border takes the pixel that starts there, as OpenCV >= 4.10 does)."""
    w, h = size
    ys = np.minimum(np.floor((np.arange(h) + 0.5) * ids.shape[0] / h), ids.shape[0] - 1).astype(int)
    xs = np.minimum(np.floor((np.arange(w) + 0.5) * ids.shape[1] / w), ids.shape[1] - 1).astype(int)
    return ids[ys][:, xs]


CACHE_YAML = """
data: {crop_offset: 77, frame_height: 192}
prepare: {cache: true}
stages:
  - {width: 192, height: 64}
  - {width: 96, height: 32}
"""


def test_cache_writes_stage_sizes_and_is_reused(dataset, tmp_path):
    cfg_file = tmp_path / "cache.yml"
    cfg_file.write_text(CACHE_YAML)
    cfg = load_config(cfg_file)
    out = tmp_path / "out"
    first = prepare(dataset["root"], out, cfg, workers=1)
    assert set(first.cache) == {"192x64", "96x32"}
    scheme = load_scheme("apollo8")
    for size, counts in first.cache.items():
        w, h = map(int, size.split("x"))
        assert (counts["written"], counts["reused"], counts["error"]) == (24, 0, 0)
        folder = Path(counts["folder"])
        assert len(list(folder.glob("*.jpg"))) == len(list(folder.glob("*_label.png"))) == 24
        p = dataset["pairs"][0]
        img = read_image(folder / f"{p['key']}.jpg")
        lab = read_label(folder / f"{p['key']}_label.png")
        assert img.shape == (h, w, 3) and lab.shape == (h, w)
        np.testing.assert_array_equal(lab, centre_sampled(scheme.encode(read_label(p["label"])[OFFSET:]), (w, h)))
    stamps = {f: f.stat().st_mtime_ns for f in (out / "cache").rglob("*.*")}
    second = prepare(dataset["root"], out, cfg, workers=1)
    for counts in second.cache.values():
        assert (counts["written"], counts["reused"], counts["error"]) == (0, 24, 0)
    assert {f: f.stat().st_mtime_ns for f in (out / "cache").rglob("*.*")} == stamps


# ----------------------------------------------------------------------------- CLI

def test_cli_prints_summary_and_exits_0(dataset, tmp_path, capsys):
    code = cli.main(["prepare", "--data-root", dataset["root"], "--out", str(tmp_path / "out"), "--workers", "1",
                     "--opts", f"data.crop_offset={OFFSET}", f"data.frame_height={H}"])
    text = capsys.readouterr().out
    assert code == 0
    train, val = lists(tmp_path / "out")
    assert "pairs found      : 24" in text
    assert f"split            : train {len(train)} frames, val {len(val)} frames (by record)" in text
    for i, name in enumerate(load_scheme("apollo8").class_names):
        assert f"{i:>3}  {name}" in text


def test_cli_missing_data_root_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "no such folder"
    proc = subprocess.run([sys.executable, "-m", "paddle_lane.cli.main", "prepare", "--data-root", str(missing),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(missing) in lines[0]


def test_cli_test_dir_writes_test_csv(dataset, tmp_path, capsys):
    test_dir = tmp_path / "test images"
    test_dir.mkdir()
    for p in dataset["pairs"][:3]:
        shutil.copy(p["image"], test_dir / f"t_{Path(p['image']).name}")
    out = tmp_path / "out"
    code = cli.main(["prepare", "--data-root", dataset["root"], "--out", str(out), "--workers", "1",
                     "--test-dir", str(test_dir), "--opts", f"data.crop_offset={OFFSET}", f"data.frame_height={H}"])
    assert code == 0 and "test images      : 3" in capsys.readouterr().out
    test = pd.read_csv(out / "test.csv")
    assert sorted(test["key"]) == sorted(f"t_{Path(p['image']).stem}" for p in dataset["pairs"][:3])
    assert (test["width"] == W).all() and (test["height"] == H).all()
    assert all(Path(f).parent == test_dir for f in test["image"])


# ----------------------------------------------------------------------------- workers

def test_two_workers_give_the_same_lists_as_one(copy, tmp_path):
    root, pairs = copy
    plant_problems(pairs)
    run(root, tmp_path / "w1", workers=1)
    run(root, tmp_path / "w2", workers=2)
    for name in ("train.csv", "val.csv", "problems.csv"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_cache_folder_follows_every_input_of_its_files(tmp_path, monkeypatch):
    """Offset, size, ignore policy, label rule, the scheme's table content and the rule's
    version each give another cache folder; the same inputs give the same folder."""
    from paddle_lane.core.labels import Scheme
    import paddle_lane.prepare.cache as cache
    scheme = load_scheme("apollo8")
    base = cache.cache_dir(tmp_path, 690, (768, 256), scheme, "background", "nearest")
    assert base == cache.cache_dir(tmp_path, 690, (768, 256), load_scheme("apollo8"), "background", "nearest")
    variants = [cache.cache_dir(tmp_path, 672, (768, 256), scheme, "background", "nearest"),
                cache.cache_dir(tmp_path, 690, (1024, 384), scheme, "background", "nearest"),
                cache.cache_dir(tmp_path, 690, (768, 256), scheme, "ignore", "nearest"),
                cache.cache_dir(tmp_path, 690, (768, 256), scheme, "background", "vote")]
    # same scheme name, one id moved to another class: an edited scheme file
    moved = [c if c.name != "parking" else type(c)(c.name, c.ids + (250,), c.submit_id) for c in scheme.classes]
    moved = [c if c.name != "reduction_noparking_others" else type(c)(c.name, tuple(i for i in c.ids if i != 250),
                                                                      c.submit_id) for c in moved]
    edited = dataclasses.replace(scheme, classes=tuple(moved))
    assert isinstance(edited, Scheme) and not np.array_equal(edited.train_lut("background"), scheme.train_lut("background"))
    variants.append(cache.cache_dir(tmp_path, 690, (768, 256), edited, "background", "nearest"))
    monkeypatch.setattr(cache, "LABEL_RESIZE_VERSION", cache.LABEL_RESIZE_VERSION + 1)
    variants.append(cache.cache_dir(tmp_path, 690, (768, 256), scheme, "background", "nearest"))
    assert len({base, *variants}) == len(variants) + 1


@pytest.mark.parametrize("full, offset, size, reduce", [
    ((3384, 1710), 690, (768, 256), 2),   # 690 is not a multiple of 4: the crop row must stay exact
    ((3384, 1710), 688, (384, 128), 8),   # 423 >= 0.99 * 384 and 127 >= 0.99 * 128
    ((3384, 1710), 688, (846, 255), 4),   # 8 would give 423 columns for 846
    ((3384, 1710), 690, (1536, 512), 2),  # 510 rows >= 0.99 * 512 (a 0.4 % stretch)
    ((3384, 1710), 690, (2000, 800), 1),  # 1692 columns < 0.99 * 2000
    ((846, 428), 172, (192, 64), 4),      # 211 >= 190.1, 64 >= 63.4, 172 % 4 == 0
    ((846, 428), 172, (256, 96), 2),      # 4 gives 64 rows < 95.04
])
def test_jpeg_decode_reduction_by_hand(full, offset, size, reduce):
    from paddle_lane.prepare.cache import best_reduce
    assert best_reduce(full, offset, size) == reduce


def test_cache_entry_states(tmp_path):
    """written, reused (same source), rebuilt (source changed or a file missing), error (named)."""
    from paddle_lane.prepare.cache import build_entry, cached_paths
    from paddle_lane.prepare.synth import make_dataset
    info = make_dataset(tmp_path / "raw", roads=("Road02",), records_per_road=1, frames_per_record=1,
                        cameras=("Camera 5",), width=W, height=H, seed=2)
    pair = info["pairs"][0]
    scheme = load_scheme("apollo8")
    folder = tmp_path / "cache"
    folder.mkdir()
    job = (pair["key"], pair["image"], pair["label"], str(folder), scheme, scheme.train_lut("background"),
           OFFSET, (96, 32), "nearest", (W, H))
    assert build_entry(job)["status"] == "written"
    assert build_entry(job)["status"] == "reused"
    img, lab = cached_paths(folder, pair["key"])
    lab.unlink()
    assert build_entry(job)["status"] == "rebuilt" and lab.exists()
    os.utime(pair["label"], ns=(1, 1))  # the label's source changed (mtime)
    assert build_entry(job)["status"] == "rebuilt"
    os.utime(pair["image"], ns=(2, 2))  # the image's too
    assert build_entry(job)["status"] == "rebuilt"
    assert build_entry(job)["status"] == "reused"
    missing = (pair["key"] + "x", str(tmp_path / "nope.jpg"), pair["label"], *job[3:])
    res = build_entry(missing)
    assert res["status"] == "error" and "nope.jpg" in res["error"] and res["image"] == str(tmp_path / "nope.jpg")
