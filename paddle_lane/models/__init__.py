"""Segmentation models: `build_model(cfg.model, num_classes)` and its helpers.

The names below load on first use, so `paddle_lane.models.registry` (read by the config to
validate model.name and model.backbone) is importable without loading Paddle."""
from __future__ import annotations

import importlib

_EXPORTS = {"LoadReport": "builder", "SegModel": "builder", "build_model": "builder", "count_params": "builder",
            "init_weights": "builder", "load_weights": "builder", "set_backbone_trainable": "builder",
            "LiteSeg": "lite", "BACKBONES": "registry", "MODELS": "registry"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
