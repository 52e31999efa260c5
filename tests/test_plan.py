"""The trainer's decisions as pure functions (paddle_lane/engine/plan.py), pinned with values
computed by hand: what each stage starts from, the LR at every iteration of every stage, when
to validate and checkpoint, and where a resume goes on. Fast: what `./run.sh mutate plan` runs."""
from __future__ import annotations

import pytest

from paddle_lane.config import ScheduleConfig, StageConfig
from paddle_lane.engine.plan import (INIT, ResumePoint, checkpoint_due, resume_point, stage_lrs, start_weights,
                                     validates_at)


def test_stage_zero_starts_from_the_initialisation(tmp_path):
    assert start_weights(0, {}, {}) == INIT == "init"


def test_a_later_stage_starts_from_the_previous_best_even_when_newer_checkpoints_exist(tmp_path):
    (tmp_path / "stage0" / "best").mkdir(parents=True)
    newer = [tmp_path / "stage0" / "iter_0000004", tmp_path / "stage0" / "iter_0000006"]
    assert start_weights(1, {0: tmp_path / "stage0"}, {0: newer}) == tmp_path / "stage0" / "best"
    (tmp_path / "stage1" / "best").mkdir(parents=True)
    assert start_weights(2, {1: tmp_path / "stage1"}, {1: []}) == tmp_path / "stage1" / "best"


def test_without_a_best_the_previous_stages_newest_checkpoint_is_used(tmp_path):
    ckpts = [tmp_path / "stage0" / "iter_0000002", tmp_path / "stage0" / "iter_0000004"]
    assert start_weights(1, {0: tmp_path / "stage0"}, {0: ckpts}) == ckpts[1]


def test_a_stage_with_nothing_to_start_from_is_an_error_naming_both(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        start_weights(3, {2: tmp_path / "stage2"}, {2: []})
    assert str(info.value) == (f"stage 3 needs stage 2's weights: {tmp_path / 'stage2' / 'best'} is missing and "
                               "stage 2 has no checkpoint")
    with pytest.raises(FileNotFoundError):
        start_weights(1, {0: tmp_path / "stage0"}, {})


def test_every_stage_warms_up_on_its_own_length_and_rate():
    """constant schedule, warm-up 2 iterations from 0.1 x lr: lr/10, (lr/10 + lr)/2, lr, lr."""
    stages = [StageConfig(iters=4, lr=0.1), StageConfig(iters=3, lr=0.01)]
    got = stage_lrs(stages, ScheduleConfig(type="constant", warmup_iters=2, warmup_start=0.1))
    assert got == [pytest.approx([0.01, 0.055, 0.1, 0.1]), pytest.approx([0.001, 0.0055, 0.01])]


def test_each_stage_decays_over_its_own_length():
    """poly, power 1, no warm-up: lr * (1 - it / iters)."""
    stages = [StageConfig(iters=4, lr=0.2), StageConfig(iters=2, lr=0.05)]
    got = stage_lrs(stages, ScheduleConfig(type="poly", power=1.0, min_lr=0.0, warmup_iters=0))
    assert got == [pytest.approx([0.2, 0.15, 0.1, 0.05]), pytest.approx([0.05, 0.025])]


def test_validation_every_interval_and_at_the_end_of_the_stage():
    assert [it for it in range(1, 11) if validates_at(it, 10, 4)] == [4, 8, 10]
    assert [it for it in range(1, 7) if validates_at(it, 6, 3)] == [3, 6]
    assert [it for it in range(1, 4) if validates_at(it, 3, 50)] == [3]


def test_periodic_checkpoints_by_iterations_or_by_minutes():
    assert checkpoint_due(6, 3, 0, 0.0) and not checkpoint_due(5, 3, 0, 0.0)
    assert not checkpoint_due(5, 0, 5, 299.0) and checkpoint_due(5, 0, 5, 300.0)
    assert checkpoint_due(7, 0, 0.5, 30.0) and not checkpoint_due(7, 0, 0.5, 29.9)
    assert not checkpoint_due(6, 0, 0, 1e9)  # both off
    assert checkpoint_due(4, 4, 10, 0.0) and checkpoint_due(3, 4, 10, 600.0)


@pytest.mark.parametrize("state, iters, want", [
    (None, [4, 3], ResumePoint(0, False, (0, 0), False)),
    (None, [], ResumePoint(0, False, (0, 0), True)),
    ({"stage": 0, "iter": 3}, [4, 3], ResumePoint(0, True, (0, 3), False)),
    ({"stage": 0, "iter": 4}, [4, 3], ResumePoint(1, False, (0, 4), False)),       # stage 0 done
    ({"stage": 0, "iter": 4}, [6, 3], ResumePoint(0, True, (0, 4), False)),       # a resume that adds iterations
    ({"stage": 0, "iter": 2, "stopped_early": True}, [4, 3], ResumePoint(1, False, (0, 2), False)),
    ({"stage": 1, "iter": 3}, [4, 3], ResumePoint(2, False, (1, 3), True)),       # the whole plan ran
    ({"stage": 1, "iter": 3}, [4, 3, 5], ResumePoint(2, False, (1, 3), False)),   # a stage added since
    ({"stage": 1, "iter": 1}, [4], ResumePoint(1, True, (1, 1), True)),           # a stage the plan lost
])
def test_where_a_resume_goes_on(state, iters, want):
    assert resume_point(state, iters) == want
