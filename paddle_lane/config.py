"""Run configuration: YAML with `_base_` inheritance and `key.path=value` overrides,
validated against typed dataclasses when loaded (unknown key, wrong type or impossible
value = one error naming the key and the file, before any work starts)."""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from paddle_lane.core.apollo_files import LABEL_NAME_SUFFIX
from paddle_lane.core.labels import IGNORE_POLICIES
from paddle_lane.core.resize import CROP_OFFSET, FULL_SIZE, LABEL_RESIZE_RULES
from paddle_lane.models.registry import BACKBONES, INITS, MODELS
from paddle_lane.prepare.weights import FORMULAS


class ConfigError(ValueError):
    """A config problem, always naming the key and the file."""


# ----------------------------------------------------------------------------- schema
@dataclass
class CleanConfig:
    max_overexposed_fraction: Optional[float] = None  # drop frames brighter than this share of saturated pixels
    min_lane_pixels: int = 0                           # drop frames with fewer lane pixels (full resolution)


@dataclass
class PrepareConfig:
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 2
    class_weight: str = "inverse_log"   # inverse_log | median_frequency | none
    clean: CleanConfig = field(default_factory=CleanConfig)
    cache: bool = False                 # write the cropped+resized cache for every stage size
    stats_reduce: int = 4               # statistics are computed on labels decimated by this factor


@dataclass
class DataConfig:
    lists_dir: str = "out/prepare"      # where prepare wrote train.csv / val.csv / stats.json
    scheme: str = "apollo8"
    ignore_policy: str = "background"   # what ignoreInEval ids, 249, 255 become in training
    crop_offset: int = CROP_OFFSET              # rows cut from the top (sky) before resizing, in frames of
    frame_height: int = FULL_SIZE[1]            # ... this height; frames of another height are cut in proportion
    use_cache: bool = True              # read prepare's resized cache when present
    label_resize: str = "nearest"       # nearest (centre-exact) | vote (area majority); see paddle_lane/core/resize.py
    num_workers: int = 2
    loader_timeout: float = 300.0       # s without a batch before a stalled loader ends the run; 0 = off
    oversample_rare: float = 0.0        # >0: frames with rare classes drawn more often (weight 1 + x)
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class AugmentConfig:
    hflip: float = 0.0                  # probability (lane semantics are mostly mirror-safe)
    scale: list = field(default_factory=lambda: [1.0, 1.0])  # random rescale range before crop
    color_jitter: float = 0.0           # max relative brightness/contrast/saturation change
    blur: float = 0.0                   # probability of a Gaussian blur
    noise: float = 0.0                  # std of additive Gaussian noise in [0,1] units
    cutout: float = 0.0                 # probability of one cutout box (label set to ignore)


@dataclass
class ModelConfig:
    name: str = "deeplabv3p"            # deeplabv3p | fcn | unet | lite | paddleseg (paddle_lane.models.zoo)
    backbone: str = "ResNet50_vd"       # deeplabv3p, fcn: ResNet{18,34,50,101}_vd | ResNeXt50_32x4d |
                                        # ResNeXt101_32x4d | ResNeXt50_64x4d | ResNeSt50 | ResNeSt101
    output_stride: int = 8              # 8 | 16 (deeplabv3p), also 32 (fcn)
    pretrained: Optional[str] = None    # whole-model weights: local path or URL
    backbone_pretrained: Optional[str] = None
    init: str = "kaiming"               # kaiming | xavier | default, for layers not loaded
    freeze_backbone_iters: int = 0
    sync_bn: bool = False
    width: int = 16                     # base channels of the lite model
    loss_coef: Optional[list] = None    # loss weight of each output in training (main first); None: PaddleSeg's
                                        # published weights for a zoo model with auxiliary heads, else [1.0]
    type: Optional[str] = None          # name: paddleseg -- a model of paddleseg's registry (PPLiteSeg, OCRNet, ...)
    args: dict = field(default_factory=dict)  # name: paddleseg -- its other arguments, written in YAML beside
                                        # `type` (backbone: {type: STDC2}, ...) and gathered here when read


@dataclass
class LossTerm:
    type: str = "ce"                    # ce | dice | focal | lovasz
    weight: float = 1.0
    class_weights: bool = False         # use prepare's class weights (ce, focal)
    gamma: float = 2.0                  # focal


@dataclass
class OptimizerConfig:
    type: str = "adam"                  # sgd | adam | adamw
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float = 0.0              # global-norm clip; 0 = off
    betas: list = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    type: str = "poly"                  # poly | cosine | step | cyclic | onecycle | constant
    warmup_iters: int = 0
    warmup_start: float = 0.1           # warm-up starts at lr * this
    power: float = 0.9
    min_lr: float = 0.0
    step_size: int = 1000
    gamma: float = 0.1
    cycle_iters: int = 1000             # cyclic: length of one triangle
    max_lr_factor: float = 10.0         # cyclic / onecycle: peak = lr * this


@dataclass
class StageConfig:
    width: int = 768
    height: int = 256
    batch_size: int = 8
    iters: int = 1000
    lr: float = 1e-3
    name: str = ""


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    val_interval: int = 200
    log_interval: int = 10
    keep_last: int = 2
    patience: int = 0                   # validations without improvement before stopping; 0 = off
    amp: Optional[str] = None           # fp16 | bf16 (GPU only)
    max_loss: float = 1e4               # a loss above this, or NaN, stops the run
    vis_images: int = 4                 # images in the VisualDL grid at each validation
    max_val_images: int = 0             # 0 = whole val list
    train_eval_images: int = 0          # training frames scored like val at each validation (the train/val gap); 0 = off
    checkpoint_interval: int = 0        # also checkpoint every N iterations (0 = off) ...
    checkpoint_minutes: float = 5.0     # ... and this long after the last save (0 = off)


@dataclass
class InferConfig:
    flip: bool = False
    scales: list = field(default_factory=lambda: [1.0])
    batch_size: int = 1
    num_workers: int = 2
    stage: int = -1                     # which stage's size is the inference size
    window: list = field(default_factory=list)         # [w, h]: sliding-window inference; [] = whole image
    window_stride: list = field(default_factory=list)  # [sx, sy]; [] = half the window
    name_suffix: str = LABEL_NAME_SUFFIX  # output name = image stem + this


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: list = field(default_factory=lambda: [LossTerm()])
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    stages: list = field(default_factory=lambda: [StageConfig()])
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    source: str = field(default="<defaults>", metadata={"internal": True})


CONFIG_FILE = "config.yml"             # the config a run folder or an export folder holds
LIST_ITEM_TYPES = {(Config, "loss"): LossTerm, (Config, "stages"): StageConfig}
PADDLESEG = "paddleseg"                 # model.name whose section passes other keys to paddleseg

CHOICES = {
    "data.ignore_policy": IGNORE_POLICIES,
    "data.label_resize": LABEL_RESIZE_RULES,
    "prepare.class_weight": tuple(FORMULAS),
    "model.name": MODELS.names(),
    "model.backbone": BACKBONES.names(),
    "model.output_stride": (8, 16, 32),
    "model.init": INITS,
    "loss.type": ("ce", "dice", "focal", "lovasz"),
    "optimizer.type": ("sgd", "adam", "adamw"),
    "schedule.type": ("poly", "cosine", "step", "cyclic", "onecycle", "constant"),
    "train.amp": (None, "fp16", "bf16"),
}


def implements(key: str, table: dict) -> dict:
    """An implementation table (losses, schedules, optimizers) for exactly the names CHOICES[key]
    lets a config use: the names are declared once, here, and code that drifts fails at import."""
    if set(table) != set(CHOICES[key]):
        raise RuntimeError(f"{key}: configs may name {sorted(CHOICES[key])} but the code implements {sorted(table)}")
    return table


# ----------------------------------------------------------------------------- loading
def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, chain: tuple = (), name: str | None = None) -> dict:
    """One file merged over its `_base_` files. Each file's own keys and types are checked
    as it is read, so an error names the file that holds the key, not the one including it."""
    if path in chain:
        raise ConfigError(f"{path}: _base_ cycle through {[str(p) for p in chain]}")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    _build(Config, data, "", name or str(path))
    merged: dict = {}
    for b in bases:
        merged = _deep_merge(merged, _read_yaml((path.parent / b).resolve(), chain + (path,)))
    return _deep_merge(merged, data)


def _set_path(tree: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            idx = _list_index(part, node, dotted, source)
            node = node[idx]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(last, node, dotted, source)] = value
    else:
        node[last] = value


def _list_index(part: str, node: list, dotted: str, source: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"{source}: override {dotted!r}: index {part!r} is not in a list of {len(node)}")
    return int(part)


def parse_overrides(opts: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for item in opts or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw) if raw != "" else None))
    return out


def load_config(path: str | os.PathLike | None = None, opts: list[str] | None = None) -> Config:
    """Read, merge `_base_` files, apply overrides, and validate. Errors name key and file."""
    source = str(path) if path else "<defaults>"
    raw = _read_yaml(Path(path).resolve(), name=source) if path else {}
    # Lists in overrides index into the merged defaults (stages.0.batch_size=4).
    tree = _deep_merge(to_dict(Config()), raw)
    tree.pop("source", None)
    for key, value in parse_overrides(opts):
        _set_path(tree, key, value, source)
    cfg = _build(Config, tree, "", source)
    cfg.source = source
    check_config(cfg)
    return cfg


def _is_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return True, args[0]
    return False, tp


def _check_scalar(tp, value, key: str, source: str):
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            pass
    if tp is list and isinstance(value, tuple):
        return list(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: key '{key}' must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, data: Any, prefix: str, source: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    if cls is ModelConfig:
        data = _gather_paddleseg_args(data, names)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        key, value = prefix + name, data[name]
        optional, tp = _is_optional(hints[name])
        if value is None:
            if not optional:
                raise ConfigError(f"{source}: key '{key}' must not be empty")
            kwargs[name] = None
        elif dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".", source)
        elif (cls, name) in LIST_ITEM_TYPES:
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{source}: key '{key}' must be a non-empty list")
            item_cls = LIST_ITEM_TYPES[(cls, name)]
            kwargs[name] = [_build(item_cls, v, f"{key}.{i}.", source) for i, v in enumerate(value)]
        else:
            kwargs[name] = _check_scalar(tp, value, key, source)
    return cls(**kwargs)


def _gather_paddleseg_args(data: dict, names: set) -> dict:
    """A paddleseg model section (name: paddleseg, or a `type`, or a backbone mapping, as a
    file that only changes arguments has): its other keys and its backbone mapping go to
    `args`. Any other section keeps unknown keys, which _build then refuses."""
    zoo = data.get("name") == PADDLESEG or data.get("type") is not None or isinstance(data.get("backbone"), dict)
    if not zoo:
        return data
    moved = {k: v for k, v in data.items() if k not in names or (k == "backbone" and isinstance(v, dict))}
    args = data.get("args") or {}
    if not isinstance(args, dict):
        return data  # _build reports the wrong type of model.args
    kept = {k: v for k, v in data.items() if k not in moved}
    return {**kept, "args": _deep_merge(args, moved)}


def _validate_model(cfg: Config) -> None:
    """model.* checks that depend on model.name."""
    m = cfg.model
    if m.name == PADDLESEG:
        from paddle_lane.models.paddleseg_models import check_spec
        if m.backbone != ModelConfig.backbone:
            _fail(cfg, "model.backbone", f"must be a mapping for name: {PADDLESEG}, e.g. backbone: {{type: {m.backbone}}}")
        problem = check_spec(m.type, m.args)
        if problem:
            _fail(cfg, *problem)
        return
    if m.type is not None or m.args:
        key = "model.type" if m.type is not None else f"model.{next(iter(m.args))}"
        _fail(cfg, key, f"is only for model.name: {PADDLESEG} (model.name is {m.name!r})")
    if m.backbone not in CHOICES["model.backbone"]:
        _fail(cfg, "model.backbone", f"must be one of {list(CHOICES['model.backbone'])}, got {m.backbone!r}")
    if m.name == "deeplabv3p" and m.output_stride not in (8, 16):
        _fail(cfg, "model.output_stride", f"must be 8 or 16 for deeplabv3p, got {m.output_stride}")


def _fail(cfg: Config, key: str, msg: str):
    raise ConfigError(f"{cfg.source}: key '{key}' {msg}")


def check_config(cfg: Config) -> None:
    """Value checks that types cannot express."""
    def choice(key, value):
        allowed = CHOICES[key]
        if value not in allowed:
            _fail(cfg, key, f"must be one of {list(allowed)}, got {value!r}")

    for key in ("data.ignore_policy", "data.label_resize", "prepare.class_weight", "model.name",
                "model.output_stride", "model.init", "optimizer.type", "schedule.type", "train.amp"):
        section, name = key.split(".")
        choice(key, getattr(getattr(cfg, section), name))
    _validate_model(cfg)
    _check_loss_and_stages(cfg)
    for key, ok, msg in _range_checks(cfg):
        if not ok:
            _fail(cfg, key, msg)
    try:
        from paddle_lane.core.labels import load_scheme
        load_scheme(cfg.data.scheme)
    except ValueError as exc:
        _fail(cfg, "data.scheme", f"is not usable: {exc}")


def _check_loss_and_stages(cfg: Config) -> None:
    for i, term in enumerate(cfg.loss):
        if term.type not in CHOICES["loss.type"]:
            _fail(cfg, f"loss.{i}.type", f"must be one of {list(CHOICES['loss.type'])}, got {term.type!r}")
        if term.weight < 0:
            _fail(cfg, f"loss.{i}.weight", f"must be >= 0, got {term.weight}")
    for i, st in enumerate(cfg.stages):
        for name in ("width", "height", "batch_size", "iters"):
            if getattr(st, name) <= 0:
                _fail(cfg, f"stages.{i}.{name}", f"must be > 0, got {getattr(st, name)}")
        if st.lr <= 0:
            _fail(cfg, f"stages.{i}.lr", f"must be > 0, got {st.lr}")


def _range_checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """(key, holds, what it must be) for every single-value range rule."""
    return [
        ("prepare.val_fraction", 0 <= cfg.prepare.val_fraction < 1, "must be in [0, 1)"),
        ("prepare.workers", cfg.prepare.workers >= 1, "must be >= 1"),
        ("prepare.stats_reduce", cfg.prepare.stats_reduce in (1, 2, 4, 8), "must be 1, 2, 4 or 8"),
        ("data.frame_height", cfg.data.frame_height > 0, "must be > 0"),
        ("data.crop_offset", 0 <= cfg.data.crop_offset < cfg.data.frame_height,
         f"must be in [0, data.frame_height={cfg.data.frame_height})"),
        ("data.num_workers", cfg.data.num_workers >= 0, "must be >= 0"),
        ("data.loader_timeout", cfg.data.loader_timeout >= 0, "must be >= 0 (0 = no limit)"),
        ("data.mean", len(cfg.data.mean) == 3, "must have 3 values"),
        ("data.std", len(cfg.data.std) == 3 and all(s > 0 for s in cfg.data.std), "must have 3 positive values"),
        ("augment.hflip", 0 <= cfg.augment.hflip <= 1, "must be a probability in [0, 1]"),
        ("augment.blur", 0 <= cfg.augment.blur <= 1, "must be a probability in [0, 1]"),
        ("augment.cutout", 0 <= cfg.augment.cutout <= 1, "must be a probability in [0, 1]"),
        ("augment.scale", len(cfg.augment.scale) == 2 and 0 < cfg.augment.scale[0] <= cfg.augment.scale[1],
         "must be [min, max] with 0 < min <= max"),
        ("train.val_interval", cfg.train.val_interval > 0, "must be > 0"),
        ("train.log_interval", cfg.train.log_interval > 0, "must be > 0"),
        ("train.keep_last", cfg.train.keep_last >= 1, "must be >= 1"),
        ("train.checkpoint_interval", cfg.train.checkpoint_interval >= 0, "must be >= 0 (0 = off)"),
        ("train.train_eval_images", cfg.train.train_eval_images >= 0, "must be >= 0 (0 = off)"),
        ("train.checkpoint_minutes", cfg.train.checkpoint_minutes >= 0, "must be >= 0 (0 = off)"),
        ("model.freeze_backbone_iters", cfg.model.freeze_backbone_iters >= 0, "must be >= 0"),
        ("model.loss_coef", cfg.model.loss_coef is None or (
            isinstance(cfg.model.loss_coef, list) and len(cfg.model.loss_coef) >= 1
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) and c >= 0 for c in cfg.model.loss_coef)),
         "must be a list of weights >= 0, main output first"),
        ("infer.scales", len(cfg.infer.scales) > 0 and all(s > 0 for s in cfg.infer.scales), "must be positive numbers"),
        ("infer.stage", -len(cfg.stages) <= cfg.infer.stage < len(cfg.stages), f"must index one of {len(cfg.stages)} stages"),
        ("schedule.warmup_iters", cfg.schedule.warmup_iters >= 0, "must be >= 0"),
        ("infer.window", len(cfg.infer.window) in (0, 2) and all(isinstance(v, int) and v > 0 for v in cfg.infer.window),
         "must be [] or [w, h] with positive integers"),
        ("infer.window_stride", len(cfg.infer.window_stride) in (0, 2) and all(isinstance(v, int) and v > 0
                                                                           for v in cfg.infer.window_stride),
         "must be [] or [sx, sy] with positive integers"),
    ]


# ----------------------------------------------------------------------------- saving
def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config (what actually ran) atomically."""
    from paddle_lane.core.io_utils import atomic_write_text
    data = to_dict(cfg)
    data.pop("source", None)
    atomic_write_text(path, f"# resolved from {cfg.source}\n" + yaml.safe_dump(data, sort_keys=False))
