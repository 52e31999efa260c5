"""Learning-rate schedules as pure functions of the iteration, and the optimizer built around them.

The rate depends only on (iteration, stage length, base rate, config), so resuming a run
needs nothing but the iteration count.
"""
from __future__ import annotations

import math

import paddle

from paddle_lane.config import CHOICES, ConfigError, implements, OptimizerConfig, ScheduleConfig

ONECYCLE_RISE = 0.3  # share of the stage spent rising to the peak


# ----------------------------------------------------------------------------- shapes
def _cosine(frac: float, high: float, low: float) -> float:
    """Half cosine from high (frac=0) to low (frac=1)."""
    return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * frac))


def _poly(it: int, total: int, base: float, cfg: ScheduleConfig) -> float:
    """(base - min_lr) * (1 - t/T)^power + min_lr: base at 0, min_lr at the end."""
    return cfg.min_lr + (base - cfg.min_lr) * (1.0 - it / total) ** cfg.power


def _cosine_schedule(it: int, total: int, base: float, cfg: ScheduleConfig) -> float:
    """Cosine from base at 0 to min_lr at the end."""
    return _cosine(it / total, base, cfg.min_lr)


def _step(it: int, total: int, base: float, cfg: ScheduleConfig) -> float:
    """base * gamma^(it // step_size), never below min_lr."""
    return max(cfg.min_lr, base * cfg.gamma ** (it // cfg.step_size))


def _cyclic(it: int, total: int, base: float, cfg: ScheduleConfig) -> float:
    """Triangle from base/max_lr_factor up to base (mid-cycle) and back, every cycle_iters.

    The peak is the base rate, like the hand-made cyclic schedule of the best known
    solution (Adam 1e-3), so a stage's `lr` means the same thing for every schedule type.
    """
    low = base / cfg.max_lr_factor
    phase = (it % cfg.cycle_iters) / cfg.cycle_iters
    return low + (base - low) * (1.0 - abs(2.0 * phase - 1.0))


def _onecycle(it: int, total: int, base: float, cfg: ScheduleConfig) -> float:
    """Linear rise from base/max_lr_factor to base over 30% of the stage, then cosine to min_lr."""
    rise = max(1, round(ONECYCLE_RISE * total))
    if it < rise:
        low = base / cfg.max_lr_factor
        return low + (base - low) * it / rise
    return _cosine((it - rise) / max(1, total - rise), base, cfg.min_lr)


def _constant(it: int, total: int, base: float, cfg: ScheduleConfig) -> float:
    """base throughout."""
    return base


SCHEDULES = implements("schedule.type", {
    "poly": _poly,
    "cosine": _cosine_schedule,
    "step": _step,
    "cyclic": _cyclic,
    "onecycle": _onecycle,
    "constant": _constant,
})


def check_schedule(cfg: ScheduleConfig) -> None:
    """Raise ConfigError naming the schedule key whose value cannot produce a rate."""
    checks = [
        ("type", cfg.type in SCHEDULES, f"must be one of {list(SCHEDULES)}"),
        ("warmup_iters", cfg.warmup_iters >= 0, "must be >= 0"),
        ("min_lr", cfg.min_lr >= 0, "must be >= 0"),
        ("step_size", cfg.step_size > 0, "must be > 0"),
        ("cycle_iters", cfg.cycle_iters > 0, "must be > 0"),
        ("max_lr_factor", cfg.max_lr_factor >= 1, "must be >= 1"),
    ]
    for name, ok, msg in checks:
        if not ok:
            raise ConfigError(f"key 'schedule.{name}' {msg}, got {getattr(cfg, name)!r}")


def lr_at(it: int, total_iters: int, base_lr: float, cfg: ScheduleConfig) -> float:
    """Learning rate at 0-based iteration `it` of a stage of `total_iters`, warm-up included.

    Warm-up (any type) goes linearly from base_lr * warmup_start at 0 to the schedule's own
    value at warmup_iters, so the curve is continuous where warm-up ends.
    """
    check_schedule(cfg)
    if total_iters <= 0:
        raise ValueError(f"total_iters must be > 0, got {total_iters}")
    it = min(max(int(it), 0), total_iters)
    shape = SCHEDULES[cfg.type]
    if it >= cfg.warmup_iters:
        return float(shape(it, total_iters, base_lr, cfg))
    start = base_lr * cfg.warmup_start
    end = shape(min(cfg.warmup_iters, total_iters), total_iters, base_lr, cfg)
    return float(start + (end - start) * it / cfg.warmup_iters)


# ----------------------------------------------------------------------------- paddle glue
class IterLR(paddle.optimizer.lr.LRScheduler):
    """Paddle scheduler whose rate is lr_at(last_epoch); call step() once per iteration."""

    def __init__(self, total_iters: int, base_lr: float, cfg: ScheduleConfig, last_epoch: int = -1):
        check_schedule(cfg)
        self.total_iters = int(total_iters)
        self.cfg = cfg
        # The base class calls step() (and so get_lr) itself: attributes must exist first.
        super().__init__(learning_rate=float(base_lr), last_epoch=last_epoch)

    def get_lr(self) -> float:
        return lr_at(self.last_epoch, self.total_iters, self.base_lr, self.cfg)

    def set_state_dict(self, state_dict: dict) -> None:
        """Restore last_epoch and recompute the rate from it (the rate is derived, not state)."""
        super().set_state_dict(state_dict)
        self.last_lr = self.get_lr()


def _grad_clip(cfg: OptimizerConfig) -> paddle.nn.ClipGradByGlobalNorm | None:
    """Global-norm clipping when grad_clip > 0."""
    return paddle.nn.ClipGradByGlobalNorm(clip_norm=cfg.grad_clip) if cfg.grad_clip > 0 else None


def _l2(cfg: OptimizerConfig) -> paddle.regularizer.L2Decay | None:
    """Coupled L2 decay for sgd/adam (AdamW decays decoupled instead)."""
    return paddle.regularizer.L2Decay(cfg.weight_decay) if cfg.weight_decay > 0 else None


def _check_optimizer(cfg: OptimizerConfig) -> None:
    """Raise ConfigError naming the optimizer key that cannot be used."""
    checks = [
        ("type", cfg.type in CHOICES["optimizer.type"], f"must be one of {list(CHOICES['optimizer.type'])}"),
        ("weight_decay", cfg.weight_decay >= 0, "must be >= 0"),
        ("grad_clip", cfg.grad_clip >= 0, "must be >= 0"),
        ("momentum", 0 <= cfg.momentum < 1, "must be in [0, 1)"),
        ("betas", len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas), "must be [beta1, beta2] in [0, 1)"),
    ]
    for name, ok, msg in checks:
        if not ok:
            raise ConfigError(f"key 'optimizer.{name}' {msg}, got {getattr(cfg, name)!r}")


def build_optimizer(params, cfg: OptimizerConfig,
                    lr_scheduler: paddle.optimizer.lr.LRScheduler | float) -> paddle.optimizer.Optimizer:
    """Momentum SGD, Adam or AdamW over `params`, reading its rate from `lr_scheduler`."""
    _check_optimizer(cfg)
    common = dict(learning_rate=lr_scheduler, parameters=params, grad_clip=_grad_clip(cfg))
    if cfg.type == "sgd":
        return paddle.optimizer.Momentum(momentum=cfg.momentum, weight_decay=_l2(cfg), **common)
    beta1, beta2 = (float(b) for b in cfg.betas)
    if cfg.type == "adam":
        return paddle.optimizer.Adam(beta1=beta1, beta2=beta2, weight_decay=_l2(cfg), **common)
    return paddle.optimizer.AdamW(beta1=beta1, beta2=beta2, weight_decay=cfg.weight_decay, **common)
