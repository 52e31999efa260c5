"""Segmentation models: `build_model(cfg.model, num_classes)` and its helpers."""
from paddle_lane.models.builder import (LoadReport, SegModel, build_model, count_params, init_weights,
                                        load_weights, set_backbone_trainable)
from paddle_lane.models.lite import LiteSeg

__all__ = ["LiteSeg", "LoadReport", "SegModel", "build_model", "count_params", "init_weights",
           "load_weights", "set_backbone_trainable"]
