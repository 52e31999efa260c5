"""FCN-8s style head (Long et al. 2015) on any backbone with `feat_channels` and four
stage outputs: a 3x3 conv + BN + ReLU and a 1x1 classifier on the deepest features, 1x1
classifiers on the stride-16 and stride-8 ones, each coarser score map upsampled to the
next one's size and added; the sum is resized bilinearly to the input."""
from __future__ import annotations

import paddle
import paddle.nn as nn

from paddle_lane.models.lite import conv_bn_relu, upsample_to


class FCN(nn.Layer):
    """Logits [N, C, H, W] at the input size from backbone features 1, 2, 3 (strides 8/16/32,
    or 8/8/8 and 8/16/16 when the backbone dilates)."""

    def __init__(self, num_classes: int, backbone: nn.Layer, channels: int = 512, indices=(1, 2, 3)):
        super().__init__()
        self.backbone = backbone
        *skips, self.deepest = indices
        self.skips = skips[::-1]                    # fused deepest first: stride 16, then 8
        self.conv = conv_bn_relu(backbone.feat_channels[self.deepest], channels)
        self.score = nn.Conv2D(channels, num_classes, 1)
        self.skip_scores = nn.LayerList([nn.Conv2D(backbone.feat_channels[i], num_classes, 1) for i in self.skips])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        feats = self.backbone(x)
        logits = self.score(self.conv(feats[self.deepest]))
        for score, i in zip(self.skip_scores, self.skips):
            logits = score(feats[i]) + upsample_to(logits, feats[i])
        return upsample_to(logits, x)
