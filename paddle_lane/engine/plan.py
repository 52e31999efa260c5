"""The decisions the trainer's loop makes, as small pure functions it calls, so each is pinned
by unit tests with hand-computed values (tests/test_plan.py) and by mutation testing: which
weights a stage starts from, the learning rate at every iteration of every stage (each stage
warms up), when to validate and checkpoint, and where a resumed run goes on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from paddle_lane.engine.schedules import lr_at

INIT = "init"  # a stage that starts from the model's initialisation (and any pretrained weights)


def start_weights(stage_idx: int, stage_dirs: dict[int, Path], checkpoints: dict[int, list[Path]]) -> Path | str:
    """What stage `stage_idx` starts from: INIT for stage 0, else the previous stage's `best/`
    (the README's promise), or that stage's newest periodic checkpoint when it has no best/.
    `stage_dirs[i]` is stage i's folder; `checkpoints[i]` its periodic checkpoints, oldest first."""
    if stage_idx == 0:
        return INIT
    previous = stage_idx - 1
    best = stage_dirs[previous] / "best"
    if best.exists():
        return best
    older = checkpoints.get(previous, [])
    if not older:
        raise FileNotFoundError(f"stage {stage_idx} needs stage {previous}'s weights: {best} is missing and "
                                f"stage {previous} has no checkpoint")
    return older[-1]


def stage_lrs(stages, schedule) -> list[list[float]]:
    """The learning rate at every iteration (0-based) of every stage: each stage's own schedule
    over its own length, warm-up included in every stage."""
    return [[lr_at(it, st.iters, st.lr, schedule) for it in range(st.iters)] for st in stages]


def validates_at(it: int, stage_iters: int, val_interval: int) -> bool:
    """Validation (and a checkpoint) after 1-based iteration `it`: every val_interval, and at the end."""
    return it % val_interval == 0 or it == stage_iters


def checkpoint_due(it: int, every_iters: int, every_minutes: float, seconds_since_save: float) -> bool:
    """A periodic checkpoint between validations: every `every_iters` iterations, or
    `every_minutes` after the last save (0 turns either off)."""
    by_iters = every_iters > 0 and it % every_iters == 0
    by_time = every_minutes > 0 and seconds_since_save >= 60 * every_minutes
    return by_iters or by_time


@dataclass(frozen=True)
class ResumePoint:
    stage: int            # the stage to run first
    mid_stage: bool       # True: continue that stage from the checkpoint; False: start it afresh
    trim_to: tuple[int, int]  # (stage, iteration): log records after it are dropped
    finished: bool        # every stage of the plan has run


def resume_point(state: dict | None, stage_iters: list[int]) -> ResumePoint:
    """Where a resumed run goes on, from the newest intact checkpoint's state (None: there is
    none, start over). A checkpoint at or past its stage's planned length, or of a stage stopped
    early, hands over to the next stage; the plan's lengths are today's config's (a resume may add
    iterations or stages)."""
    if state is None:
        return ResumePoint(0, False, (0, 0), not stage_iters)
    stage, it = int(state["stage"]), int(state["iter"])
    done = bool(state.get("stopped_early")) or (stage < len(stage_iters) and it >= stage_iters[stage])
    first = stage + 1 if done else stage
    return ResumePoint(first, not done, (stage, it), first >= len(stage_iters))
