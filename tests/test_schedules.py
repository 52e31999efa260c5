"""LR schedules at known iterations, scheduler resume, and optimizer construction."""
from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from paddle_lane.config import ConfigError, OptimizerConfig, ScheduleConfig
from paddle_lane.engine.schedules import IterLR, build_optimizer, lr_at

BASE, T = 0.01, 100


def at(it: int, **kw) -> float:
    return lr_at(it, T, BASE, ScheduleConfig(**kw))


def test_poly_start_half_end():
    assert at(0, type="poly") == pytest.approx(BASE)
    assert at(50, type="poly", power=0.9) == pytest.approx(BASE * 0.5 ** 0.9)
    assert at(50, type="poly", power=1.0, min_lr=0.001) == pytest.approx(0.001 + 0.009 * 0.5)
    assert at(T, type="poly", min_lr=0.001) == pytest.approx(0.001)
    assert at(T + 10, type="poly") == pytest.approx(0.0)


def test_cosine_start_half_end():
    assert at(0, type="cosine", min_lr=1e-4) == pytest.approx(BASE)
    assert at(50, type="cosine", min_lr=1e-4) == pytest.approx((BASE + 1e-4) / 2)
    assert at(T, type="cosine", min_lr=1e-4) == pytest.approx(1e-4)


def test_step_boundaries_and_floor():
    kw = dict(type="step", step_size=30, gamma=0.1)
    assert at(29, **kw) == pytest.approx(BASE)
    assert at(30, **kw) == pytest.approx(BASE * 0.1)
    assert at(60, **kw) == pytest.approx(BASE * 0.01)
    assert at(90, **kw, min_lr=5e-5) == pytest.approx(5e-5)


def test_cyclic_triangle_peaks_at_base():
    kw = dict(type="cyclic", cycle_iters=20, max_lr_factor=10.0)
    assert at(0, **kw) == pytest.approx(BASE / 10)
    assert at(10, **kw) == pytest.approx(BASE)
    assert at(5, **kw) == pytest.approx((BASE / 10 + BASE) / 2)
    assert at(20, **kw) == pytest.approx(BASE / 10)
    assert [at(i, **kw) for i in range(20)] == pytest.approx([at(i + 40, **kw) for i in range(20)])


def test_onecycle_rises_then_anneals():
    kw = dict(type="onecycle", max_lr_factor=10.0, min_lr=1e-5)
    assert at(0, **kw) == pytest.approx(BASE / 10)
    assert at(15, **kw) == pytest.approx((BASE / 10 + BASE) / 2)
    assert at(30, **kw) == pytest.approx(BASE)
    assert at(65, **kw) == pytest.approx((BASE + 1e-5) / 2)
    assert at(T, **kw) == pytest.approx(1e-5)


def test_constant():
    assert {at(i, type="constant") for i in (0, 50, T)} == {BASE}


@pytest.mark.parametrize("kind", ["poly", "cosine", "step", "cyclic", "onecycle", "constant"])
def test_warmup_starts_low_and_joins_schedule(kind):
    kw = dict(type=kind, warmup_iters=10, warmup_start=0.1, cycle_iters=40)
    assert at(0, **kw) == pytest.approx(BASE * 0.1)
    assert at(10, **kw) == pytest.approx(at(10, type=kind, cycle_iters=40))
    mid = (BASE * 0.1 + at(10, type=kind, cycle_iters=40)) / 2
    assert at(5, **kw) == pytest.approx(mid)


@pytest.mark.parametrize("bad", [dict(type="exp"), dict(step_size=0), dict(cycle_iters=0),
                                 dict(max_lr_factor=0.5)])
def test_bad_schedule_names_key(bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=rf"schedule\.{key}"):
        at(0, **bad)


def test_iterlr_follows_lr_at_and_resumes():
    cfg = ScheduleConfig(type="cosine", warmup_iters=5, min_lr=1e-4)
    sched = IterLR(T, BASE, cfg)
    assert sched() == pytest.approx(lr_at(0, T, BASE, cfg))
    for _ in range(7):
        sched.step()
    assert sched() == pytest.approx(lr_at(7, T, BASE, cfg))
    state = sched.state_dict()
    resumed = IterLR(T, BASE, cfg)
    resumed.set_state_dict(state)
    assert resumed.last_epoch == 7 and resumed() == pytest.approx(sched())
    sched.step()
    resumed.step()
    assert resumed() == pytest.approx(sched()) == pytest.approx(lr_at(8, T, BASE, cfg))


def tiny_layer():
    paddle.seed(0)
    return paddle.nn.Linear(4, 3)


@pytest.mark.parametrize("kind, cls", [("sgd", paddle.optimizer.Momentum), ("adam", paddle.optimizer.Adam),
                                       ("adamw", paddle.optimizer.AdamW)])
def test_build_optimizer_class_and_step(kind, cls):
    layer = tiny_layer()
    sched = IterLR(10, 0.1, ScheduleConfig(type="constant"))
    opt = build_optimizer(layer.parameters(), OptimizerConfig(type=kind, weight_decay=1e-4), sched)
    assert type(opt) is cls
    assert opt.get_lr() == pytest.approx(0.1)
    before = layer.weight.numpy().copy()
    loss = layer(paddle.ones([2, 4])).square().mean()
    loss.backward()
    opt.step()
    opt.clear_grad()
    assert not np.allclose(layer.weight.numpy(), before)


def test_optimizer_follows_scheduler_steps():
    layer = tiny_layer()
    cfg = ScheduleConfig(type="poly", power=1.0)
    sched = IterLR(10, 0.1, cfg)
    opt = build_optimizer(layer.parameters(), OptimizerConfig(type="adam"), sched)
    sched.step()
    assert opt.get_lr() == pytest.approx(lr_at(1, 10, 0.1, cfg))


def test_grad_clip_bounds_global_norm():
    layer = tiny_layer()
    params = layer.parameters()
    opt = build_optimizer(params, OptimizerConfig(type="sgd", momentum=0.0, grad_clip=0.5), 1.0)
    assert isinstance(opt._grad_clip, paddle.nn.ClipGradByGlobalNorm)
    before = [p.numpy().copy() for p in params]
    (layer(paddle.ones([2, 4])).sum() * 1000.0).backward()
    raw_norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in params))
    opt.step()
    # With lr 1 and no momentum the update is the clipped gradient itself.
    update = math.sqrt(sum(float(((p.numpy() - b) ** 2).sum()) for p, b in zip(params, before)))
    assert raw_norm > 100
    assert update == pytest.approx(0.5, rel=1e-4)


def test_no_clip_by_default_and_bad_betas_named():
    opt = build_optimizer(tiny_layer().parameters(), OptimizerConfig(type="adam"), 0.1)
    assert opt._grad_clip is None
    with pytest.raises(ConfigError, match=r"optimizer\.betas"):
        build_optimizer(tiny_layer().parameters(), OptimizerConfig(betas=[0.9]), 0.1)


def _param():
    return [paddle.create_parameter([2], "float32")]


def test_optimizer_settings_reach_the_optimizer():
    """Momentum, betas and weight decay from the config are the optimizer's own (read back)."""
    sgd = build_optimizer(_param(), OptimizerConfig(type="sgd", momentum=0.7, weight_decay=0.01), 0.1)
    assert sgd._momentum == pytest.approx(0.7)
    assert (sgd._regularization_method, sgd._regularization_coeff) == ("l2_decay", pytest.approx(0.01))
    plain = build_optimizer(_param(), OptimizerConfig(type="sgd", momentum=0.7, weight_decay=0.0), 0.1)
    assert plain._regularization_method == ""
    adam = build_optimizer(_param(), OptimizerConfig(type="adam", betas=[0.8, 0.95], weight_decay=0.01), 0.1)
    assert (adam._beta1, adam._beta2) == (pytest.approx(0.8), pytest.approx(0.95))
    assert adam.regularization._coeff == pytest.approx(0.01)
    assert build_optimizer(_param(), OptimizerConfig(type="adam", weight_decay=0.0), 0.1).regularization is None
    adamw = build_optimizer(_param(), OptimizerConfig(type="adamw", betas=[0.7, 0.9], weight_decay=0.02), 0.1)
    assert (adamw._beta1, adamw._beta2, adamw._weight_decay) == (pytest.approx(0.7), pytest.approx(0.9),
                                                                  pytest.approx(0.02))


@pytest.mark.parametrize("key, good, bad", [
    ("momentum", 0.0, 1.0), ("momentum", 0.99, -0.1), ("betas", [0.0, 0.999], [0.9, 1.0]),
])
def test_optimizer_value_limits(key, good, bad):
    build_optimizer(_param(), OptimizerConfig(type="adam" if key == "betas" else "sgd", **{key: good}), 0.1)
    with pytest.raises(ConfigError, match=f"optimizer.{key}"):
        build_optimizer(_param(), OptimizerConfig(type="adam" if key == "betas" else "sgd", **{key: bad}), 0.1)


@pytest.mark.parametrize("key, good, bad", [("step_size", 1, 0), ("cycle_iters", 1, 0), ("max_lr_factor", 1.0, 0.99)])
def test_schedule_value_limits(key, good, bad):
    assert lr_at(0, 10, 0.1, ScheduleConfig(type="constant", **{key: good})) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match=f"schedule.{key}"):
        lr_at(0, 10, 0.1, ScheduleConfig(type="constant", **{key: bad}))


def test_one_iteration_stage_and_empty_stage():
    assert lr_at(0, 1, 0.1, ScheduleConfig(type="poly")) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_iters must be > 0, got 0"):
        lr_at(0, 0, 0.1, ScheduleConfig(type="poly"))


def test_onecycle_values_by_hand():
    """10 iterations: rise over round(0.3 * 10) = 3 steps from base/10, then cosine over the other 7."""
    cfg = ScheduleConfig(type="onecycle", max_lr_factor=10.0, min_lr=0.0)
    base, low = 1.0, 0.1
    assert [lr_at(i, 10, base, cfg) for i in range(4)] == pytest.approx(
        [low, low + 0.9 / 3, low + 1.8 / 3, 1.0])
    assert lr_at(5, 10, base, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 7)))
    short = [lr_at(i, 2, base, cfg) for i in range(3)]  # rise of max(1, round(0.6)) = 1 step
    assert short == pytest.approx([low, 1.0, 0.0])


def test_iterlr_starts_at_iteration_zero():
    sched = IterLR(10, 0.5, ScheduleConfig(type="poly", power=1.0))
    assert sched.last_epoch == 0 and sched.get_lr() == pytest.approx(0.5)
