"""Validation measures what the leaderboard measures: the number a training run logs for a
checkpoint is the number `infer` + `evaluate` give that checkpoint; val frames are sampled
across records; a run without val frames says so."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, tiny_train_opts
from paddle_lane.cli import main as cli
from paddle_lane.config import load_config
from paddle_lane.engine.trainer import Trainer
from paddle_lane.engine.validation import sample_val_rows

CONFIG = ROOT / "configs" / "demo_tiny.yml"


def test_validation_equals_infer_then_evaluate(prepared_synth, tmp_path):
    """Same checkpoint: the logged validation mIoU and the leaderboard score of its submission
    (no TTA) agree to 1e-4, class by class; loader workers on, as users run it."""
    _, lists = prepared_synth
    run = tmp_path / "run"
    opts = tiny_train_opts(lists, run, iters=30, val_interval=30) + ["data.num_workers=2"]
    Trainer(load_config(CONFIG, opts), quiet=True).run()
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    sub = tmp_path / "sub"
    code = cli.main(["infer", "--config", str(run / "config.yml"), "--model", str(run / "stage0" / "best"),
                     "--list", str(lists / "val.csv"), "--out", str(sub), "--scales", "1", "--no-zip",
                     "--opts", "infer.flip=false", "infer.num_workers=0", "infer.batch_size=1"])
    assert code == 0
    code = cli.main(["evaluate", "--pred", str(sub), "--gt", str(lists / "val.csv"), "--threads", "1"])
    assert code == 0
    scores = json.loads((sub / "scores.json").read_text())["results"]
    assert record["miou"] == pytest.approx(scores["miou"], abs=1e-4)
    assert record["miou_lanes"] == pytest.approx(scores["miou_lanes"], abs=1e-4, nan_ok=True)
    for ours, theirs in zip(record["per_class"], scores["per_class"]):
        assert (ours["gt_pixels"], ours["name"]) == (theirs["gt_pixels"], theirs["name"])
        assert abs(ours["pred_pixels"] - theirs["pred_pixels"]) <= 1e-4 * max(1, theirs["pred_pixels"])
    # ignore ids and the hood are excluded: fewer scored pixels than the frames hold
    val = pd.read_csv(lists / "val.csv")
    total = int((val["width"] * val["height"]).sum())
    assert 0 < sum(c["gt_pixels"] for c in record["per_class"]) < total


def _frames(records: int, cameras: int, per: int) -> pd.DataFrame:
    rows = [{"road": "Road02", "record": f"Record{r:03d}", "camera": f"Camera {5 + c}", "image": f"{r}_{c}_{i}.jpg",
             "label": f"{r}_{c}_{i}_bin.png", "key": f"{r}_{c}_{i}"}
            for r in range(records) for c in range(cameras) for i in range(per)]
    return pd.DataFrame(rows)  # sorted by record, as prepare's lists are sorted by time


def test_max_val_images_spreads_over_records_and_cameras():
    df = _frames(records=4, cameras=2, per=10)
    picked = sample_val_rows(df, 8, seed=0)
    assert len(picked) == 8
    # one frame from each of the 8 (record, camera) groups, not the first 8 rows (one group)
    assert len(set(zip(picked["record"], picked["camera"]))) == 8
    again = sample_val_rows(df, 8, seed=0)
    assert again["key"].tolist() == picked["key"].tolist()
    assert sample_val_rows(df, 8, seed=1)["key"].tolist() != picked["key"].tolist()
    # 12 of 8 groups: every group gives one, then four give a second
    counts = sample_val_rows(df, 12, seed=0).groupby(["record", "camera"]).size()
    assert sorted(counts.tolist()) == [1, 1, 1, 1, 2, 2, 2, 2]
    assert len(sample_val_rows(df, 0, seed=0)) == len(sample_val_rows(df, 500, seed=0)) == 80


def test_training_without_val_frames_says_best_is_last(prepared_synth, tmp_path, capsys):
    _, lists = prepared_synth
    no_val = tmp_path / "lists"
    no_val.mkdir()
    for name in ("train.csv", "stats.json"):
        (no_val / name).write_bytes((lists / name).read_bytes())
    (no_val / "val.csv").write_text("")
    opts = tiny_train_opts(no_val, tmp_path / "run", iters=4, val_interval=2)
    code = cli.main(["train", "--config", str(CONFIG), "--device", "cpu", "--opts", *opts])
    out = capsys.readouterr()
    assert code == 0
    warnings = [line for line in out.err.splitlines() if "no validation frames" in line]
    assert len(warnings) == 1 and "val.csv is empty" in warnings[0] and "last iteration" in warnings[0]
    assert "stage 0: not validated; best = last iteration 4" in out.out
    assert np.all([(tmp_path / "run" / "stage0" / "best" / "model.pdparams").exists()])
