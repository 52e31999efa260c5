"""A resume at any moment: best/ and the state that names it never disagree after a crash,
damaged or incomplete checkpoint states are named, a scratch restart logs nothing twice, the
first log line after a resume averages the same iterations, and --resume says what it found."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_until_signalled, tiny_train_opts
from paddle_lane.config import load_config
from paddle_lane.engine import trainer as trainer_mod
from paddle_lane.engine.trainer import Trainer, TrainingInterrupted
from paddle_lane.runs import checkpoint as ckpt_mod

CONFIG = ROOT / "configs" / "demo_tiny.yml"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
TWO_STAGES = ("[{width: 128, height: 48, batch_size: 2, iters: 4, lr: 0.01}, "
              "{width: 160, height: 64, batch_size: 2, iters: 2, lr: 0.01}]")


def two_stage_opts(lists, out):
    return tiny_train_opts(lists, out, iters=4, val_interval=2) + [f"stages={TWO_STAGES}", "train.keep_last=4"]


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs (BaseException: no handler in the trainer catches it)."""


def test_a_kill_between_the_periodic_and_the_best_save_is_repaired_on_resume(prepared_synth, tmp_path, monkeypatch,
                                                                             capsys):
    """Killed after iter_4 (whose state names 4 as best) was written and before best/ was: the
    resume re-saves best/ from iter_4, and stage 1 starts from those weights, byte for byte."""
    _, lists = prepared_synth
    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "validate", lambda self, net, val, stage, it: {2: 0.5, 4: 0.9}.get(it, 0.1))
    real_save = trainer_mod.save_checkpoint

    def save_then_die(folder, model, optimizer=None, state=None):
        if folder.name == "best" and state["stage"] == 0 and state["iter"] == 4:
            raise Killed()
        return real_save(folder, model, optimizer, state)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        Trainer(load_config(CONFIG, two_stage_opts(lists, out)), quiet=True).run()
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
    best = out / "stage0" / "best"
    assert json.loads((best / "state.json").read_text())["iter"] == 2  # behind the state
    assert json.loads((out / "stage0" / "iter_0000004" / "state.json").read_text())["best_iter"] == 4

    started_from = []
    real_load = trainer_mod.load_weights
    monkeypatch.setattr(trainer_mod, "load_weights", lambda model, path: (started_from.append(path),
                                                                          real_load(model, path))[1])
    capsys.readouterr()
    Trainer(load_config(CONFIG, two_stage_opts(lists, out)), resume=True, quiet=True).run()
    err = capsys.readouterr().err
    assert f"note: {best} re-saved from iter_0000004" in err and "it held iteration 2" in err, err
    assert json.loads((best / "state.json").read_text())["iter"] == 4
    assert (best / "model.pdparams").read_bytes() == (out / "stage0" / "iter_0000004" / "model.pdparams").read_bytes()
    assert started_from == [best]  # stage 1's starting weights


def test_a_damaged_best_of_the_same_size_is_replaced_from_its_checkpoint(prepared_synth, tmp_path, monkeypatch,
                                                                         capsys):
    _, lists = prepared_synth
    out = tmp_path / "run"
    opts = tiny_train_opts(lists, out, iters=4, val_interval=2) + ["train.keep_last=4"]
    monkeypatch.setattr(Trainer, "validate", lambda self, net, val, stage, it: {2: 0.5, 4: 0.9}.get(it, 0.1))
    Trainer(load_config(CONFIG, opts), quiet=True).run()
    weights = out / "stage0" / "best" / "model.pdparams"
    good = weights.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte: same size, other content
    weights.write_bytes(bytes(damaged))
    assert ckpt_mod.checkpoint_damage(weights.parent) == "model.pdparams does not match its SHA-256"
    capsys.readouterr()
    opts_more = opts + ["stages=[{width: 128, height: 48, batch_size: 4, iters: 4, lr: 0.01}, "
                        "{width: 160, height: 64, batch_size: 2, iters: 1, lr: 0.01}]"]
    Trainer(load_config(CONFIG, opts_more), resume=True, quiet=True, allow_config_change=True).run()
    err = capsys.readouterr().err
    assert "re-saved from iter_0000004" in err and "does not match its SHA-256" in err, err
    assert weights.read_bytes() == good


def test_a_state_without_a_key_is_named_and_skipped(prepared_synth, tmp_path, capsys):
    _, lists = prepared_synth
    out = tmp_path / "run"
    opts = tiny_train_opts(lists, out, iters=6, val_interval=2) + ["train.keep_last=3"]
    Trainer(load_config(CONFIG, opts), quiet=True).run()
    newest = out / "stage0" / "iter_0000006" / "state.json"
    state = json.loads(newest.read_text())
    del state["iter"]
    newest.write_text(json.dumps(state))
    capsys.readouterr()
    resumed = Trainer(load_config(CONFIG, opts), resume=True, quiet=True)
    resumed.run()
    err = capsys.readouterr().err
    assert f"warning: checkpoint {newest.parent} is damaged (state.json has no 'iter' key)" in err, err
    assert [it for _, it, _ in resumed.history] == [5, 6]


def test_a_resume_from_scratch_keeps_no_old_log_lines(prepared_synth, tmp_path, capsys):
    _, lists = prepared_synth
    out = tmp_path / "run"
    opts = tiny_train_opts(lists, out, iters=4, val_interval=2)
    Trainer(load_config(CONFIG, opts), quiet=True).run()
    for path in (out / "stage0").glob("iter_*"):
        shutil.rmtree(path)  # no checkpoint left: a resume starts over
    Trainer(load_config(CONFIG, opts), resume=True, quiet=True).run()
    assert "starting from scratch" in capsys.readouterr().out
    metrics = [json.loads(x)["iter"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [json.loads(x)["iter"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert metrics == [2, 4] and logged == [4]


def test_the_first_log_line_after_a_resume_averages_the_same_iterations(prepared_synth, tmp_path, monkeypatch):
    """Stopped at iteration 7 with log_interval 5: the line at 10 averages iterations 6-10 as in
    the unbroken run (it averaged 8-10 before the window was kept in the checkpoint)."""
    _, lists = prepared_synth
    monkeypatch.setattr(Trainer, "validate", lambda self, net, val, stage, it: 0.5)

    def opts(name):
        return tiny_train_opts(lists, tmp_path / name, iters=12, val_interval=12)

    Trainer(load_config(CONFIG, opts("straight")), quiet=True).run()
    run_until_signalled(Trainer(load_config(CONFIG, opts("stopped")), quiet=True), 7)
    state = json.loads((tmp_path / "stopped" / "stage0" / "iter_0000007" / "state.json").read_text())
    assert len(state["log_window"]) == 2  # iterations 6 and 7
    resumed = Trainer(load_config(CONFIG, opts("stopped")), resume=True, quiet=True)
    resumed.run()

    def lines(name):
        return {r["iter"]: r["loss"] for r in map(json.loads, (tmp_path / name / "train_log.jsonl").read_text().splitlines())}

    a, b = lines("straight"), lines("stopped")
    assert sorted(a) == sorted(b) == [5, 10, 12]
    np.testing.assert_allclose([b[i] for i in (5, 10, 12)], [a[i] for i in (5, 10, 12)], rtol=1e-5)
    # the independent check of what line 10 averages: iterations 6..10 of the resumed history
    per_iter = dict(((it, loss) for _, it, loss in resumed.history))
    window = [w[0] for w in state["log_window"]] + [per_iter[i] for i in (8, 9, 10)]
    assert b[10] == pytest.approx(float(np.mean(window)), rel=1e-6)


def _cli_train(opts, *extra):
    return subprocess.run([sys.executable, "-m", "paddle_lane.cli.main", "train", "--config", str(CONFIG), "--device", "cpu",
                           *extra, "--opts", *opts], env=ENV, capture_output=True, text=True, timeout=300)


def test_resume_of_a_folder_without_a_run_is_an_error(prepared_synth, tmp_path):
    _, lists = prepared_synth
    out = tmp_path / "typo"
    res = _cli_train(tiny_train_opts(lists, out, iters=2), "--resume")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1:] == [
        f"error: --resume: {out} holds no training run (the folder does not exist); drop --resume to start one "
        "there, or point train.output_dir at the run to continue"]
    assert not out.exists()


def test_resume_of_a_finished_run_says_so(prepared_synth, tmp_path):
    _, lists = prepared_synth
    out = tmp_path / "run"
    opts = tiny_train_opts(lists, out, iters=2, val_interval=2)
    assert _cli_train(opts).returncode == 0
    before = (out / "metrics.jsonl").read_text()
    res = _cli_train(opts, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{out} is already finished: all 1 stage(s) of its config ran" in res.stdout, res.stdout
    assert (out / "metrics.jsonl").read_text() == before


def test_a_signal_after_the_folder_is_claimed_points_at_resume_which_then_runs(prepared_synth, tmp_path, monkeypatch):
    """Stopped before the first step but after config.yml was written: the hint is the resume
    command (the same command would be refused as a used folder), and that resume trains."""
    _, lists = prepared_synth
    out = tmp_path / "run"
    opts = tiny_train_opts(lists, out, iters=2, val_interval=2)
    trainer = Trainer(load_config(CONFIG, opts), quiet=True, resume_hint="paddle-lane train --resume X")
    assert (out / "config.yml").exists()
    trainer.request_stop(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.run()
    assert str(info.value) == "stopped by SIGTERM before training began; continue with: paddle-lane train --resume X"
    res = _cli_train(opts, "--resume")
    assert res.returncode == 0 and "starting from scratch" in res.stdout, res.stderr[-2000:]


def test_a_label_edited_after_prepare_is_not_trained_on_from_its_stale_cached_copy(tmp_path, capsys):
    """prepare --cache, then a label is corrected: training rebuilds that cache entry at start,
    and the cached label then equals a fresh resize of the corrected file."""
    import cv2
    from paddle_lane.core.label_io import read_label
    from paddle_lane.core.labels import load_scheme
    from paddle_lane.core.resize import crop_rows
    from paddle_lane.prepare.cache import cache_dir, cached_paths, load_resized
    from paddle_lane.prepare.pipeline import prepare
    from paddle_lane.prepare.synth import make_dataset

    raw, lists = tmp_path / "raw", tmp_path / "prepare"
    make_dataset(raw, roads=("Road02",), records_per_road=2, frames_per_record=2, width=384, height=192, seed=5)
    opts = tiny_train_opts(lists, tmp_path / "run", iters=1, val_interval=1) + ["data.use_cache=true",
                                                                                "prepare.val_fraction=0"]
    cfg = load_config(CONFIG, opts)
    cfg.prepare.cache = True
    prepare(raw, lists, cfg, workers=1)
    row = next(iter(__import__("pandas").read_csv(lists / "train.csv").itertuples()))
    scheme = load_scheme(cfg.data.scheme)
    folder = cache_dir(lists, cfg.data.crop_offset, (128, 48), scheme, cfg.data.ignore_policy, cfg.data.label_resize)
    _, cached_label = cached_paths(folder, row.key)
    stale = read_label(cached_label)

    edited = read_label(row.label)
    edited[100:, :] = 214  # the lower half becomes zebra (train id 5)
    cv2.imwrite(row.label, edited)
    capsys.readouterr()
    Trainer(load_config(CONFIG, opts), quiet=True)
    err = capsys.readouterr().err
    assert "warning: cache 128x48: 1 frame(s) changed since prepare and were rebuilt" in err, err
    _, want = load_resized(row.image, row.label, scheme.train_lut(cfg.data.ignore_policy),
                           crop_rows(cfg.data.crop_offset, cfg.data.frame_height, 192), (128, 48),
                           cfg.data.label_resize, (384, 192))
    got = read_label(cached_label)
    assert (got != stale).sum() > 500 and (got == want).all()
    assert (got[-10:] == 5).all()


def test_evaluate_refuses_predictions_inside_the_ground_truth(prepared_synth, tmp_path):
    raw, _ = prepared_synth
    gt = tmp_path / "gt"
    shutil.copytree(next(raw.rglob("Label")), gt / "Label")
    before = sorted(p.relative_to(gt) for p in gt.rglob("*"))
    for pred in (gt, gt / "Label"):
        res = subprocess.run([sys.executable, "-m", "paddle_lane.cli.main", "evaluate", "--pred", str(pred), "--gt", str(gt)],
                             env=ENV, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stderr[-2000:]
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: --pred {pred} is ") and f"ground-truth folder --gt {gt}" in last, last
    assert sorted(p.relative_to(gt) for p in gt.rglob("*")) == before  # nothing written into --gt


# --- StageProgress: a stage's record, as its checkpoint state holds it (hand values) ---

def test_stage_progress_keeps_the_best_and_counts_validations_without_gain():
    from types import SimpleNamespace
    from paddle_lane.engine.trainer import StageProgress
    st = SimpleNamespace(iters=10, width=64, height=32)
    p = StageProgress.resumed(1, st, None)
    assert p.state(0.01) == {"stage": 1, "iter": 0, "lr": 0.01, "best_miou": -1.0, "best_iter": -1, "bad_vals": 0,
                             "stage_done": False, "size": [64, 32], "log_window": []}
    seen = []
    for it, miou in [(2, 0.30), (4, 0.25), (6, 0.30), (8, 0.31)]:  # equal is no gain
        p.it = it
        seen.append((p.record_validation(miou, validated=True), p.best, p.best_iter, p.bad_vals))
    assert seen == [(True, 0.30, 2, 0), (False, 0.30, 2, 1), (False, 0.30, 2, 2), (True, 0.31, 8, 0)]
    p.it = 10
    assert p.state(0.001, val_miou=0.31)["stage_done"] is True and p.state(0.001, val_miou=0.31)["val_miou"] == 0.31
    blind = StageProgress.resumed(0, st, None)  # no val frames: every validation is the best (best = last)
    blind.it = 5
    assert blind.record_validation(float("nan"), validated=False) and blind.best_iter == 5 and blind.bad_vals == 0


def test_stage_progress_resumes_from_a_checkpoint_state():
    from types import SimpleNamespace
    from paddle_lane.engine.trainer import StageProgress
    state = {"stage": 0, "iter": 7, "lr": 0.005, "best_miou": 0.42, "best_iter": 6, "bad_vals": 1,
             "stage_done": False, "size": [64, 32], "log_window": [[1.5, {"ce": 1.5}], [1.25, {"ce": 1.25}]]}
    p = StageProgress.resumed(0, SimpleNamespace(iters=10, width=64, height=32), state)
    assert (p.it, p.best, p.best_iter, p.bad_vals) == (7, 0.42, 6, 1)
    assert p.window == [(1.5, {"ce": 1.5}), (1.25, {"ce": 1.25})]
    assert p.state(0.005) == {**state, "log_window": [(1.5, {"ce": 1.5}), (1.25, {"ce": 1.25})]}
