"""Training: a tiny model really learns, resume reproduces the uninterrupted run,
configs fail early with the key named, and bad inputs give one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, tiny_train_opts
from paddle_lane.config import ConfigError, load_config
from paddle_lane.core.metrics import SegMetric
from paddle_lane.engine.monitor import Monitor
from paddle_lane.engine.trainer import Trainer

CONFIG = ROOT / "configs" / "demo_tiny.yml"


def _background_only_miou(val_csv: Path, cfg) -> float:
    """Leaderboard mIoU of a model that always answers background, on the full-size val labels."""
    from paddle_lane.core.label_io import read_label
    from paddle_lane.core.labels import load_scheme
    from paddle_lane.data.dataset import read_list
    lut = load_scheme(cfg.data.scheme).eval_lut()
    metric = SegMetric(8)
    for label in read_list(val_csv)["label"]:
        gt = lut[read_label(label)]
        metric.update(np.zeros_like(gt), gt)
    return metric.compute()["miou"]


def _scored_pixels(val_csv: Path) -> int:
    """Pixels the leaderboard scores in these labels: every pixel whose id is not ignored."""
    from paddle_lane.core.label_io import read_label
    from paddle_lane.core.labels import ignore_in_eval_ids
    from paddle_lane.data.dataset import read_list
    ignored = np.array(sorted(ignore_in_eval_ids() | {249, 255}))
    return sum(int((~np.isin(read_label(p), ignored)).sum()) for p in read_list(val_csv)["label"])


def test_tiny_model_learns(prepared_synth, tmp_path):
    _, lists = prepared_synth
    cfg = load_config(CONFIG, tiny_train_opts(lists, tmp_path / "run", iters=120, val_interval=60))
    results = Trainer(cfg, quiet=True).run()
    baseline = _background_only_miou(lists / "val.csv", cfg)
    best = results[0].best_miou
    assert best > baseline + 0.15, (best, baseline)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in lines] == [60, 120]
    assert (tmp_path / "run" / "stage0" / "best" / "model.pdparams").exists()
    assert (tmp_path / "run" / "config.yml").exists()
    assert list((tmp_path / "run" / "vdl").glob("vdlrecords*"))


def test_resume_reproduces_uninterrupted_run(prepared_synth, tmp_path, monkeypatch):
    _, lists = prepared_synth
    opts = tiny_train_opts(lists, tmp_path / "a", iters=16, val_interval=8)
    full = Trainer(load_config(CONFIG, opts), quiet=True)
    full.run()
    expected = [loss for _, it, loss in full.history if it > 8]

    opts_b = tiny_train_opts(lists, tmp_path / "b", iters=16, val_interval=8)
    original = Monitor.train_step

    def killing_step(self, stage, it, *args):
        original(self, stage, it, *args)
        if it == 11:  # killed after the checkpoint at 8, mid-way to the next one
            raise KeyboardInterrupt
    monkeypatch.setattr(Monitor, "train_step", killing_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(load_config(CONFIG, opts_b), quiet=True).run()
    monkeypatch.setattr(Monitor, "train_step", original)
    resumed = Trainer(load_config(CONFIG, opts_b), resume=True, quiet=True)
    resumed.run()
    got = [loss for _, it, loss in resumed.history]
    assert [it for _, it, _ in resumed.history] == list(range(9, 17))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_staged_training_starts_from_previous_best(prepared_synth, tmp_path):
    _, lists = prepared_synth
    opts = tiny_train_opts(lists, tmp_path / "run", iters=6, val_interval=6)
    opts.append("stages=[{width: 96, height: 32, batch_size: 4, iters: 6, lr: 0.01}, "
                "{width: 128, height: 48, batch_size: 2, iters: 4, lr: 0.005}]")
    results = Trainer(load_config(CONFIG, opts), quiet=True).run()
    assert [r.stage for r in results] == [0, 1]
    state = json.loads((tmp_path / "run" / "stage1" / "best" / "state.json").read_text())
    assert state["size"] == [128, 48] and state["iter"] == 4


def test_nan_loss_stops_with_message(prepared_synth, tmp_path):
    from paddle_lane.engine.trainer import TrainingStopped
    _, lists = prepared_synth
    opts = tiny_train_opts(lists, tmp_path / "run", iters=4, val_interval=2) + ["train.max_loss=1e-9"]
    with pytest.raises(TrainingStopped, match="max_loss"):
        Trainer(load_config(CONFIG, opts), quiet=True).run()


def test_config_errors_name_the_key_and_file(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(f"_base_: {CONFIG}\nmodel:\n  nmae: lite\n")
    with pytest.raises(ConfigError, match=r"bad.yml: unknown key 'model.nmae'"):
        load_config(bad)
    bad.write_text(f"_base_: {CONFIG}\ntrain:\n  seed: one\n")
    with pytest.raises(ConfigError, match=r"bad.yml: key 'train.seed' must be int"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"key 'stages.0.batch_size' must be > 0"):
        load_config(CONFIG, ["stages.0.batch_size=0"])
    with pytest.raises(ConfigError, match=r"key 'model.name' must be one of"):
        load_config(CONFIG, ["model.name=resnet"])
    with pytest.raises(ConfigError, match=r"data.scheme"):
        load_config(CONFIG, ["data.scheme=nope"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yml")


def test_config_inheritance_and_overrides():
    cfg = load_config(CONFIG, ["stages.1.batch_size=3"])
    assert cfg.model.name == "lite"                  # from the file
    assert cfg.optimizer.grad_clip == 5.0            # from _base_
    assert cfg.stages[1].batch_size == 3             # from the override
    assert cfg.loss[1].type == "dice" and cfg.loss[1].weight == 0.5


def test_scheme_mismatch_and_missing_list(prepared_synth, tmp_path):
    _, lists = prepared_synth
    with pytest.raises(ValueError, match="apollo9"):
        Trainer(load_config(CONFIG, tiny_train_opts(lists, tmp_path / "r") + ["data.scheme=apollo9"]), quiet=True)
    with pytest.raises(FileNotFoundError, match="stats.json"):
        Trainer(load_config(CONFIG, tiny_train_opts(tmp_path / "nowhere", tmp_path / "r")), quiet=True)


def test_checkpoint_mismatch_is_one_clear_error(prepared_synth, tmp_path):
    from paddle_lane.models import build_model
    from paddle_lane.runs.checkpoint import load_weights, save_checkpoint
    cfg = load_config(CONFIG, ["model.width=8"])
    save_checkpoint(tmp_path / "ckpt", build_model(cfg.model, 5))
    with pytest.raises(ValueError, match="checkpoint does not match the model"):
        load_weights(build_model(cfg.model, 8), tmp_path / "ckpt")


def test_cli_train_reports_and_errors(prepared_synth, tmp_path):
    _, lists = prepared_synth
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "paddle_lane.cli.main", "train", "--config", str(CONFIG), "--opts",
           *tiny_train_opts(lists, tmp_path / "run", iters=4, val_interval=4), "train.amp=fp16"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "stage 0: best mIoU" in out.stdout
    assert "train.amp=fp16 ignored on CPU" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "paddle_lane.cli.main", "train", "--config", str(CONFIG),
                          "--opts", "model.nmae=x"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "unknown key 'model.nmae'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_two_process_cpu_training(prepared_synth, tmp_path):
    """Two ranks through paddle.distributed.launch: one set of checkpoints, metrics over both ranks."""
    _, lists = prepared_synth
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "paddle_lane.cli.main", "train", "--config", str(CONFIG), "--nproc", "2",
           "--device", "cpu", "--opts", *tiny_train_opts(lists, out_dir, iters=4, val_interval=4)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    logs = "".join(p.read_text() for p in (out_dir / "launch_logs").glob("*")) if (out_dir / "launch_logs").exists() else ""
    assert res.returncode == 0, (res.stdout[-1500:], res.stderr[-1500:], logs[-3000:])
    assert sorted(p.name for p in (out_dir / "stage0").iterdir()) == ["best", "iter_0000004"]
    record = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["ranks"] == 2
    # validation pixels summed over both ranks = every scored full-size pixel of every val frame
    gt_pixels = sum(c["gt_pixels"] for c in record["per_class"])
    assert gt_pixels == _scored_pixels(lists / "val.csv") > 0


def test_early_stopping_after_patience(prepared_synth, tmp_path, monkeypatch):
    _, lists = prepared_synth
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    monkeypatch.setattr(Trainer, "validate", lambda self, net, val_ds, stage, it: next(scores))
    opts = tiny_train_opts(lists, tmp_path / "run", iters=10, val_interval=2) + ["train.patience=2"]
    result = Trainer(load_config(CONFIG, opts), quiet=True).run()[0]
    assert result.stopped_early and result.last_iter == 6 and result.best_iter == 2
    state = json.loads((tmp_path / "run" / "stage0" / "iter_0000006" / "state.json").read_text())
    assert state["stage_done"] is True  # --resume moves on to the next stage


def test_empty_list_is_a_clear_error(prepared_synth, tmp_path):
    import shutil
    _, lists = prepared_synth
    empty = tmp_path / "lists"
    shutil.copytree(lists, empty, ignore=shutil.ignore_patterns("cache"))
    (empty / "train.csv").write_text((lists / "train.csv").read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"list is empty: .*train.csv"):
        Trainer(load_config(CONFIG, tiny_train_opts(empty, tmp_path / "r")), quiet=True)


def _loss_turning_nan_at(monkeypatch, call: int) -> None:
    """Make the trainer's loss NaN from its `call`-th evaluation on (1-based): the real loss times NaN."""
    import itertools
    import paddle_lane.engine.trainer as trainer_mod
    real_build = trainer_mod.build_loss

    def build(*args, **kwargs):
        loss_fn, calls = real_build(*args, **kwargs), itertools.count(1)

        def nan_from(logits, labels):
            total, terms = loss_fn(logits, labels)
            return (total * float("nan") if next(calls) >= call else total), terms
        return nan_from
    monkeypatch.setattr(trainer_mod, "build_loss", build)


def test_real_nan_loss_stops_the_run_and_exits_3(prepared_synth, tmp_path, monkeypatch, capsys):
    from paddle_lane.cli import main as cli
    from paddle_lane.engine.trainer import TrainingStopped
    _, lists = prepared_synth
    _loss_turning_nan_at(monkeypatch, 3)
    # the third step is NaN: two steps done, so the trainer's 0-based step counter reads 2
    trainer = Trainer(load_config(CONFIG, tiny_train_opts(lists, tmp_path / "a", iters=6, val_interval=6)), quiet=True)
    with pytest.raises(TrainingStopped, match=r"stage 0 iter 3: loss is nan \(limit train.max_loss=.*no checkpoint was written yet"):
        trainer.run()
    assert [it for _, it, _ in trainer.history] == [1, 2]
    assert all(np.isfinite(loss) for _, _, loss in trainer.history)

    monkeypatch.delenv("PADDLE_LANE_LAUNCHED", raising=False)
    code = cli.main(["train", "--config", str(CONFIG), "--device", "cpu", "--opts",
                     *tiny_train_opts(lists, tmp_path / "b", iters=6, val_interval=6)])
    assert code == 3
    assert "error: stage 0 iter 3: loss is nan" in capsys.readouterr().err
