"""Label table, schemes and LUTs against plain reference mappings; label reading for gray,
palette and RGB files; errors that name the file; the palette trap on real labels."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from paddle_lane.core.label_io import UnknownColorError, UnreadableFileError, read_image, read_label
from paddle_lane.core.labels import IGNORE_INDEX, label_table, load_scheme

APOLLO_DEV = Path(__file__).resolve().parents[2] / "shared" / "apollo_dev"

# The official table as written in DESIGN.md section 2: id -> (category, ignoreInEval).
OFFICIAL = {
    200: ("dividing", False), 204: ("dividing", False), 213: ("dividing", True), 209: ("dividing", False),
    206: ("dividing", True), 207: ("dividing", True), 201: ("guiding", False), 203: ("guiding", False),
    211: ("guiding", True), 208: ("guiding", True), 216: ("stopping", True), 217: ("stopping", False),
    215: ("stopping", True), 218: ("chevron", True), 219: ("chevron", True), 210: ("parking", False),
    232: ("parking", True), 214: ("zebra", False), 202: ("thru/turn", True), 220: ("thru/turn", False),
    221: ("thru/turn", False), 222: ("thru/turn", False), 231: ("thru/turn", True), 224: ("thru/turn", False),
    225: ("thru/turn", False), 226: ("thru/turn", False), 230: ("thru/turn", True), 228: ("thru/turn", True),
    229: ("thru/turn", True), 233: ("thru/turn", True), 205: ("reduction", False), 212: ("attention", True),
    227: ("no parking", False), 223: ("others", True), 250: ("others", False), 249: ("ignored", True),
    255: ("ignored", True), 0: ("void", False),
}
IGNORE_IDS = {i for i, (_, ign) in OFFICIAL.items() if ign}

# The competition's 8 classes (DESIGN.md): Apollo id -> train id; every other value -> 0.
APOLLO8 = {0: 0, 200: 1, 204: 1, 209: 1, 201: 2, 203: 2, 217: 3, 210: 4, 214: 5,
           220: 6, 221: 6, 222: 6, 224: 6, 225: 6, 226: 6, 205: 7, 227: 7, 250: 7}
APOLLO8_SUBMIT = {0: 0, 1: 204, 2: 203, 3: 217, 4: 210, 5: 214, 6: 224, 7: 227}
APOLLO8_CATEGORY = {"void": 0, "dividing": 1, "guiding": 2, "stopping": 3, "parking": 4, "zebra": 5,
                    "thru/turn": 6, "reduction": 7, "no parking": 7, "others": 7}

ALL_VALUES = np.arange(256, dtype=np.uint8).reshape(16, 16)


def reference_train_id(value: int, policy: str) -> int:
    """Plain-dict mapping that the LUT must reproduce."""
    if value in APOLLO8:
        return APOLLO8[value]
    if policy == "ignore" and value in IGNORE_IDS:
        return IGNORE_INDEX
    return 0


def all_ids_label() -> np.ndarray:
    """A small label holding every Apollo id, in blocks."""
    ids = np.array(sorted(OFFICIAL), np.uint8)
    return np.repeat(np.repeat(ids.reshape(2, 19), 5, axis=0), 4, axis=1)


def colors() -> dict[int, tuple[int, int, int]]:
    return {lab.id: lab.color for lab in label_table()}


# ----------------------------------------------------------------------------- table and schemes

def test_label_table_matches_official_table():
    assert {lab.id: (lab.category, lab.ignore_in_eval) for lab in label_table()} == OFFICIAL
    assert len(set(colors().values())) == len(OFFICIAL)  # colours identify ids uniquely


@pytest.mark.parametrize("policy", ["background", "ignore"])
def test_encode_equals_reference_for_every_value(policy):
    scheme = load_scheme("apollo8")
    expected = np.array([reference_train_id(v, policy) for v in range(256)], np.uint8)
    np.testing.assert_array_equal(scheme.train_lut(policy), expected)
    np.testing.assert_array_equal(scheme.encode(ALL_VALUES, policy), expected.reshape(16, 16))
    np.testing.assert_array_equal(scheme.encode(np.arange(256, dtype=np.uint8), policy), expected)


def test_unknown_ignore_policy_is_refused():
    with pytest.raises(ValueError, match="ignore_policy"):
        load_scheme("apollo8").train_lut("drop")


def test_eval_lut_ignores_every_ignore_in_eval_id():
    lut = load_scheme("apollo8").eval_lut()
    for v in IGNORE_IDS | {249, 255}:
        assert lut[v] == IGNORE_INDEX, v
    for v, t in APOLLO8.items():
        assert lut[v] == t, v


def test_decode_matches_submission_ids_and_round_trips():
    scheme = load_scheme("apollo8")
    train_ids = np.arange(scheme.num_classes, dtype=np.uint8)
    submit = scheme.decode(train_ids)
    assert submit.tolist() == [APOLLO8_SUBMIT[t] for t in range(8)]
    for t in range(scheme.num_classes):
        one = np.full((3, 5), t, np.uint8)
        np.testing.assert_array_equal(scheme.encode(scheme.decode(one)), one)
        np.testing.assert_array_equal(scheme.encode(scheme.decode(one), "ignore"), one)


def test_pred_lut_maps_every_id_to_its_category_class():
    lut = load_scheme("apollo8").pred_lut()
    for v, (category, _) in OFFICIAL.items():
        assert lut[v] == APOLLO8_CATEGORY.get(category, 0), (v, category)


def test_palette_has_submit_colors():
    scheme = load_scheme("apollo8")
    pal = scheme.palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    for t, submit in APOLLO8_SUBMIT.items():
        assert tuple(pal[t]) == colors()[submit]
    assert tuple(pal[IGNORE_INDEX]) == (255, 255, 255)


def test_apollo9_adds_chevron_and_still_ignores_it_in_eval():
    scheme = load_scheme("apollo9")
    assert scheme.num_classes == 9 and scheme.class_names[8] == "chevron"
    lut = scheme.train_lut("ignore")
    assert lut[218] == lut[219] == 8
    assert lut[213] == IGNORE_INDEX
    assert scheme.eval_lut()[218] == IGNORE_INDEX
    assert scheme.pred_lut()[219] == 8


def test_unknown_scheme_name_lists_known_schemes():
    with pytest.raises(ValueError, match="no_such_scheme.*apollo8"):
        load_scheme("no_such_scheme")


def write_scheme(path: Path, classes: str) -> str:
    path.write_text(f"name: bad\nclasses:\n{classes}")
    return str(path)


def test_scheme_with_unknown_id_names_file_and_id(tmp_path):
    path = write_scheme(tmp_path / "unknown_id.yml",
                        "  - {name: bg, ids: [0]}\n  - {name: lane, ids: [200, 123]}\n")
    with pytest.raises(ValueError) as err:
        load_scheme(path)
    assert path in str(err.value) and "123" in str(err.value)


def test_scheme_with_id_in_two_classes_names_file_and_id(tmp_path):
    path = write_scheme(tmp_path / "twice.yml",
                        "  - {name: bg, ids: [0]}\n  - {name: a, ids: [200, 204]}\n  - {name: b, ids: [204]}\n")
    with pytest.raises(ValueError) as err:
        load_scheme(path)
    msg = str(err.value)
    assert path in msg and "204" in msg and "already belongs to class a" in msg


def test_a_custom_scheme_file_is_read_value_by_value(tmp_path):
    """A new scheme is a YAML file: name from the file when absent, submit_id defaulting to the
    first id, default_class receiving every id no class lists; checked against tables built here."""
    path = tmp_path / "three.yml"
    path.write_text("classes:\n  - {name: rest, ids: []}\n  - {name: white, ids: [200, 213]}\n"
                    "  - {name: stop, ids: [217], submit_id: 215}\ndefault_class: 0\n")
    s = load_scheme(str(path))
    assert (s.name, s.num_classes, s.class_names, s.default_class) == ("three", 3, ["rest", "white", "stop"], 0)
    assert [(c.ids, c.submit_id) for c in s.classes] == [((), 0), ((200, 213), 200), ((217,), 215)]
    want = np.zeros(256, np.uint8)
    want[[200, 213]] = 1
    want[217] = 2
    ids = np.array([[0, 200, 213, 217, 204, 250]], np.uint8)
    assert s.encode(ids, "background").tolist() == [want[ids[0]].tolist()]
    assert s.decode(np.array([0, 1, 2], np.uint8)).tolist() == [0, 200, 215]
    other = tmp_path / "named.yml"
    other.write_text("name: mine\ndefault_class: 1\nclasses:\n  - {name: a, ids: [0]}\n  - {name: b, ids: [200]}\n")
    t = load_scheme(str(other))
    assert t.name == "mine" and t.default_class == 1
    assert t.encode(np.array([0, 200, 204, 250], np.uint8), "background").tolist() == [0, 1, 1, 1]


@pytest.mark.parametrize("text, message", [
    ("- just a list\n", "a scheme must be a mapping"),
    ("name: x\ncolour: red\nclasses: []\n", "unknown key(s) ['colour']"),
    ("classes: [{name: a, ids: [0]}]\n", "'classes' must be a list of at least 2 classes"),
    ("classes: {a: 1, b: 2}\n", "'classes' must be a list of at least 2 classes"),
    ("classes:\n  - {name: a, ids: [0]}\n  - {name: b}\n", "classes[1]: needs exactly name, ids"),
    ("classes:\n  - {name: a, ids: [0]}\n  - {ids: [200]}\n", "classes[1]: needs exactly name, ids"),
    ("classes:\n  - {name: a, ids: [0], colour: 1}\n  - {name: b, ids: [200]}\n", "classes[0]: needs exactly"),
    ("classes:\n  - [a, 0]\n  - {name: b, ids: [200]}\n", "classes[0]: needs exactly"),
    ("classes:\n  - {name: a, ids: [0]}\n  - {name: b, ids: [200], submit_id: 7}\n", "submit_id 7 is not"),
    ("classes:\n  - {name: a, ids: [0]}\n  - {name: b, ids: [200]}\ndefault_class: 2\n", "default_class 2 is not"),
    ("classes:\n  - {name: a, ids: [0]}\n  - {name: b, ids: [200]}\ndefault_class: -1\n", "default_class -1 is not"),
])
def test_a_bad_scheme_file_is_one_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad_scheme.yml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_scheme(str(path))
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (1, 1)])
def test_apply_lut_keeps_any_shape_and_casts_ids(shape):
    """One table lookup per value whatever the array's shape or integer type (reference: fancy indexing)."""
    from paddle_lane.core.labels import apply_lut
    rng = np.random.default_rng(len(shape))
    lut = rng.integers(0, 256, 256).astype(np.uint8)
    ids = rng.integers(0, 256, shape)
    out = apply_lut(ids.astype(np.int64), lut.astype(np.int32))
    assert out.shape == shape and out.dtype == np.uint8
    assert (out == lut[ids]).all()


# ----------------------------------------------------------------------------- reading labels

def save_gray(path: Path, ids: np.ndarray) -> Path:
    Image.fromarray(ids, "L").save(path)
    return path


def save_palette(path: Path, ids: np.ndarray) -> Path:
    pal = np.zeros((256, 3), np.uint8)
    for i, c in colors().items():
        pal[i] = c
    im = Image.fromarray(ids, "L")
    im.putpalette(pal.ravel().tolist())
    im.save(path)
    return path


def save_rgb(path: Path, ids: np.ndarray) -> Path:
    lut = np.zeros((256, 3), np.uint8)
    for i, c in colors().items():
        lut[i] = c
    Image.fromarray(lut[ids], "RGB").save(path)
    return path


def test_gray_palette_and_rgb_labels_give_the_same_ids(tmp_path):
    ids = all_ids_label()
    files = [save_gray(tmp_path / "gray.png", ids), save_palette(tmp_path / "pal.png", ids),
             save_rgb(tmp_path / "rgb.png", ids)]
    assert [Image.open(f).mode for f in files] == ["L", "P", "RGB"]
    for f in files:
        out = read_label(f)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, ids, err_msg=str(f))


def test_rgb_label_with_unknown_color_lists_it(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2:4, 2:4] = (1, 2, 3)
    path = tmp_path / "odd color.png"
    Image.fromarray(rgb, "RGB").save(path)
    with pytest.raises(UnknownColorError) as err:
        read_label(path)
    assert "(1, 2, 3)" in str(err.value) and str(path) in str(err.value)


def test_truncated_png_names_the_file(tmp_path):
    ids = np.random.default_rng(0).choice([0, 200, 201, 255], size=(120, 160)).astype(np.uint8)
    good = save_gray(tmp_path / "good_bin.png", ids)
    bad = tmp_path / "cut_bin.png"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UnreadableFileError, match="cut_bin.png"):
        read_label(bad)


def test_truncated_and_random_jpegs_name_the_file(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", rgb)
    assert ok
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(UnreadableFileError, match="cut.jpg"):
        read_image(cut)
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(np.random.default_rng(2).bytes(4000))
    with pytest.raises(UnreadableFileError, match="noise.jpg"):
        read_image(noise)


# ----------------------------------------------------------------------------- real labels

@pytest.fixture(scope="module")
def real_pairs():
    if not (APOLLO_DEV / "pairs.csv").exists():
        pytest.skip(f"real sample not present at {APOLLO_DEV}")
    with open(APOLLO_DEV / "pairs.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_real_palette_and_gray_labels_give_identical_ids(real_pairs):
    assert len(real_pairs) == 30
    modes = set()
    for row in real_pairs:
        gray, alt = APOLLO_DEV / row["label"], APOLLO_DEV / row["label_alt"]
        modes.add(Image.open(alt).mode)
        np.testing.assert_array_equal(read_label(alt), read_label(gray), err_msg=row["key"])
    assert "P" in modes  # the alternative tree really holds palette files


def test_cv2_gray_reading_of_real_palette_labels_corrupts_ids(real_pairs):
    corrupted = 0
    for row in real_pairs:
        alt = APOLLO_DEV / row["label_alt"]
        if Image.open(alt).mode != "P":
            continue
        luminance = cv2.imread(str(alt), cv2.IMREAD_GRAYSCALE)
        corrupted += int(not np.array_equal(luminance, read_label(alt)))
        if corrupted:
            break
    assert corrupted >= 1


def test_known_id_mask_is_true_exactly_at_the_table_ids():
    from paddle_lane.core.labels import known_id_mask
    table = Path(__file__).resolve().parents[1] / "paddle_lane" / "core" / "apollo_labels.csv"
    with open(table, newline="") as fh:
        ids = {int(row["id"]) for row in csv.DictReader(fh)}
    mask = known_id_mask()
    assert mask.dtype == bool and mask.shape == (256,)
    assert set(np.flatnonzero(mask).tolist()) == ids and 0 in ids and 255 in ids
