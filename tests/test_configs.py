"""Shipped configs: all load, names follow the naming rule and say what the file resolves to,
recipe values are pinned (down to the dataclass defaults the files leave unset), the default
submission names are the label names, and an error inside a `_base_` file names that file."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from conftest import ROOT, real_data_or_skip
from paddle_lane.config import ConfigError, load_config, to_dict

CONFIGS = sorted((ROOT / "configs").glob("*.yml"))
BASES = sorted((ROOT / "configs" / "_base_").rglob("*.yml"))
NOT_RECIPES = {"demo_tiny.yml"}

# model[_backbone[-variant]]_CARDSxbBATCH-ITERS_dataset-SIZE1-SIZEn.yml, where BATCH is the first
# stage's per-card batch and ITERS the iterations of each stage: 3x16k, 20k+2x16k, ...
NAME_RULE = re.compile(
    r"^(?P<model>[a-z0-9]+)"
    r"(?:_(?P<backbone>[a-z0-9]+(?:-\d+x\d+d)?)(?:-(?P<variant>[a-z0-9]+))?)?"
    r"_(?P<cards>\d+)xb(?P<batch>\d+)"
    r"-(?P<iters>(?:\d+x)?\d+k(?:\+(?:\d+x)?\d+k)*)"
    r"_(?P<dataset>[a-z0-9]+)"
    r"-(?P<first>\d+x\d+)-(?P<last>\d+x\d+)\.yml$")


def _iters(token: str) -> list[int]:
    """'20k+2x16k' -> [20000, 16000, 16000]."""
    out = []
    for part in token.split("+"):
        count, _, k = part.rpartition("x")
        out += [int(k[:-1]) * 1000] * int(count or 1)
    return out


def backbone_token(name: str) -> str:
    """ResNet50_vd -> r50vd, ResNeXt50_32x4d -> resnext50-32x4d, ResNeSt101 -> resnest101."""
    if name.startswith("ResNet"):
        return "r" + name.removeprefix("ResNet").replace("_", "")
    return name.lower().replace("_", "-")


def _ids(paths):
    return [p.name for p in paths]


def test_name_rule_reads_the_examples():
    m = NAME_RULE.match("deeplabv3p_r101vd-os8_2xb6-20k+2x16k_apollo8-768x256-1536x512.yml")
    assert m and m["model"] == "deeplabv3p" and (m["backbone"], m["variant"]) == ("r101vd", "os8")
    assert (m["cards"], m["batch"], m["dataset"], m["first"], m["last"]) == ("2", "6", "apollo8", "768x256", "1536x512")
    assert _iters(m["iters"]) == [20000, 16000, 16000] and _iters("3x16k") == [16000] * 3
    m = NAME_RULE.match("unet_2xb8-3x16k_apollo8-768x256-1536x512.yml")
    assert m and m["model"] == "unet" and m["backbone"] is None
    for bad in ("unet_2x_768x256-1024x384-1536x512.yml", "deeplabv3p_r50vd_os8_2x_768x256-1024x384-1536x512.yml",
                "unet_2xb8_apollo8-768x256-1536x512.yml", "unet_2xb8-3x16k-768x256-1536x512.yml"):
        assert not NAME_RULE.match(bad), bad


@pytest.mark.parametrize("path", CONFIGS + BASES, ids=_ids(CONFIGS) + [str(p.relative_to(ROOT / "configs")) for p in BASES])
def test_every_shipped_config_and_base_loads(path):
    cfg = load_config(path)
    assert cfg.source == str(path)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name not in NOT_RECIPES],
                         ids=_ids([p for p in CONFIGS if p.name not in NOT_RECIPES]))
def test_recipe_name_says_what_the_config_resolves_to(path):
    m = NAME_RULE.match(path.name)
    assert m, f"{path.name} does not follow the naming rule"
    cfg = load_config(path)
    assert m["model"] == cfg.model.name
    if m["backbone"]:      # r50vd <-> ResNet50_vd, resnext50-32x4d <-> ResNeXt50_32x4d
        assert m["backbone"] == backbone_token(cfg.model.backbone)
    if m["variant"]:
        assert m["variant"] == f"os{cfg.model.output_stride}"
    assert int(m["batch"]) == cfg.stages[0].batch_size
    assert _iters(m["iters"]) == [st.iters for st in cfg.stages]
    assert m["dataset"] == cfg.data.scheme
    assert m["first"] == f"{cfg.stages[0].width}x{cfg.stages[0].height}"
    assert m["last"] == f"{cfg.stages[-1].width}x{cfg.stages[-1].height}"


SIZES = [(768, 256), (1024, 384), (1536, 512)]
LRS = [0.001, 0.0005, 0.0002]
ADAM_POLY_CE_DICE = {
    "loss": [("ce", 1.0, True), ("dice", 1.0, False)],
    "optimizer": ("adam", 0.0001, 5.0),
    "schedule": ("poly", 0.9, 200),
}
EXPECTED = {
    "deeplabv3p_r50vd-os8_2xb8-3x16k_apollo8-768x256-1536x512.yml": dict(
        model=("deeplabv3p", "ResNet50_vd", 8, True), batches=[8, 4, 2], iters=[16000] * 3,
        output_dir="runs/deeplabv3p_r50vd_os8", scales=[0.75, 1.0, 1.25], **ADAM_POLY_CE_DICE),
    "deeplabv3p_r101vd-os8_2xb6-20k+2x16k_apollo8-768x256-1536x512.yml": dict(
        model=("deeplabv3p", "ResNet101_vd", 8, True), batches=[6, 3, 2], iters=[20000, 16000, 16000],
        output_dir="runs/deeplabv3p_r101vd_os8", scales=[0.75, 1.0, 1.25], **ADAM_POLY_CE_DICE),
    **{f"{head}_{token}-os8_2xb8-3x16k_apollo8-768x256-1536x512.yml": dict(
        model=(head, backbone, 8, True), batches=[8, 4, 2], iters=[16000] * 3,
        output_dir=f"runs/{head}_{token}_os8", scales=[0.75, 1.0, 1.25], **ADAM_POLY_CE_DICE)
       for head, backbone, token in [("deeplabv3p", "ResNeXt50_32x4d", "resnext50-32x4d"),
                                     ("deeplabv3p", "ResNeSt50", "resnest50"),
                                     ("fcn", "ResNeXt50_32x4d", "resnext50-32x4d")]},
    **{f"deeplabv3p_{token}-os8_2xb6-20k+2x16k_apollo8-768x256-1536x512.yml": dict(
        model=("deeplabv3p", backbone, 8, True), batches=[6, 3, 2], iters=[20000, 16000, 16000],
        output_dir=f"runs/deeplabv3p_{token}_os8", scales=[0.75, 1.0, 1.25], **ADAM_POLY_CE_DICE)
       for backbone, token in [("ResNeXt101_32x4d", "resnext101-32x4d"), ("ResNeXt50_64x4d", "resnext50-64x4d"),
                               ("ResNeSt101", "resnest101")]},
    "unet_2xb8-3x16k_apollo8-768x256-1536x512.yml": dict(
        model=("unet", "ResNet50_vd", 8, False), batches=[8, 4, 2], iters=[16000] * 3,
        output_dir="runs/unet", scales=[1.0], **ADAM_POLY_CE_DICE),
}


def test_every_recipe_config_is_pinned():
    assert {p.name for p in CONFIGS} - NOT_RECIPES == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_values(name):
    exp = EXPECTED[name]
    cfg = load_config(ROOT / "configs" / name)
    m = cfg.model
    assert (m.name, m.backbone, m.output_stride, m.sync_bn) == exp["model"]
    assert (m.init, m.pretrained, m.backbone_pretrained, m.freeze_backbone_iters) == ("kaiming", None, None, 0)
    assert [(s.width, s.height) for s in cfg.stages] == SIZES
    assert [s.batch_size for s in cfg.stages] == exp["batches"]
    assert [s.iters for s in cfg.stages] == exp["iters"]
    assert [s.lr for s in cfg.stages] == LRS
    assert [s.name for s in cfg.stages] == ["s1_768x256", "s2_1024x384", "s3_1536x512"]
    assert [(t.type, t.weight, t.class_weights) for t in cfg.loss] == exp["loss"]
    o = cfg.optimizer
    assert (o.type, o.weight_decay, o.grad_clip) == exp["optimizer"] and o.betas == [0.9, 0.999]
    s = cfg.schedule
    assert (s.type, s.power, s.warmup_iters) == exp["schedule"] and (s.warmup_start, s.min_lr) == (0.1, 0.0)
    d = cfg.data
    assert (d.scheme, d.ignore_policy, d.crop_offset, d.lists_dir) == ("apollo8", "background", 690, "out/prepare")
    a = cfg.augment
    assert (a.hflip, a.scale, a.color_jitter, a.blur, a.noise, a.cutout) == (0.5, [0.9, 1.1], 0.2, 0.1, 0.0, 0.0)
    assert cfg.prepare.class_weight == "inverse_log" and cfg.prepare.val_fraction == 0.2
    t = cfg.train
    assert (t.output_dir, t.val_interval, t.max_val_images) == (exp["output_dir"], 2000, 500)
    assert (t.log_interval, t.keep_last, t.patience) == (20, 2, 0)
    assert cfg.infer.flip is True and cfg.infer.scales == exp["scales"] and cfg.infer.stage == -1


def test_demo_builds_on_the_same_bases():
    cfg = load_config(ROOT / "configs" / "demo_tiny.yml")
    assert (cfg.model.name, cfg.model.width) == ("lite", 16)
    assert (cfg.optimizer.type, cfg.optimizer.grad_clip, cfg.schedule.warmup_iters) == ("adam", 5.0, 20)
    assert [(t.type, t.weight) for t in cfg.loss] == [("ce", 1.0), ("dice", 0.5)]
    assert [(s.width, s.height, s.batch_size, s.iters) for s in cfg.stages] == [(192, 64, 8, 150), (256, 96, 4, 60)]
    assert (cfg.data.crop_offset, cfg.train.keep_last, cfg.train.log_interval) == (172, 2, 10)


@pytest.mark.parametrize("bad, message", [
    ("model:\n  nmae: lite\n", r"unknown key 'model\.nmae'"),
    ("train:\n  seed: one\n", r"key 'train\.seed' must be int"),
    ("stages:\n  - {width: 64, heigth: 32}\n", r"unknown key 'stages\.0\.heigth'"),
])
def test_error_in_a_base_file_names_that_file(tmp_path, bad, message):
    (tmp_path / "_base_").mkdir()
    base = tmp_path / "_base_" / "typo.yml"
    base.write_text(bad)
    child = tmp_path / "child.yml"
    child.write_text(f"_base_:\n  - {ROOT / 'configs' / '_base_' / 'default_runtime.yml'}\n"
                     "  - _base_/typo.yml\ntrain:\n  log_interval: 5\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_config(child)
    assert str(err.value).startswith(f"{base}: "), str(err.value)
    # The child's own mistakes still name the child, as given on the command line.
    child.write_text("_base_: _base_/typo.yml\ntrain:\n  log_itnerval: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train\.log_itnerval'") as err:
        load_config(child)
    assert str(err.value).startswith(f"{child}: ")


# What a user of the competition recipe gets for every data, prepare, loss, optimizer, schedule, train and
# infer value: the keys set in configs/_base_ (datasets/apollo8.yml, schedules/*.yml, default_runtime.yml)
# and the recipe, and the dataclass defaults of paddle_lane/config.py for the rest. Whole sections are
# compared, so a new or renamed field shows up here too.
RECIPE = "deeplabv3p_r50vd-os8_2xb8-3x16k_apollo8-768x256-1536x512.yml"
RESOLVED_SECTIONS = {
    "data": {"lists_dir": "out/prepare", "scheme": "apollo8", "ignore_policy": "background",
             "crop_offset": 690, "frame_height": 1710, "use_cache": True, "label_resize": "nearest",
             "num_workers": 2, "loader_timeout": 300.0, "oversample_rare": 0.0,
             "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "prepare": {"val_fraction": 0.2, "seed": 0, "workers": 2, "class_weight": "inverse_log",
                "clean": {"max_overexposed_fraction": None, "min_lane_pixels": 0},
                "cache": False, "stats_reduce": 4},
    "loss": [{"type": "ce", "weight": 1.0, "class_weights": True, "gamma": 2.0},
             {"type": "dice", "weight": 1.0, "class_weights": False, "gamma": 2.0}],
    "optimizer": {"type": "adam", "momentum": 0.9, "weight_decay": 0.0001, "grad_clip": 5.0,
                  "betas": [0.9, 0.999]},
    "schedule": {"type": "poly", "warmup_iters": 200, "warmup_start": 0.1, "power": 0.9, "min_lr": 0.0,
                 "step_size": 1000, "gamma": 0.1, "cycle_iters": 1000, "max_lr_factor": 10.0},
    "train": {"output_dir": "runs/deeplabv3p_r50vd_os8", "seed": 0, "val_interval": 2000, "log_interval": 20,
              "keep_last": 2, "patience": 0, "amp": None, "max_loss": 10000.0, "vis_images": 4,
              "max_val_images": 500, "train_eval_images": 64, "checkpoint_interval": 0, "checkpoint_minutes": 5.0},
    "infer": {"flip": True, "scales": [0.75, 1.0, 1.25], "batch_size": 1, "num_workers": 2, "stage": -1,
              "window": [], "window_stride": [], "name_suffix": "_bin.png"},
}


@pytest.mark.parametrize("section", sorted(RESOLVED_SECTIONS))
def test_recipe_resolves_to_the_pinned_values(section):
    """Every value of the section as the recipe resolves it, file-set and dataclass default alike."""
    resolved = to_dict(load_config(ROOT / "configs" / RECIPE))[section]
    assert resolved == RESOLVED_SECTIONS[section]
    # same values and the same types: 300 (int) where 300.0 is meant would hide a schema change
    assert repr(resolved) == repr(RESOLVED_SECTIONS[section])


def _assert_submission_names(pairs: list[tuple[str, str]]) -> None:
    """output_name(image, the recipe's infer.name_suffix) is the file name of the image's label."""
    from paddle_lane.inference.submission import output_name
    suffix = load_config(ROOT / "configs" / RECIPE).infer.name_suffix
    assert pairs
    for image, label in pairs:
        assert output_name(image, suffix) == Path(label).name, image


def test_default_name_suffix_gives_the_real_label_names():
    """On the real dev pairs: every image's submission name equals its ground-truth file name."""
    root = real_data_or_skip()
    with open(root / "pairs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    _assert_submission_names([(r["image"], r["label"]) for r in rows] + [(r["image"], r["label_alt"]) for r in rows])


def test_default_name_suffix_gives_the_synthetic_label_names(tmp_path):
    """On a synthetic dataset in the competition layout: the same rule, image stem + suffix = label name."""
    from paddle_lane.prepare.synth import make_dataset
    data = make_dataset(tmp_path, roads=("Road02",), records_per_road=1, frames_per_record=1,
                        width=64, height=32, palette_labels=True)
    pairs = data["pairs"]
    assert len(pairs) == 2
    _assert_submission_names([(p["image"], p["label"]) for p in pairs] + [(p["image"], p["label_alt"]) for p in pairs])


def test_each_name_a_config_may_use_has_code_and_each_piece_of_code_a_name():
    """The allowed values are declared once (config.CHOICES, read from their owners where those sit
    below the config); the implementation tables match them, and a drifted table fails at import."""
    from paddle_lane import losses
    from paddle_lane.config import CHOICES, implements
    from paddle_lane.core.labels import IGNORE_POLICIES
    from paddle_lane.core.resize import LABEL_RESIZE_RULES
    from paddle_lane.engine.schedules import SCHEDULES
    from paddle_lane.models.builder import INITIALIZERS
    from paddle_lane.prepare.weights import FORMULAS
    assert set(losses.FACTORIES) == set(CHOICES["loss.type"]) == {"ce", "dice", "focal", "lovasz"}
    assert set(SCHEDULES) == set(CHOICES["schedule.type"]) == {"poly", "cosine", "step", "cyclic", "onecycle",
                                                                "constant"}
    assert CHOICES["data.ignore_policy"] is IGNORE_POLICIES and CHOICES["data.label_resize"] is LABEL_RESIZE_RULES
    assert set(CHOICES["prepare.class_weight"]) == set(FORMULAS) == {"inverse_log", "median_frequency", "none"}
    assert set(CHOICES["model.init"]) == set(INITIALIZERS) | {"default"}
    with pytest.raises(RuntimeError, match=r"loss.type: configs may name \['ce', 'dice', 'focal', 'lovasz'\] "
                                           r"but the code implements \['ce', 'dice'\]"):
        implements("loss.type", {"ce": None, "dice": None})
