"""Every buildable model and backbone, one decorated function each. Imports stay inside the
functions: listing the names (config validation) loads neither Paddle nor paddleseg.

Models: fn(model_cfg, num_classes) -> (network, its backbone or None); the network returns
logits at the input size (or a list whose first entry is). Backbones: fn(output_stride=8)
-> a layer with `feat_channels` returning four feature maps (strides 4, 8, 16, 32 before
dilation)."""
from __future__ import annotations

from paddle_lane.models.registry import BACKBONES, MODELS

ASPP_RATIOS = {8: (1, 12, 24, 36), 16: (1, 6, 12, 18)}  # PaddleSeg's DeepLabV3+ settings


# ----------------------------------------------------------------------------- models
@MODELS.register()
def deeplabv3p(cfg, num_classes: int):
    """paddleseg's DeepLabV3+ (low-level features from stage 1, ASPP on stage 4), as PaddleSeg's configs."""
    from paddleseg.models import DeepLabV3P
    if cfg.output_stride not in ASPP_RATIOS:
        raise ValueError(f"model.output_stride must be 8 or 16 for deeplabv3p, got {cfg.output_stride}")
    backbone = BACKBONES.get(cfg.backbone)(output_stride=cfg.output_stride)
    net = DeepLabV3P(num_classes, backbone, backbone_indices=(0, 3),
                     aspp_ratios=ASPP_RATIOS[cfg.output_stride], align_corners=False)
    return net, net.backbone


@MODELS.register()
def fcn(cfg, num_classes: int):
    """FCN-8s style skip fusion of the stride 8/16/32 features (paddle_lane.models.fcn)."""
    from paddle_lane.models.fcn import FCN
    net = FCN(num_classes, BACKBONES.get(cfg.backbone)(output_stride=cfg.output_stride))
    return net, net.backbone


@MODELS.register()
def unet(cfg, num_classes: int):
    """paddleseg's UNet; its encoder plays the backbone's part."""
    from paddleseg.models import UNet
    net = UNet(num_classes, align_corners=False)
    return net, getattr(net, "encode", None)


@MODELS.register()
def lite(cfg, num_classes: int):
    """The small CPU-friendly encoder-decoder."""
    from paddle_lane.models.lite import LiteSeg
    net = LiteSeg(num_classes, width=cfg.width)
    return net, net.encoder


@MODELS.register()
def paddleseg(cfg, num_classes: int):
    """Any model of paddleseg's registry: `model.type` plus its arguments (`model.args`)."""
    from paddle_lane.models.paddleseg_models import build_paddleseg
    net = build_paddleseg(cfg.type, cfg.args, num_classes)
    return net, getattr(net, "backbone", None)


# ----------------------------------------------------------------------------- backbones
def _paddleseg_resnet_vd(name: str):
    def build(output_stride: int = 8):
        from paddleseg.models import backbones
        return getattr(backbones, name)(output_stride=output_stride)
    build.__name__ = name
    build.__doc__ = f"paddleseg's {name} (PaddleClas ImageNet weights load as they are)."
    return BACKBONES.register(name)(build)


for _name in ("ResNet18_vd", "ResNet34_vd", "ResNet50_vd", "ResNet101_vd"):
    _paddleseg_resnet_vd(_name)


@BACKBONES.register()
def ResNeXt50_32x4d(output_stride: int = 8):
    from paddle_lane.models.backbones import ResNeXt
    return ResNeXt(50, cardinality=32, base_width=4, output_stride=output_stride)


@BACKBONES.register()
def ResNeXt101_32x4d(output_stride: int = 8):
    from paddle_lane.models.backbones import ResNeXt
    return ResNeXt(101, cardinality=32, base_width=4, output_stride=output_stride)


@BACKBONES.register()
def ResNeXt50_64x4d(output_stride: int = 8):
    from paddle_lane.models.backbones import ResNeXt
    return ResNeXt(50, cardinality=64, base_width=4, output_stride=output_stride)


@BACKBONES.register()
def ResNeSt50(output_stride: int = 8):
    from paddle_lane.models.backbones import ResNeSt
    return ResNeSt(50, stem_width=32, output_stride=output_stride)


@BACKBONES.register()
def ResNeSt101(output_stride: int = 8):
    from paddle_lane.models.backbones import ResNeSt
    return ResNeSt(101, stem_width=64, output_stride=output_stride)
