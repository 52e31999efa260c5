"""Build the network named by `ModelConfig` (a factory of the MODELS registry, see
paddle_lane.models.zoo), initialise it, load weights with a strict shape check, and freeze
its backbone."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple, Optional

import paddle
import paddle.nn as nn

from paddle_lane.models.download import fetch_weights
from paddle_lane.models.registry import INITS, MODELS

if TYPE_CHECKING:  # the config layer sits above the models it names
    from paddle_lane.config import ModelConfig

log = logging.getLogger(__name__)

INITIALIZERS = {"kaiming": nn.initializer.KaimingNormal, "xavier": nn.initializer.XavierUniform}
assert set(INITIALIZERS) | {"default"} == set(INITS), "models.registry.INITS and INITIALIZERS disagree"
BN_TYPES = (nn.BatchNorm, nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.SyncBatchNorm)


class SegModel(nn.Layer):
    """A network whose forward returns one logits tensor [N, C, H, W] at the input size."""

    def __init__(self, net: nn.Layer, backbone: Optional[nn.Layer]):
        super().__init__()
        self.net = net
        # Kept out of the sublayer registry: it already lives inside `net`, and a second
        # registration would duplicate its parameters in state_dict.
        self.__dict__["_backbone"] = backbone

    @property
    def backbone(self) -> Optional[nn.Layer]:
        """The feature extractor that `set_backbone_trainable` freezes (None if absent)."""
        return self._backbone

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.net(x)
        # paddleseg models return a list of logits (main output first).
        return out[0] if isinstance(out, (list, tuple)) else out


class AllOutputs(nn.Layer):
    """Training's view of a SegModel: the list of every output, main first (a zoo model's
    auxiliary heads too), so each gets its loss. Inference and export use the SegModel itself,
    whose forward stays one tensor (and one graph for to_static)."""

    def __init__(self, model: SegModel):
        super().__init__()
        self.model = model

    def forward(self, x: paddle.Tensor) -> list:
        out = self.model.net(x)
        return list(out) if isinstance(out, (list, tuple)) else [out]


class LoadReport(NamedTuple):
    """What a weights file filled in: loaded, absent from the file, or unused."""
    loaded: list
    missing: list
    unexpected: list


def build_model(cfg: ModelConfig, num_classes: int) -> SegModel:
    """The configured model: initialised, weights loaded, BN synced across cards if asked."""
    if cfg.name not in MODELS:
        raise ValueError(f"model.name must be one of {list(MODELS.names())}, got {cfg.name!r}")
    net, backbone = MODELS.get(cfg.name)(cfg, num_classes)
    model = SegModel(net, backbone)
    # Initialise everything first; loading then overwrites whatever the files provide.
    init_weights(model, cfg.init)
    if cfg.backbone_pretrained:
        if backbone is None:
            raise ValueError(f"model {cfg.name!r} has no backbone for backbone_pretrained")
        load_weights(backbone, cfg.backbone_pretrained)
    if cfg.pretrained:
        load_weights(net, cfg.pretrained)
    return maybe_sync_bn(model, cfg.sync_bn)


# ----------------------------------------------------------------------------- init
def init_weights(layer: nn.Layer, kind: str) -> None:
    """Conv2D weights from Kaiming-normal or Xavier-uniform, BN to identity; 'default' keeps Paddle's."""
    if kind == "default":
        return
    if kind not in INITIALIZERS:
        raise ValueError(f"model.init must be one of {list(INITS)}, got {kind!r}")
    conv_init, one, zero = INITIALIZERS[kind](), nn.initializer.Constant(1.0), nn.initializer.Constant(0.0)
    for sub in layer.sublayers(include_self=True):
        if isinstance(sub, nn.Conv2D):
            conv_init(sub.weight)
        elif isinstance(sub, BN_TYPES) and sub.weight is not None:
            one(sub.weight)
            zero(sub.bias)


def maybe_sync_bn(model: nn.Layer, enabled: bool) -> nn.Layer:
    """SyncBatchNorm only when asked and several cards train together."""
    if enabled and paddle.distributed.get_world_size() > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


# ----------------------------------------------------------------------------- loading
def load_weights(layer: nn.Layer, path: str) -> LoadReport:
    """Load a .pdparams (local path, checkpoint dir or URL) into `layer`, refusing a wrong file."""
    state = _read_state(_fetch(path), path)
    own = layer.state_dict()
    state = _strip_prefix(state, own)
    _check_compatible(own, state, path)
    layer.set_state_dict({k: v for k, v in state.items() if k in own})
    report = LoadReport(loaded=[k for k in own if k in state], missing=[k for k in own if k not in state],
                        unexpected=[k for k in state if k not in own])
    _log_report(report, path, type(layer).__name__)
    return report


def _fetch(path: str) -> str:
    """A local file for `path`: a file, a checkpoint folder, or a URL (downloaded once, cached)."""
    return fetch_weights(path)


def _read_state(local: str, path: str) -> dict:
    """The file's array entries; other entries (metadata) are dropped."""
    state = paddle.load(local)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict (got {type(state).__name__})")
    return {k: v for k, v in state.items() if hasattr(v, "shape")}


def _strip_prefix(state: dict, own: dict) -> dict:
    """Drop the key prefix (e.g. 'net.', 'backbone.') that makes most names match `own`."""
    prefixes = {""}
    for key in state:
        parts = key.split(".")
        prefixes.update(".".join(parts[:i]) + "." for i in (1, 2) if len(parts) > i)
    best = max(sorted(prefixes), key=lambda p: sum(k.startswith(p) and k[len(p):] in own for k in state))
    return {k[len(best):]: v for k, v in state.items() if k.startswith(best)} if best else state


def _check_compatible(own: dict, state: dict, path: str) -> None:
    """Raise when no name matches or a matching name has another shape."""
    common = [k for k in own if k in state]
    if not common:
        raise ValueError(
            f"{path}: checkpoint does not match the model: no parameter names in common "
            f"(model has e.g. {next(iter(own), None)!r}, file has e.g. {next(iter(state), None)!r})")
    for key in common:
        want, got = list(own[key].shape), list(state[key].shape)
        if want != got:
            raise ValueError(f"{path}: checkpoint does not match the model: {key!r} has shape {got} "
                             f"in the file but {want} in the model")


def _log_report(report: LoadReport, path: str, target: str) -> None:
    """One line per load, plus the first names left uninitialised or unused."""
    log.info("%s: loaded %d/%d tensors into %s", path, len(report.loaded),
             len(report.loaded) + len(report.missing), target)
    if report.missing:
        log.warning("%s: %d model tensors not in the file (kept their init), e.g. %s",
                    path, len(report.missing), report.missing[:5])
    if report.unexpected:
        log.info("%s: %d file tensors unused, e.g. %s", path, len(report.unexpected), report.unexpected[:5])


# ----------------------------------------------------------------------------- parameters
def _running_stats(model: nn.Layer) -> set:
    """ids of BN running mean/variance: Paddle parameters, but never trained."""
    return {id(p) for sub in model.sublayers(include_self=True) if isinstance(sub, BN_TYPES)
            for p in (sub._mean, sub._variance)}


def set_backbone_trainable(model: SegModel, trainable: bool) -> None:
    """Freeze (or unfreeze) backbone weights for the first `freeze_backbone_iters` iterations."""
    if model.backbone is None:
        raise ValueError(f"{type(model.net).__name__} has no backbone to freeze")
    stats = _running_stats(model.backbone)
    for p in model.backbone.parameters():
        if id(p) not in stats:
            p.stop_gradient = not trainable


def count_params(model: nn.Layer) -> int:
    """Learnable weights (frozen or not), without BN running statistics."""
    stats = _running_stats(model)
    return sum(int(p.size) for p in model.parameters() if id(p) not in stats)
