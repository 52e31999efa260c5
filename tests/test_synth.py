"""Synthetic dataset: real folder layout, label flavours and the palette trap, class coverage,
hood, determinism, sizes, test folder, perspective and the CLI."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from paddle_lane.core.label_io import read_image, read_label
from paddle_lane.core.labels import known_ids, load_scheme
from paddle_lane.prepare import synth

W, H = 384, 192
ROADS = ("Road02", "Road03")
CAMERAS = ("Camera 5", "Camera 6")
STEM_RE = re.compile(r"^\d{6}_\d{9}_Camera_[56]$")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two roads, one record each, two shots per record, both cameras: 8 pairs, 3 test images."""
    root = tmp_path_factory.mktemp("synth")
    return synth.make_dataset(root, roads=ROADS, records_per_road=1, frames_per_record=2,
                              cameras=CAMERAS, width=W, height=H, seed=3, test_frames=3)


@pytest.fixture(scope="module")
def labels(data):
    return [read_label(p["label"]) for p in data["pairs"]]


def small(root, seed, **kw):
    return synth.make_dataset(root, roads=("Road02",), records_per_road=1, frames_per_record=2,
                              width=W, height=H, seed=seed, **kw)


def test_layout_matches_the_competition_tree(data):
    root = Path(data["root"])
    assert len(data["pairs"]) == len(ROADS) * 2 * len(CAMERAS)
    for p in data["pairs"]:
        road, rec, cam, key = p["road"], p["record"], p["camera"], p["key"]
        big = road.capitalize()
        assert STEM_RE.match(key) and cam.endswith(key[-1]) and " " in cam
        assert Path(p["image"]) == root / big / f"ColorImage_{road}" / "ColorImage" / rec / cam / f"{key}.jpg"
        assert Path(p["label"]) == root / "Gray_Label" / f"Label_{road}" / "Label" / rec / cam / f"{key}_bin.png"
        assert Path(p["label_alt"]) == root / big / f"Labels_{road}" / "Label" / rec / cam / f"{key}_bin.png"
        assert all(Path(p[k]).is_file() for k in ("image", "label", "label_alt"))
    assert {p["record"] for p in data["pairs"]} == {"Record001"}


def test_keys_unique_and_time_increases(data):
    keys = [p["key"] for p in data["pairs"]] + [Path(t).stem for t in data["test_images"]]
    assert len(set(keys)) == len(keys)
    times = [int(k.split("_")[1]) for k in keys]
    assert times == sorted(times)


def test_no_temp_files_left(data):
    leftovers = [p for p in Path(data["root"]).rglob("*") if p.is_file() and p.name.startswith(".")]
    assert leftovers == []


def test_gray_and_palette_labels_give_the_same_ids(data, labels):
    for p, ids in zip(data["pairs"], labels):
        with Image.open(p["label"]) as g, Image.open(p["label_alt"]) as a:
            assert (g.mode, a.mode) == ("L", "P")
            assert tuple(a.getpalette()[200 * 3:200 * 3 + 3]) == (70, 130, 180)   # Apollo colour of id 200
        np.testing.assert_array_equal(read_label(p["label_alt"]), ids)


def test_cv2_gray_reading_of_the_palette_label_is_the_trap(data, labels):
    for p, ids in zip(data["pairs"], labels):
        lum = cv2.imread(p["label_alt"], cv2.IMREAD_GRAYSCALE)
        lane = (ids >= 200) & (ids < 255)
        assert lane.sum() > 100
        assert (lum[lane] != ids[lane]).all()
        np.testing.assert_array_equal(cv2.imread(p["label"], cv2.IMREAD_GRAYSCALE), ids)


def test_every_apollo8_class_appears(labels):
    scheme = load_scheme("apollo8")
    per_frame = [set(np.unique(scheme.encode(ids)).tolist()) for ids in labels]
    assert set().union(*per_frame) == set(range(scheme.num_classes))
    assert len({frozenset(s) for s in per_frame}) > 1, "frames should differ in which classes they contain"


def test_ids_are_in_the_label_table(labels):
    found = set().union(*(np.unique(ids).tolist() for ids in labels))
    assert found <= known_ids()
    assert {0, 200, 249, 255} <= found


def test_hood_is_255_fixed_per_camera_and_dark(data, labels):
    masks = {}
    for p, ids in zip(data["pairs"], labels):
        hood = ids == 255
        assert hood[-1].all() and not hood[: int(0.75 * H)].any()
        assert hood[int(round(1310 / 1710 * H)) + 2:, W // 2].all()
        masks.setdefault(p["camera"], []).append(hood)
        assert read_image(p["image"])[hood].mean() < 60
    for cam_masks in masks.values():
        assert all(np.array_equal(cam_masks[0], m) for m in cam_masks[1:])
    assert not np.array_equal(masks["Camera 5"][0], masks["Camera 6"][0])


def test_markings_are_brighter_than_their_surroundings(data, labels):
    for p, ids in zip(data["pairs"], labels):
        gray = cv2.cvtColor(read_image(p["image"]), cv2.COLOR_RGB2GRAY).astype(float)
        below = np.zeros_like(ids, bool)
        below[H // 2:] = True
        lane = (ids >= 200) & (ids < 249) & below
        assert gray[lane].mean() > gray[(ids == 0) & below].mean() + 60


def test_sizes_match_the_request(data, labels):
    for p, ids in zip(data["pairs"], labels):
        assert read_image(p["image"]).shape == (H, W, 3)
        assert ids.shape == (H, W) and read_label(p["label_alt"]).shape == (H, W)
    other = synth.render_frame(synth.FrameSpec(846, 428, "Camera 5", (0, 1, 0), (0, 2, 0), 0, 0))
    assert other[0].shape == (428, 846, 3) and other[1].shape == (428, 846)


def test_test_folder_has_the_requested_images(data):
    folder = Path(data["root"]) / "TestSet" / "ColorImage"
    assert sorted(folder.iterdir()) == sorted(Path(t) for t in data["test_images"])
    assert len(data["test_images"]) == 3
    for t in data["test_images"]:
        assert STEM_RE.match(Path(t).stem) and read_image(t).shape == (H, W, 3)


def test_same_seed_same_bytes_different_seed_different_labels(tmp_path):
    a, b, c = small(tmp_path / "a", 7), small(tmp_path / "b", 7), small(tmp_path / "c", 8)
    for pa, pb in zip(a["pairs"], b["pairs"]):
        for k in ("image", "label", "label_alt"):
            assert Path(pa[k]).read_bytes() == Path(pb[k]).read_bytes()
    assert any(Path(pa["label"]).read_bytes() != Path(pc["label"]).read_bytes()
               for pa, pc in zip(a["pairs"], c["pairs"]))


def test_without_palette_labels_only_gray_is_written(tmp_path):
    out = small(tmp_path, 0, palette_labels=False)
    assert all(p["label_alt"] == "" for p in out["pairs"])
    assert not (tmp_path / "Road02" / "Labels_road02").exists()


def test_strips_converge_and_widen_towards_the_bottom():
    view = synth.make_view(W, H, np.random.default_rng(0))
    quad = synth.strips(view, [(1.7, 7.0, 1.7, 60.0, 0.18)])[0]
    near, far = np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])
    assert near > far >= view.min_px - 1e-9
    centre_near, centre_far = (quad[0] + quad[3]) / 2, (quad[1] + quad[2]) / 2
    vp = np.array([view.vx, view.vy])
    d1, d2 = centre_near - vp, centre_far - vp
    assert abs(d1[0] * d2[1] - d1[1] * d2[0]) < 1e-6 * np.linalg.norm(d1) * np.linalg.norm(d2)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Road"):
        synth.make_dataset(tmp_path, roads=("road2",), width=W, height=H)
    with pytest.raises(ValueError, match="Camera"):
        synth.make_dataset(tmp_path, cameras=("Camera_5",), width=W, height=H)
    with pytest.raises(ValueError, match="size"):
        synth.make_dataset(tmp_path, width=10, height=10)


def test_cli_prints_a_one_line_summary(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--width", "128", "--height", "64", "--seed", "1",
            "--records-per-road", "1", "--frames-per-record", "1", "--test-frames", "2"]
    assert synth.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "4 pairs" in lines[0] and "2 test images" in lines[0]
    assert len(list((tmp_path / "TestSet" / "ColorImage").glob("*.jpg"))) == 2
