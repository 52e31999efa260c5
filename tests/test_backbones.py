"""ResNeXt / ResNeSt backbones, the FCN head and PaddleSeg zoo models through our pipeline:
feature strides and channels at every output stride, block counts of the 101-layer variants,
PaddleClas ImageNet checkpoints loading tensor for tensor, logits at the input size, a few
training steps lowering the loss, save/load and ONNX export equal to dygraph, and one-line
config errors for a wrong zoo type or argument.

Expected values come from outside the code under test: the PaddleClas key names and shapes
are generated here from the naming rules of PaddleClas's resnext.py / resnest.py, and the
parameter counts are torchvision's and the ResNeSt authors' published ones."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from conftest import EXPORT_CONFIG, EXPORT_OPTS
from paddle_lane.config import ConfigError, ModelConfig, load_config
from paddle_lane.models import build_model, load_weights
from paddle_lane.models.registry import BACKBONES
from test_models import adam_losses, infer

X = (1, 3, 64, 128)
SMALLEST = ["ResNeXt50_32x4d", "ResNeSt50"]          # one per family for the per-head matrix
NEW_BACKBONES = ["ResNeXt50_32x4d", "ResNeXt101_32x4d", "ResNeXt50_64x4d", "ResNeSt50", "ResNeSt101"]
STRIDES = {8: [4, 8, 8, 8], 16: [4, 8, 16, 16], 32: [4, 8, 16, 32]}


def backbone(name: str, output_stride: int = 8):
    return BACKBONES.get(name)(output_stride=output_stride)


# ----------------------------------------------------------------------------- PaddleClas names
def conv_bn(prefix: str, cout: int, cin_per_group: int, k: int, bn: str = "._batch_norm") -> dict:
    """PaddleClas's ConvBNLayer: `_conv` (no bias) and a BatchNorm with four tensors."""
    keys = {f"{prefix}._conv.weight": [cout, cin_per_group, k, k]}
    keys.update({f"{prefix}{bn}.{t}": [cout] for t in ("weight", "bias", "_mean", "_variance")})
    return keys


def paddleclas_resnext(layers: int, cardinality: int) -> dict:
    """state_dict names and shapes of PaddleClas's ResNeXt(layers, cardinality) (resnext.py)."""
    depth = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[layers]
    num_channels = [64, 256, 512, 1024]
    num_filters = [128, 256, 512, 1024] if cardinality == 32 else [256, 512, 1024, 2048]
    keys = conv_bn("conv", 64, 3, 7)
    for block in range(4):
        nf = num_filters[block]
        out = nf * 2 if cardinality == 32 else nf
        for i in range(depth[block]):
            cin = num_channels[block] if i == 0 else nf * (64 // cardinality)
            name = f"bb_{block}_{i}"
            keys.update(conv_bn(f"{name}.conv0", nf, cin, 1))
            keys.update(conv_bn(f"{name}.conv1", nf, nf // cardinality, 3))
            keys.update(conv_bn(f"{name}.conv2", out, nf, 1))
            if i == 0:
                keys.update(conv_bn(f"{name}.short", out, cin, 1))
    keys.update({"out.weight": [2048, 1000], "out.bias": [1000]})
    return keys


def paddleclas_resnest(layers: list[int], stem_width: int, radix: int = 2) -> dict:
    """state_dict names and shapes of PaddleClas's ResNeSt (resnest.py; groups 1, width 64)."""
    keys = conv_bn("stem.conv1", stem_width, 3, 3)
    keys.update(conv_bn("stem.conv2", stem_width, stem_width, 3))
    keys.update(conv_bn("stem.conv3", stem_width * 2, stem_width, 3))
    inplanes = stem_width * 2
    for n, (planes, blocks) in enumerate(zip([64, 128, 256, 512], layers), start=1):
        for i in range(blocks):
            name = f"layer{n}.layer{n}_bottleneck_{i}"
            inter = max(planes * radix // 4, 32)
            keys.update(conv_bn(f"{name}.conv1", planes, inplanes, 1))
            keys.update(conv_bn(f"{name}.conv2.conv1", planes * radix, planes // radix, 3))
            keys.update(conv_bn(f"{name}.conv2.conv2", inter, planes, 1))
            keys[f"{name}.conv2.conv3.weight"] = [planes * radix, inter, 1, 1]
            keys.update(conv_bn(f"{name}.conv3", planes * 4, planes, 1))
            if i == 0:   # stride 2 or inplanes != planes * 4: avg-down shortcut, conv4 + _batch_norm
                keys[f"{name}.conv4.weight"] = [planes * 4, inplanes, 1, 1]
                keys.update({f"{name}._batch_norm.{t}": [planes * 4] for t in ("weight", "bias", "_mean", "_variance")})
            inplanes = planes * 4
    keys.update({"out.weight": [2048, 1000], "out.bias": [1000]})
    return keys


PADDLECLAS = {
    "ResNeXt50_32x4d": lambda: paddleclas_resnext(50, 32),
    "ResNeXt101_32x4d": lambda: paddleclas_resnext(101, 32),
    "ResNeXt50_64x4d": lambda: paddleclas_resnext(50, 64),
    "ResNeSt50": lambda: paddleclas_resnest([3, 4, 6, 3], stem_width=32),
    "ResNeSt101": lambda: paddleclas_resnest([3, 4, 23, 3], stem_width=64),
}


def stage_blocks(net) -> list[int]:
    """Blocks per stage, read from the PaddleClas sublayer names (bb_<stage>_<i> / layer<k>_bottleneck_<i>)."""
    counts = [0, 0, 0, 0]
    for name, _ in net.named_children():
        if name.startswith("bb_"):
            counts[int(name.split("_")[1])] += 1
    for k in range(4):
        layer = getattr(net, f"layer{k + 1}", None)
        counts[k] += sum(1 for n, _ in layer.named_children() if "_bottleneck_" in n) if layer else 0
    return counts


@pytest.mark.parametrize("name, blocks", [
    ("ResNeXt50_32x4d", [3, 4, 6, 3]), ("ResNeXt101_32x4d", [3, 4, 23, 3]), ("ResNeXt50_64x4d", [3, 4, 6, 3]),
    ("ResNeSt50", [3, 4, 6, 3]), ("ResNeSt101", [3, 4, 23, 3])])
def test_parameter_names_shapes_and_blocks_are_paddleclas(name, blocks):
    """Every backbone tensor has PaddleClas's name and shape (only the classifier is extra), and
    the stages hold the blocks of the 50/101-layer networks."""
    net = backbone(name)
    own = {k: list(v.shape) for k, v in net.state_dict().items()}
    theirs = PADDLECLAS[name]()
    assert own == {k: v for k, v in theirs.items() if not k.startswith("out.")}
    assert stage_blocks(net) == blocks


@pytest.mark.parametrize("name", SMALLEST)
def test_paddleclas_checkpoint_loads_through_backbone_pretrained(tmp_path, name):
    """A PaddleClas-named .pdparams fills every backbone tensor via model.backbone_pretrained."""
    rng = np.random.default_rng(0)
    state = {k: rng.standard_normal(shape).astype("float32") for k, shape in PADDLECLAS[name]().items()}
    path = tmp_path / f"{name}_pretrained.pdparams"
    paddle.save(state, str(path))
    model = build_model(ModelConfig(name="fcn", backbone=name, output_stride=32, backbone_pretrained=str(path)), 3)
    loaded = model.backbone.state_dict()
    assert len(loaded) == len(state) - 2
    for key, value in loaded.items():
        np.testing.assert_array_equal(value.numpy(), state[key], err_msg=key)
    report = load_weights(model.backbone, str(path))
    assert not report.missing and sorted(report.unexpected) == ["out.bias", "out.weight"]


# ----------------------------------------------------------------------------- structure
def check_features(net, output_stride: int) -> None:
    """Four maps of 256/512/1024/2048 channels at strides 4, 8, 16, 32, the last ones dilated instead."""
    assert net.feat_channels == [256, 512, 1024, 2048]
    feats = infer(net, paddle.randn(X))
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
    assert [(X[2] // f.shape[2], X[3] // f.shape[3]) for f in feats] == [(s, s) for s in STRIDES[output_stride]]
    dilations = {c._dilation[0] for c in net.sublayers() if isinstance(c, paddle.nn.Conv2D)}
    assert dilations == {8: {1, 2, 4}, 16: {1, 2}, 32: {1}}[output_stride]


@pytest.mark.parametrize("name", SMALLEST)
def test_feature_strides_at_output_stride_32(name):
    check_features(backbone(name, 32), 32)


@pytest.mark.parametrize("name, published", [
    # torchvision resnext50_32x4d: 25,028,904 with its 2048x1000 classifier
    ("ResNeXt50_32x4d", 25_028_904 - 2048 * 1000 - 1000),
    # ResNeSt-50 (Zhang et al.): 27,483,240 with the classifier; PaddleClas has no bias in the two
    # attention 1x1 convs (inter + 2 * planes per block: 3x160 + 4x320 + 6x640 + 3x1280 = 9,440)
    ("ResNeSt50", 27_483_240 - 2048 * 1000 - 1000 - 9_440),
])
def test_paddleclas_shapes_match_published_parameter_counts(name, published):
    """The generated PaddleClas shapes (which the backbones equal) add up to the published counts."""
    shapes = PADDLECLAS[name]()
    bn_stats = [k for k in shapes if k.endswith(("._mean", "._variance"))]
    total = sum(int(np.prod(v)) for k, v in shapes.items() if k not in bn_stats and not k.startswith("out."))
    assert total == published


# ----------------------------------------------------------------------------- heads
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("head", ["deeplabv3p", "fcn"])
@pytest.mark.parametrize("name", SMALLEST)
def test_heads_give_logits_at_input_size(name, head, output_stride):
    """Each head on each backbone family: logits at the input size; the backbone it holds gives
    the strides and channels of the contract (test_feature_strides_at_output_stride_32 for 32)."""
    cfg = ModelConfig(name=head, backbone=name, output_stride=output_stride, init="default")
    model = build_model(cfg, 5)
    assert list(infer(model, paddle.randn(X)).shape) == [1, 5, X[2], X[3]]
    check_features(model.backbone, output_stride)


def test_fcn_at_stride_32_and_odd_sizes():
    """FCN-8s proper (undilated backbone) fuses 1/32, 1/16 and 1/8 maps; odd sizes still come back whole."""
    model = build_model(ModelConfig(name="fcn", backbone="ResNeSt50", output_stride=32, init="default"), 4)
    assert list(infer(model, paddle.randn([1, 3, 45, 97])).shape) == [1, 4, 45, 97]


@pytest.mark.parametrize("cfg", [
    ModelConfig(name="fcn", backbone="ResNeXt50_32x4d", output_stride=32),
    ModelConfig(name="deeplabv3p", backbone="ResNeSt50", output_stride=16),
], ids=["fcn-resnext50", "deeplabv3p-resnest50"])
def test_a_few_training_steps_lower_the_loss(cfg):
    """Five Adam steps (the recipes' optimizer) on one tiny batch cut the loss by more than 30 %."""
    paddle.seed(0)
    losses = adam_losses(build_model(cfg, 3), steps=5, lr=1e-3)
    assert losses[-1] < 0.7 * losses[0], losses


def settle_bn(model, steps: int = 10):
    """Train-mode forwards that move BN running statistics from their init, as training would."""
    model.train()
    with paddle.no_grad():
        for _ in range(steps):
            model(paddle.randn([2, 3, 48, 128]))
    model.eval()
    return model


def test_save_load_round_trip(tmp_path):
    """A saved checkpoint, built again from the config and loaded, gives identical outputs."""
    from paddle_lane.runs.checkpoint import save_checkpoint
    cfg = ModelConfig(name="deeplabv3p", backbone="ResNeSt50", output_stride=16)
    paddle.seed(3)
    source = settle_bn(build_model(cfg, 4), steps=2)
    folder = save_checkpoint(tmp_path / "best", source, state={"stage": 0, "size": [128, 64]})
    paddle.seed(4)
    loaded = build_model(ModelConfig(name="deeplabv3p", backbone="ResNeSt50", output_stride=16,
                                     init="xavier", pretrained=str(folder)), 4)
    x = paddle.randn(X)
    np.testing.assert_array_equal(infer(source, x).numpy(), infer(loaded, x).numpy())


# ----------------------------------------------------------------------------- PaddleSeg zoo
ZOO = {
    "pp_liteseg-stdc1": ["model.type=PPLiteSeg", "model.backbone={type: STDC1}"],
    "bisenetv2": ["model.type=BiSeNetV2"],
    "ocrnet-hrnet_w18_small_v1": ["model.type=OCRNet", "model.backbone={type: HRNet_W18_Small_V1}",
                                  "model.backbone_indices=[0]"],
    "segformer-b0": ["model.type=SegFormer", "model.backbone={type: MixVisionTransformer_B0}",
                     "model.embedding_dim=256"],
    "deeplabv3p-resnext50": ["model.type=DeepLabV3P", "model.backbone={type: ResNeXt50_32x4d, output_stride: 16}",
                             "model.backbone_indices=[0, 3]"],
}


def zoo_config(opts):
    return load_config(EXPORT_CONFIG, EXPORT_OPTS + ["model.name=paddleseg", "model.init=default"] + opts)


@pytest.mark.parametrize("which", sorted(ZOO))
def test_paddleseg_zoo_models_build_and_give_logits_at_input_size(which):
    model = build_model(zoo_config(ZOO[which]).model, 8)
    assert list(infer(model, paddle.randn([1, 3, 64, 128])).shape) == [1, 8, 64, 128]
    model.train()
    assert list(model(paddle.randn([2, 3, 64, 128])).shape) == [2, 8, 64, 128]  # main output of several


def test_paddleseg_model_backbone_is_the_one_we_freeze():
    """The zoo model's `backbone` attribute is the one set_backbone_trainable freezes."""
    model = build_model(zoo_config(ZOO["pp_liteseg-stdc1"]).model, 8)
    assert type(model.backbone).__name__ == "STDCNet"


@pytest.mark.parametrize("opts, message", [
    (["model.type=PPLiteSeeg"], r"key 'model.type' must be one of paddleseg's models \[.*PPLiteSeg.*\], got 'PPLiteSeeg'"),
    (["model.type=PPLiteSeg", "model.backbone={type: STDC3}"],
     r"key 'model.backbone.type' must be one of \[.*STDC2.*ResNeSt50.*\], got 'STDC3'"),
    (["model.type=PPLiteSeg", "model.backbone={type: STDC1}", "model.arm_out_chanels=[1]"],
     r"key 'model.arm_out_chanels' is not an argument of PPLiteSeg \(it takes: backbone, .*arm_out_chs"),
    (["model.type=PPLiteSeg"], r"key 'model.backbone' is required by PPLiteSeg"),
    (["model.type=BiSeNetV2", "model.num_classes=3"], r"key 'model.num_classes' comes from data.scheme"),
    (["model.backbone={type: STDC1}"], r"key 'model.type' must name a paddleseg model"),
])
def test_wrong_zoo_type_or_argument_is_one_line_at_load(opts, message):
    with pytest.raises(ConfigError, match=message) as err:
        zoo_config(opts)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{EXPORT_CONFIG}: ")


def test_constructor_type_error_names_key_and_type():
    """An argument only the constructor can refuse (factories taking **kwargs) fails at build, in one line."""
    cfg = zoo_config(["model.type=PPLiteSeg", "model.backbone={type: STDC1, widht: 3}"])
    with pytest.raises(ValueError, match=r"key 'model.backbone': STDC1: .*widht") as err:
        build_model(cfg.model, 8)
    assert "\n" not in str(err.value)


def test_zoo_keys_are_refused_for_our_models():
    with pytest.raises(ConfigError, match=r"unknown key 'model.embedding_dim'"):
        load_config(EXPORT_CONFIG, ["model.embedding_dim=256"])
    with pytest.raises(ConfigError, match=r"key 'model.type' is only for model.name: paddleseg"):
        load_config(EXPORT_CONFIG, ["model.type=BiSeNetV2"])
    with pytest.raises(ConfigError, match=r"key 'model.output_stride' must be 8 or 16 for deeplabv3p"):
        load_config(EXPORT_CONFIG, ["model.name=deeplabv3p", "model.output_stride=32"])


def test_zoo_config_survives_the_saved_run_config(tmp_path):
    """config.yml written by a run reloads to the same model section (the predictor rebuilds from it)."""
    from paddle_lane.config import save_config
    cfg = zoo_config(ZOO["ocrnet-hrnet_w18_small_v1"])
    save_config(cfg, tmp_path / "config.yml")
    again = load_config(tmp_path / "config.yml")
    assert again.model == cfg.model
    assert again.model.args == {"backbone": {"type": "HRNet_W18_Small_V1"}, "backbone_indices": [0]}


# ----------------------------------------------------------------------------- export
def export_and_compare(tmp_path, opts, settle: bool = True):
    """Checkpoint -> export_model(formats='onnx') (self-checks against dygraph) -> onnxruntime vs Paddle."""
    from paddle_lane.core.label_io import read_image
    from paddle_lane.deploy import export as exp
    from paddle_lane.inference.backends import export_predictor
    from paddle_lane.inference.predictor import Predictor
    from paddle_lane.prepare.synth import make_dataset
    from paddle_lane.runs.checkpoint import save_checkpoint
    cfg = load_config(EXPORT_CONFIG, EXPORT_OPTS + opts)
    paddle.seed(0)
    model = build_model(cfg.model, 8)
    if settle:
        settle_bn(model)
    ck = save_checkpoint(tmp_path / "run" / "best", model, state={"stage": 0, "size": [128, 48]})
    frames = make_dataset(tmp_path / "data", roads=("Road02",), records_per_road=1, frames_per_record=1,
                          cameras=("Camera 5",), width=384, height=192, seed=5)["pairs"]
    info = exp.export_model(cfg, [str(ck)], formats="onnx", out=tmp_path / "export", samples=[frames[0]["image"]])
    assert info["self_check"]["backends"]["onnxruntime"]["max_abs_prob_diff"] <= 1e-3
    rgb = read_image(frames[0]["image"])
    ref = Predictor(cfg, [str(ck)], flip=False).predict_probs(rgb)
    got = export_predictor(tmp_path / "export", "onnxruntime").predict_probs(rgb)
    assert ref.shape == got.shape == (8, 48, 128)
    assert np.abs(ref - got).max() < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("opts", [
    ["model.name=deeplabv3p", "model.backbone=ResNeXt50_32x4d", "model.output_stride=16"],
    ["model.name=deeplabv3p", "model.backbone=ResNeSt50", "model.output_stride=8"],
], ids=["deeplabv3p-resnext50-os16", "deeplabv3p-resnest50-os8"])
def test_new_backbones_export_to_onnx_equal_to_dygraph(tmp_path, opts):
    export_and_compare(tmp_path, opts)


@pytest.mark.slow
def test_fcn_exports_to_onnx_equal_to_dygraph(tmp_path):
    export_and_compare(tmp_path, ["model.name=fcn", "model.backbone=ResNeXt50_32x4d", "model.output_stride=32"])


@pytest.mark.parametrize("which", ["bisenetv2", pytest.param("segformer-b0", marks=pytest.mark.slow)])
def test_paddleseg_zoo_model_exports_to_onnx_equal_to_dygraph(tmp_path, which):
    export_and_compare(tmp_path, ["model.name=paddleseg", "model.init=default"] + ZOO[which], settle=False)
