"""ResNeXt and ResNeSt backbones for the segmentation heads.

Contract (the one of paddleseg's ResNet_vd, so DeepLabV3+ and FCN take them unchanged):
`feat_channels` = [256, 512, 1024, 2048] and `forward(x)` -> the four stage outputs at strides
4, 8, 16, 32 of the input; with `output_stride` 16 the last stage, with 8 the last two, keep
the stride of the stage before and dilate their 3x3 convolutions instead (rate 2, then 4).

Sublayer names follow PaddleClas's ImageNet models (ppcls/arch/backbone/model_zoo/resnext.py,
resnest.py), so `paddle.save(model.state_dict())` files of PaddleClas load tensor for tensor:

    ResNeXt: conv (7x7 stem), bb_{stage}_{block}.{conv0,conv1,conv2,short}, each a ConvBN
             with sublayers _conv and _batch_norm; out (the classifier, unused here).
    ResNeSt: stem.{conv1,conv2,conv3} (deep stem), layer{k}.layer{k}_bottleneck_{i}.{conv1,
             conv2 (split attention: conv1, conv2, conv3), conv3, conv4, _batch_norm}; out.

BatchNorm keeps Paddle's (and paddleseg's) defaults: momentum 0.9, epsilon 1e-5.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

FEAT_CHANNELS = [256, 512, 1024, 2048]
# (stride, dilation) of the four stages; the first stage follows the stride-4 stem.
STAGE_PLANS = {32: [(1, 1), (2, 1), (2, 1), (2, 1)],
               16: [(1, 1), (2, 1), (2, 1), (1, 2)],
               8: [(1, 1), (2, 1), (1, 2), (1, 4)]}
DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


def stage_plan(output_stride: int) -> list[tuple[int, int]]:
    """Per stage (stride, dilation) reaching `output_stride` (8, 16 or 32)."""
    if output_stride not in STAGE_PLANS:
        raise ValueError(f"output_stride must be one of {sorted(STAGE_PLANS)}, got {output_stride}")
    return STAGE_PLANS[output_stride]


def blocks_per_stage(depth: int) -> list[int]:
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
    return DEPTHS[depth]


class ConvBN(nn.Layer):
    """Convolution (no bias) + BatchNorm (+ ReLU): PaddleClas's ConvBNLayer, `_conv` / `_batch_norm`."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1, relu: bool = True):
        super().__init__()
        self._conv = nn.Conv2D(cin, cout, kernel, stride=stride, padding=dilation * (kernel - 1) // 2,
                               dilation=dilation, groups=groups, bias_attr=False)
        self._batch_norm = nn.BatchNorm2D(cout)
        self.relu = relu

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self._batch_norm(self._conv(x))
        return F.relu(x) if self.relu else x


class StagedBackbone(nn.Layer):
    """A stem then four stages of blocks; returns every stage's output."""

    def __init__(self):
        super().__init__()
        self.feat_channels = list(FEAT_CHANNELS)
        self.stages: list[list[nn.Layer]] = []   # the blocks, registered under PaddleClas's names

    def stem_forward(self, x: paddle.Tensor) -> paddle.Tensor:
        raise NotImplementedError

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        x = self.stem_forward(x)
        feats = []
        for blocks in self.stages:
            for block in blocks:
                x = block(x)
            feats.append(x)
        return feats


# ----------------------------------------------------------------------------- ResNeXt
class ResNeXtBlock(nn.Layer):
    """1x1 -> grouped 3x3 (carries the stride or the dilation) -> 1x1, plus the shortcut."""

    def __init__(self, cin: int, width: int, cout: int, stride: int, dilation: int, groups: int):
        super().__init__()
        self.conv0 = ConvBN(cin, width, 1)
        self.conv1 = ConvBN(width, width, 3, stride=stride, dilation=dilation, groups=groups)
        self.conv2 = ConvBN(width, cout, 1, relu=False)
        self.short = ConvBN(cin, cout, 1, stride=stride, relu=False) if (stride, cin) != (1, cout) else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self.conv2(self.conv1(self.conv0(x)))
        return F.relu(y + (x if self.short is None else self.short(x)))


class ResNeXt(StagedBackbone):
    """ResNeXt (Xie et al. 2017), PaddleClas layout: 7x7 stem, grouped-3x3 bottlenecks of
    width cardinality * base_width * 2**stage (32x4d: 128 ... 1024; 64x4d: 256 ... 2048)."""

    def __init__(self, depth: int = 50, cardinality: int = 32, base_width: int = 4, output_stride: int = 8):
        super().__init__()
        self.conv = ConvBN(3, 64, 7, stride=2)
        self.pool = nn.MaxPool2D(3, stride=2, padding=1)
        cin = 64
        for s, (n, (stride, dilation)) in enumerate(zip(blocks_per_stage(depth), stage_plan(output_stride))):
            width, cout = cardinality * base_width * 2 ** s, FEAT_CHANNELS[s]
            blocks = []
            for i in range(n):
                block = ResNeXtBlock(cin, width, cout, stride if i == 0 else 1, dilation, cardinality)
                blocks.append(self.add_sublayer(f"bb_{s}_{i}", block))
                cin = cout
            self.stages.append(blocks)

    def stem_forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.pool(self.conv(x))


# ----------------------------------------------------------------------------- ResNeSt
class SplitAttention(nn.Layer):
    """ResNeSt's split-attention 3x3 (PaddleClas's SplatConv), cardinality 1: a grouped conv
    makes `radix` splits; their sum, pooled, gives per-split channel weights (softmax over the
    splits) that mix the splits back into `channels` maps."""

    def __init__(self, channels: int, radix: int = 2, dilation: int = 1, reduction: int = 4):
        super().__init__()
        if radix < 2:
            raise ValueError(f"split attention needs radix >= 2, got {radix}")
        self.channels, self.radix = channels, radix
        inner = max(channels * radix // reduction, 32)
        self.conv1 = ConvBN(channels, channels * radix, 3, dilation=dilation, groups=radix)
        self.conv2 = ConvBN(channels, inner, 1)
        self.conv3 = nn.Conv2D(inner, channels * radix, 1, bias_attr=False)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        splits = paddle.split(self.conv1(x), self.radix, axis=1)
        gap = F.adaptive_avg_pool2d(paddle.add_n(splits), 1)
        weights = self.conv3(self.conv2(gap)).reshape([-1, self.radix, self.channels])
        weights = F.softmax(weights, axis=1).reshape([-1, self.radix * self.channels, 1, 1])
        return paddle.add_n([w * s for w, s in zip(paddle.split(weights, self.radix, axis=1), splits)])


class ResNeStBlock(nn.Layer):
    """1x1 -> split-attention 3x3 -> [avd: 3x3 average pool carrying the stride] -> 1x1; the
    projection shortcut average-pools first (avg-down) and then applies a 1x1 conv + BN."""

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, radix: int, avd: bool):
        super().__init__()
        cout = planes * 4
        self.conv1 = ConvBN(cin, planes, 1)
        self.conv2 = SplitAttention(planes, radix, dilation)
        self.avd = nn.AvgPool2D(3, stride=stride, padding=1) if avd else None
        self.conv3 = ConvBN(planes, cout, 1, relu=False)
        self.project = (stride, cin) != (1, cout)
        if self.project:
            # ceil_mode keeps odd sizes equal to the avd branch's (PaddleClas floors, ResNeSt ceils).
            self.down = nn.AvgPool2D(stride, stride=stride, ceil_mode=True) if stride > 1 else None
            self.conv4 = nn.Conv2D(cin, cout, 1, bias_attr=False)
            self._batch_norm = nn.BatchNorm2D(cout)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self.conv2(self.conv1(x))
        if self.avd is not None:
            y = self.avd(y)
        y = self.conv3(y)
        short = x
        if self.project:
            short = self._batch_norm(self.conv4(x if self.down is None else self.down(x)))
        return F.relu(y + short)


class ResNeStStage(nn.Layer):
    """PaddleClas's ResNeStLayer: blocks registered as `<name>_bottleneck_<i>`."""

    def __init__(self, name: str, blocks: list[nn.Layer]):
        super().__init__()
        self.blocks = [self.add_sublayer(f"{name}_bottleneck_{i}", b) for i, b in enumerate(blocks)]


class ResNeSt(StagedBackbone):
    """ResNeSt (Zhang et al. 2020) as PaddleClas's ResNeSt50/101: deep stem (3x3 convs of
    stem_width, stem_width, 2*stem_width), radix-2 split attention, cardinality 1, bottleneck
    width 64, avg-down shortcuts, avd (3x3 avg pool after the split-attention conv) in the
    first block of stages 2-4."""

    def __init__(self, depth: int = 50, stem_width: int = 32, radix: int = 2, output_stride: int = 8):
        super().__init__()
        self.stem = nn.Sequential(("conv1", ConvBN(3, stem_width, 3, stride=2)),
                                  ("conv2", ConvBN(stem_width, stem_width, 3)),
                                  ("conv3", ConvBN(stem_width, 2 * stem_width, 3)))
        self.pool = nn.MaxPool2D(3, stride=2, padding=1)
        cin = 2 * stem_width
        for s, (n, (stride, dilation)) in enumerate(zip(blocks_per_stage(depth), stage_plan(output_stride))):
            planes = 64 * 2 ** s
            blocks = []
            for i in range(n):
                blocks.append(ResNeStBlock(cin, planes, stride if i == 0 else 1, dilation, radix,
                                           avd=i == 0 and s > 0))
                cin = planes * 4
            stage = ResNeStStage(f"layer{s + 1}", blocks)
            setattr(self, f"layer{s + 1}", stage)
            self.stages.append(stage.blocks)

    def stem_forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.pool(self.stem(x))
