"""Model building: output sizes, init, weight loading, backbone freezing, trainability, and the
MODELS / BACKBONES registries the config validates against."""
import math

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from conftest import ROOT
from paddle_lane.config import ModelConfig
from paddle_lane.models import build_model, count_params, load_weights, set_backbone_trainable
from paddle_lane.models.builder import _running_stats


def lite_cfg(**kw) -> ModelConfig:
    """A width-8 lite config, the fastest model to build and run."""
    return ModelConfig(name="lite", width=8, **kw)


def infer(model, x):
    """Eval-mode forward without gradients."""
    model.eval()
    with paddle.no_grad():
        return model(x)


@pytest.mark.parametrize("cfg", [
    lite_cfg(),
    ModelConfig(name="unet", init="default"),
    ModelConfig(name="deeplabv3p", backbone="ResNet18_vd", output_stride=8),
    ModelConfig(name="deeplabv3p", backbone="ResNet18_vd", output_stride=16),
], ids=["lite", "unet", "deeplabv3p-r18-os8", "deeplabv3p-r18-os16"])
def test_logits_have_input_size(cfg):
    """Every model returns one tensor [N, C, H, W] at the input size."""
    out = infer(build_model(cfg, 5), paddle.randn([1, 3, 64, 128]))
    assert list(out.shape) == [1, 5, 64, 128]


def test_lite_handles_odd_sizes():
    """Skip fusion resizes to the skip's size, so sizes not divisible by 16 still work."""
    out = infer(build_model(lite_cfg(), 3), paddle.randn([2, 3, 33, 70]))
    assert list(out.shape) == [2, 3, 33, 70]


def test_lite_is_small():
    """The lite model stays under 100k learnable weights at width 8."""
    assert count_params(build_model(lite_cfg(), 9)) < 100_000


def test_count_params_skips_bn_running_stats():
    """BN mean/variance are Paddle parameters but not learnable weights."""
    assert count_params(paddle.nn.BatchNorm2D(4)) == 8


@pytest.mark.parametrize("init,expected_std", [
    ("kaiming", lambda fan_in, fan_out: math.sqrt(2.0 / fan_in)),
    ("xavier", lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out))),
])
def test_init_follows_initializer(init, expected_std):
    """Conv weight std matches the initializer's formula; BN starts as identity."""
    paddle.seed(0)
    model = build_model(lite_cfg(init=init), 3)
    weight = model.net.encoder.stages[2][1][0].weight  # 32 -> 32, 3x3
    out_c, in_c, kh, kw = weight.shape
    want = expected_std(in_c * kh * kw, out_c * kh * kw)
    assert abs(float(weight.std()) - want) / want < 0.1
    bn = model.net.encoder.stages[2][1][1]
    assert np.all(bn.weight.numpy() == 1) and np.all(bn.bias.numpy() == 0)


def test_pretrained_reproduces_outputs(tmp_path):
    """A saved whole model, loaded through `pretrained`, gives identical eval outputs."""
    paddle.seed(1)
    source = build_model(lite_cfg(), 4)
    source.train()
    source(paddle.randn([2, 3, 32, 64]))  # move BN running stats away from their init
    path = tmp_path / "lite.pdparams"
    paddle.save(source.state_dict(), str(path))
    loaded = build_model(lite_cfg(init="xavier", pretrained=str(path)), 4)
    x = paddle.randn([1, 3, 32, 64])
    np.testing.assert_array_equal(infer(source, x).numpy(), infer(loaded, x).numpy())


def test_pretrained_accepts_paddleseg_style_keys(tmp_path):
    """Files saved from the bare network (PaddleSeg releases) load without the wrapper prefix."""
    source = build_model(lite_cfg(), 4)
    path = tmp_path / "bare.pdparams"
    paddle.save(source.net.state_dict(), str(path))
    report = load_weights(build_model(lite_cfg(), 4).net, str(path))
    assert not report.missing and not report.unexpected


def test_checkpoint_of_other_model_raises(tmp_path):
    """A different class count is refused, naming the file, the key and both shapes."""
    path = tmp_path / "five_classes.pdparams"
    paddle.save(build_model(lite_cfg(), 5).state_dict(), str(path))
    with pytest.raises(ValueError, match="five_classes.pdparams.*does not match the model") as err:
        build_model(lite_cfg(pretrained=str(path)), 3)
    assert "cls.weight" in str(err.value) and "[5, 8, 1, 1]" in str(err.value)


def test_checkpoint_without_common_names_raises(tmp_path):
    """A file sharing no parameter name with the model is refused."""
    path = tmp_path / "other.pdparams"
    paddle.save({"fc.weight": paddle.zeros([2, 2])}, str(path))
    with pytest.raises(ValueError, match="other.pdparams.*no parameter names in common"):
        build_model(lite_cfg(pretrained=str(path)), 3)


def test_missing_weights_file_raises():
    """A wrong local path fails before anything else happens."""
    with pytest.raises(FileNotFoundError, match="nowhere.pdparams"):
        build_model(lite_cfg(pretrained="/nonexistent/nowhere.pdparams"), 3)


def test_backbone_pretrained_loads_backbone_only(tmp_path):
    """backbone_pretrained fills the encoder and leaves the decoder at its init."""
    paddle.seed(2)
    source = build_model(lite_cfg(), 3)
    path = tmp_path / "encoder.pdparams"
    paddle.save(source.backbone.state_dict(), str(path))
    model = build_model(lite_cfg(backbone_pretrained=str(path)), 3)
    enc_src, enc_new = source.backbone.stages[0][0][0].weight, model.backbone.stages[0][0][0].weight
    np.testing.assert_array_equal(enc_src.numpy(), enc_new.numpy())
    assert not np.array_equal(source.net.cls.weight.numpy(), model.net.cls.weight.numpy())


def test_freezing_touches_backbone_only():
    """Frozen backbone weights get no gradient; the head still trains; unfreeze restores."""
    model = build_model(lite_cfg(), 3)
    set_backbone_trainable(model, False)
    stats = _running_stats(model)
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    for p in model.parameters():
        if id(p) not in stats:
            assert p.stop_gradient == (id(p) in backbone_ids)
    model(paddle.randn([1, 3, 32, 64])).mean().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.net.cls.weight.grad is not None
    set_backbone_trainable(model, True)
    assert not any(p.stop_gradient for p in model.backbone.parameters() if id(p) not in stats)
    assert all(p.stop_gradient for p in model.parameters() if id(p) in stats)


def test_sync_bn_only_with_several_cards(monkeypatch):
    """sync_bn converts BN only when more than one card trains."""
    def bn_types(model):
        return {type(s).__name__ for s in model.sublayers() if "BatchNorm" in type(s).__name__}
    assert bn_types(build_model(lite_cfg(sync_bn=True), 3)) == {"BatchNorm2D"}
    monkeypatch.setattr(paddle.distributed, "get_world_size", lambda *a, **k: 2)
    assert bn_types(build_model(lite_cfg(sync_bn=True), 3)) == {"SyncBatchNorm"}
    assert bn_types(build_model(lite_cfg(sync_bn=False), 3)) == {"BatchNorm2D"}


def stripe_batch():
    """Two 32x64 images whose vertical stripes (3 classes) are visible in the pixels."""
    cols = (np.arange(64) // 8) % 3
    label = np.broadcast_to(cols, (2, 32, 64)).astype("int64")
    rng = np.random.default_rng(0)
    image = (label[:, None] - 1.0) + 0.3 * rng.standard_normal((2, 3, 32, 64))
    return paddle.to_tensor(image.astype("float32")), paddle.to_tensor(label)


def adam_losses(model, steps: int, lr: float) -> list[float]:
    """Cross-entropy of each of `steps` Adam steps on the stripe batch, in train mode."""
    model.train()
    opt = paddle.optimizer.Adam(learning_rate=lr, parameters=model.parameters())
    image, label = stripe_batch()
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(image), label.unsqueeze(1), axis=1)
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    return losses


def test_lite_overfits_one_batch():
    """The lite model can learn: loss on one batch falls by more than half in 30 Adam steps."""
    paddle.seed(0)
    losses = adam_losses(build_model(lite_cfg(), 3), steps=30, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]


def test_registries_name_every_model_and_backbone():
    """model.name / model.backbone choices are the registries' names; an unknown one is one line."""
    from paddle_lane.config import CHOICES
    from paddle_lane.models.registry import BACKBONES, MODELS
    assert CHOICES["model.name"] == MODELS.names() == ("deeplabv3p", "fcn", "unet", "lite", "paddleseg")
    assert set(CHOICES["model.backbone"]) == set(BACKBONES.names()) == {
        "ResNet18_vd", "ResNet34_vd", "ResNet50_vd", "ResNet101_vd", "ResNeXt50_32x4d", "ResNeXt101_32x4d",
        "ResNeXt50_64x4d", "ResNeSt50", "ResNeSt101"}
    with pytest.raises(ValueError, match=r"unknown backbone 'ResNet50'; available: ResNet18_vd, .*ResNeSt101$"):
        BACKBONES.get("ResNet50")
    with pytest.raises(ValueError, match="model.name must be one of"):
        build_model(ModelConfig(name="segnet"), 3)


def test_registering_a_model_is_one_decorated_function():
    from paddle_lane.models.registry import Registry
    reg = Registry("toy", modules=())

    @reg.register()
    def tiny(cfg, num_classes):
        return paddle.nn.Conv2D(3, num_classes, 1), None

    assert reg.names() == ("tiny",) and reg.get("tiny") is tiny
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("tiny")(lambda cfg, n: None)


def test_config_validation_does_not_load_paddle():
    """Reading a config (CLI start-up, data preparation) imports neither Paddle nor paddleseg."""
    import subprocess
    import sys
    code = ("import sys; from paddle_lane.config import load_config; load_config('configs/demo_tiny.yml'); "
            "print(sorted(m for m in ('paddle', 'paddleseg') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), check=True)
    assert out.stdout.strip() == "[]"

