"""The orchestration around the pure modules, pinned through the trainer, predictor, checkpoints,
manifest and run folder as they run: each test here catches one result-changing bug that the
suite once let through (warm-up in one stage only, a stage starting from its predecessor's
newest weights instead of its best, a scale counted twice in TTA, no per-iteration reseed with
dropout, a size-only integrity check, a manifest compared by path, a used folder holding only
stageN/), plus auxiliary heads that got no loss and the report calling misses false alarms."""
from __future__ import annotations

import json

import numpy as np
import paddle
import pytest

from conftest import ROOT, run_until_signalled, tiny_train_opts
from paddle_lane.cli import main as cli
from paddle_lane.config import load_config
from paddle_lane.core.errors import UserError
from paddle_lane.engine import trainer as trainer_mod
from paddle_lane.engine.trainer import Trainer
from paddle_lane.runs.checkpoint import save_checkpoint

CONFIG = ROOT / "configs" / "demo_tiny.yml"
TWO_STAGES = ("[{width: 128, height: 48, batch_size: 2, iters: 6, lr: 0.02}, "
              "{width: 160, height: 64, batch_size: 2, iters: 4, lr: 0.005}]")


def two_stage_opts(lists, out, *more):
    return tiny_train_opts(lists, out, iters=6, val_interval=2) + [f"stages={TWO_STAGES}", "train.keep_last=6",
                                                                    "schedule.warmup_iters=3", *more]


def test_every_stage_warms_up_and_follows_its_own_schedule(prepared_synth, tmp_path, monkeypatch):
    """The LR of every iteration of both stages, as the optimizer used it: poly over each stage's
    length with a 3-iteration warm-up from 0.1 x its rate (values by hand: lr_at's formula)."""
    _, lists = prepared_synth
    monkeypatch.setattr(Trainer, "validate", lambda self, net, val, stage, it: 0.5)
    trainer = Trainer(load_config(CONFIG, two_stage_opts(lists, tmp_path / "run")), quiet=True)
    seen: dict[int, list[float]] = {0: [], 1: []}
    real_step = trainer.monitor.train_step

    def record(stage, it, loss, terms, lr, *rest):
        seen[stage].append(lr)
        real_step(stage, it, loss, terms, lr, *rest)

    trainer.monitor.train_step = record
    trainer.run()

    def by_hand(base, total, warm=3, start=0.1, power=0.9):
        end = base * (1 - warm / total) ** power  # the poly value where warm-up ends
        return [base * start + (end - base * start) * i / warm if i < warm else base * (1 - i / total) ** power
                for i in range(total)]

    assert seen[0] == pytest.approx(by_hand(0.02, 6), rel=1e-6)
    assert seen[1] == pytest.approx(by_hand(0.005, 4), rel=1e-6)
    assert seen[1][0] == pytest.approx(0.0005)  # stage 1 starts warm-up again from 0.1 x its rate


def test_the_next_stage_starts_from_the_previous_best_byte_for_byte(prepared_synth, tmp_path, monkeypatch):
    """Scripted scores make iteration 2 the best of stage 0 (not its last, 6): stage 1's initial
    weights equal stage0/best's and differ from stage 0's last checkpoint."""
    _, lists = prepared_synth
    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "validate", lambda self, net, val, stage, it: {(0, 2): 0.9}.get((stage, it), 0.1))
    initial = {}
    real_trainable = trainer_mod.set_backbone_trainable

    def snapshot(model, trainable):
        stage = len(initial)
        initial[stage] = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        real_trainable(model, trainable)

    monkeypatch.setattr(trainer_mod, "set_backbone_trainable", snapshot)
    Trainer(load_config(CONFIG, two_stage_opts(lists, out)), quiet=True).run()
    best_state = json.loads((out / "stage0" / "best" / "state.json").read_text())
    assert best_state["iter"] == 2
    best = paddle.load(str(out / "stage0" / "best" / "model.pdparams"))
    last = paddle.load(str(out / "stage0" / "iter_0000006" / "model.pdparams"))
    assert set(initial[1]) == set(best)
    for k in best:
        np.testing.assert_array_equal(initial[1][k], best[k].numpy())
    assert any(not np.array_equal(initial[1][k], last[k].numpy()) for k in last)


class ScaleProbe(paddle.nn.Layer):
    """Logits that depend only on the input width: class 0 gets width / 64, the others 0."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        n, _, h, w = x.shape
        logits = paddle.zeros([n, self.classes, h, w])
        logits[:, 0] = w / 64.0
        return logits


def test_multi_scale_tta_counts_each_scale_once():
    """Scales 0.5, 1, 1.5 of a 128x48 input: widths 64, 128, 192 -> class-0 logits 1, 2, 3;
    the result is the plain mean of the three softmaxes (computed here in numpy)."""
    from paddle_lane.inference.predictor import Predictor
    cfg = load_config(CONFIG, ["data.crop_offset=76", "data.frame_height=192"])
    classes = 8
    pred = Predictor(cfg, models=[(ScaleProbe(classes), (128, 48))], flip=False, scales=[0.5, 1.0, 1.5], device="cpu")
    rgb = np.full((192, 384, 3), 90, np.uint8)
    inputs = [x[None] for x in pred.prepare_array(rgb)]
    probs = pred.predict_batch(inputs)[0]

    def class0(logit):
        return np.exp(logit) / (np.exp(logit) + classes - 1)

    want = np.mean([class0(1.0), class0(2.0), class0(3.0)])
    np.testing.assert_allclose(probs[0], want, rtol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-5)


def test_a_resume_mid_stage_with_dropout_and_augmentation_repeats_the_unbroken_losses(prepared_synth, tmp_path,
                                                                                      monkeypatch):
    """DeepLabV3+ (ASPP dropout p=0.1) with random flips, scaling and colour jitter, stopped at
    iteration 5 of 10 and resumed: every logged loss equals the unbroken run's."""
    _, lists = prepared_synth
    monkeypatch.setattr(Trainer, "validate", lambda self, net, val, stage, it: 0.5)

    def opts(name):
        return tiny_train_opts(lists, tmp_path / name, iters=10, val_interval=10) + [
            "model.name=deeplabv3p", "model.backbone=ResNet18_vd", "model.output_stride=16", "train.log_interval=1",
            "augment.hflip=0.5", "augment.scale=[0.8, 1.2]", "augment.color_jitter=0.3",
            "stages=[{width: 96, height: 48, batch_size: 2, iters: 10, lr: 0.01}]"]

    Trainer(load_config(CONFIG, opts("straight")), quiet=True).run()
    run_until_signalled(Trainer(load_config(CONFIG, opts("stopped")), quiet=True), 5)
    Trainer(load_config(CONFIG, opts("stopped")), resume=True, quiet=True).run()

    def losses(name):
        return [r["loss"] for r in map(json.loads, (tmp_path / name / "train_log.jsonl").read_text().splitlines())]

    a, b = losses("straight"), losses("stopped")
    assert len(a) == len(b) == 10
    np.testing.assert_allclose(b, a, rtol=1e-6)
    assert len(set(np.round(a, 6))) > 5  # the losses move: the comparison is not of constants


def test_a_same_size_damage_to_the_newest_checkpoint_is_caught_on_resume(prepared_synth, tmp_path, capsys):
    _, lists = prepared_synth
    opts = tiny_train_opts(lists, tmp_path / "run", iters=6, val_interval=2) + ["train.keep_last=3"]
    Trainer(load_config(CONFIG, opts), quiet=True).run()
    weights = tmp_path / "run" / "stage0" / "iter_0000006" / "model.pdparams"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # one bit: same size
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    resumed = Trainer(load_config(CONFIG, opts), resume=True, quiet=True)
    resumed.run()
    assert "iter_0000006 is damaged (model.pdparams does not match its SHA-256)" in capsys.readouterr().err
    assert [it for _, it, _ in resumed.history] == [5, 6]


def test_retrained_weights_at_the_same_path_are_another_submission(prepared_synth, tmp_path, capsys):
    """The manifest compares checkpoints by content: new weights saved where the old ones were
    make --out another recipe's folder (refused), not a folder to resume with old masks."""
    _, lists = prepared_synth
    run = tmp_path / "run"
    Trainer(load_config(CONFIG, tiny_train_opts(lists, run, iters=2, val_interval=2)), quiet=True).run()
    best = run / "stage0" / "best"
    sub = tmp_path / "sub"
    args = ["infer", "--config", str(run / "config.yml"), "--model", str(best), "--list", str(lists / "val.csv"),
            "--out", str(sub), "--tta", "none", "--no-zip"]
    assert cli.main(args) == 0
    masks = {p.name: p.read_bytes() for p in sub.glob("*.png")}
    from paddle_lane.models import build_model
    cfg = load_config(run / "config.yml")
    paddle.seed(99)
    save_checkpoint(best, build_model(cfg.model, 8), state=json.loads((best / "state.json").read_text()))
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "holds another submission" in err and "(other weights)" in err, err
    assert {p.name: p.read_bytes() for p in sub.glob("*.png")} == masks


def test_a_folder_holding_only_a_stage_folder_is_a_used_run(prepared_synth, tmp_path):
    _, lists = prepared_synth
    out = tmp_path / "run"
    (out / "stage0" / "iter_0000002").mkdir(parents=True)
    with pytest.raises(UserError, match=r"already holds a training run \(stage0\)"):
        Trainer(load_config(CONFIG, tiny_train_opts(lists, out, iters=2)), quiet=True)


def test_auxiliary_heads_are_trained_and_inference_uses_the_main_output(prepared_synth, tmp_path, monkeypatch):
    """BiSeNetV2 (5 outputs in training, PaddleSeg's weights [1, 1, 1, 1, 1]): after one step every
    auxiliary head's weights moved; in eval mode the model returns one tensor."""
    _, lists = prepared_synth
    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "validate", lambda self, net, val, stage, it: 0.5)
    built = []
    real_build = trainer_mod.build_model

    def capture(cfg, n):
        model = real_build(cfg, n)
        built.append(({k: v.numpy().copy() for k, v in model.state_dict().items()}, model))
        return model

    monkeypatch.setattr(trainer_mod, "build_model", capture)
    opts = tiny_train_opts(lists, out, iters=1, val_interval=1) + [
        "model.name=paddleseg", "model.type=BiSeNetV2", "model.init=default",
        "stages=[{width: 128, height: 64, batch_size: 2, iters: 1, lr: 0.01}]"]
    Trainer(load_config(CONFIG, opts), quiet=True).run()
    before, model = built[0]
    after = paddle.load(str(out / "stage0" / "iter_0000001" / "model.pdparams"))
    for head in ("net.aux_head1.", "net.aux_head2.", "net.aux_head3.", "net.aux_head4.", "net.head."):
        moved = [k for k in before if k.startswith(head) and not np.array_equal(before[k], after[k].numpy())]
        assert moved, f"{head} did not train"
    logged = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    assert sorted(k for k in logged["terms"] if k.startswith("aux")) == ["aux1", "aux2", "aux3", "aux4"]
    model.eval()
    assert isinstance(model(paddle.rand([1, 3, 64, 128])), paddle.Tensor)


def test_a_wrong_number_of_output_weights_is_named():
    from paddle_lane.config import ConfigError
    from paddle_lane.losses import output_coef
    assert output_coef(None, "OCRNet", 2) == [1.0, 0.4]
    assert output_coef(None, "PPLiteSeg", 3) == [1.0, 1.0, 1.0]
    assert output_coef(None, None, 1) == [1.0] and output_coef(None, "SomeNet", 2) == [1.0, 1.0]
    assert output_coef([2, 0.5], None, 2) == [2.0, 0.5]
    with pytest.raises(ConfigError, match=r"^key 'model.loss_coef' has 2 weight\(s\) \[1.0, 0.4\] but the model "
                                          r"returns 3 output\(s\)"):
        output_coef(None, "OCRNet", 3)


def test_the_report_tells_misses_from_false_alarms_by_pixel_counts():
    """Rows = truth. Class 1 is never predicted (precision NaN): misses. Class 2: 926 false
    pixels against 18,796 missed (precision 0, recall 0): misses. Class 3: more false than missed."""
    from paddle_lane.core.metrics import SegMetric
    from paddle_lane.evaluation.report import advice
    conf = np.zeros((4, 4), np.int64)
    conf[0, 0] = 100_000
    conf[1, 0] = 5_000                  # class 1: all missed, never predicted
    conf[2, 0] = 18_796                 # class 2: all missed ...
    conf[0, 2] = 926                    # ... and 926 false
    conf[3, 3], conf[3, 0], conf[0, 3] = 1_000, 200, 3_000  # class 3: 200 missed, 3000 false
    names = ["background", "one", "two", "three"]
    metric = SegMetric(4, names)
    metric.merge(conf)
    notes = advice(metric.compute(), names, conf, [])
    assert notes[:3] == [
        "one: IoU 0.000, mostly misses (5,000 of its pixels missed, 0 false pixels); its pixels are most often "
        "predicted as background",
        "two: IoU 0.000, mostly misses (18,796 of its pixels missed, 926 false pixels); its pixels are most often "
        "predicted as background",
        "three: IoU 0.238, mostly false alarms (200 of its pixels missed, 3,000 false pixels); its pixels are most "
        "often predicted as background",
    ]
