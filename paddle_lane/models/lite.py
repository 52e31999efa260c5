"""A small encoder-decoder for CPU tests and demos: four stride-2 stages, skip
connections, bilinear upsampling back to the input size."""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution + BN + ReLU, the only building block of the lite model."""
    return nn.Sequential(
        nn.Conv2D(cin, cout, 3, stride=stride, padding=1, bias_attr=False),
        nn.BatchNorm2D(cout),
        nn.ReLU(),
    )


def stage_channels(width: int) -> list[int]:
    """Channels of the four encoder stages; the deepest stays at 4x to keep params low."""
    return [width, 2 * width, 4 * width, 4 * width]


def upsample_to(x: paddle.Tensor, ref: paddle.Tensor) -> paddle.Tensor:
    """Bilinear resize of `x` to the spatial size of `ref` (odd sizes included)."""
    # paddle.shape keeps the size dynamic, so the model also exports with jit.save.
    return F.interpolate(x, size=paddle.shape(ref)[2:], mode="bilinear", align_corners=False)


class LiteEncoder(nn.Layer):
    """Four stages at 1/2, 1/4, 1/8, 1/16 of the input; returns every stage's output."""

    def __init__(self, width: int = 16, in_channels: int = 3):
        super().__init__()
        chans = stage_channels(width)
        cins = [in_channels] + chans[:-1]
        self.stages = nn.LayerList(
            [nn.Sequential(conv_bn_relu(ci, co, stride=2), conv_bn_relu(co, co)) for ci, co in zip(cins, chans)]
        )
        self.feat_channels = chans

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class LiteDecoder(nn.Layer):
    """Upsample the deepest feature step by step, fusing each shallower skip with one conv."""

    def __init__(self, feat_channels: list[int]):
        super().__init__()
        deep = feat_channels[-1]
        fuses = []
        for skip in reversed(feat_channels[:-1]):
            fuses.append(conv_bn_relu(deep + skip, skip))
            deep = skip
        self.fuses = nn.LayerList(fuses)

    def forward(self, feats: list[paddle.Tensor]) -> paddle.Tensor:
        x = feats[-1]
        for fuse, skip in zip(self.fuses, reversed(feats[:-1])):
            x = fuse(paddle.concat([upsample_to(x, skip), skip], axis=1))
        return x


class LiteSeg(nn.Layer):
    """Lite segmentation network: logits [N, C, H, W] at the input size."""

    def __init__(self, num_classes: int, width: int = 16, in_channels: int = 3):
        super().__init__()
        self.encoder = LiteEncoder(width, in_channels)
        self.decoder = LiteDecoder(self.encoder.feat_channels)
        self.cls = nn.Conv2D(self.encoder.feat_channels[0], num_classes, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        logits = self.cls(self.decoder(self.encoder(x)))
        return upsample_to(logits, x)
