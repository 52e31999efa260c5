"""The path users take, on the real frames, with the shipped defaults that matter (2 loader
workers, several stages, validation between them), under a hard timeout: prepare --cache ->
train through three stage transitions -> infer -> evaluate. Skips without ../shared/apollo_dev."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, real_data_or_skip

ENV = dict(os.environ, PYTHONPATH=str(ROOT))
STAGES = [(192, 64), (256, 96), (192, 64), (256, 96)]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "paddle_lane.cli.main", *args], env=ENV, capture_output=True,
                         text=True, timeout=timeout)  # a hang fails the test instead of CI
    assert res.returncode == 0, (args[0], res.stdout[-1500:], res.stderr[-1500:])
    return res


def test_real_frames_prepare_train_infer_evaluate(tmp_path):
    data = real_data_or_skip()
    config = tmp_path / "real.yml"
    stages = "\n".join(f"  - {{width: {w}, height: {h}, batch_size: 2, iters: 3, lr: 0.005}}" for w, h in STAGES)
    config.write_text(f"""_base_: {ROOT / 'configs' / '_base_' / 'datasets' / 'apollo8.yml'}
model: {{name: lite, width: 8}}
data: {{lists_dir: {tmp_path / 'prep'}, num_workers: 2}}
stages:
{stages}
train: {{output_dir: {tmp_path / 'run'}, val_interval: 3, vis_images: 1}}
infer: {{num_workers: 2}}
""")
    _cli("prepare", "--data-root", str(data), "--out", str(tmp_path / "prep"), "--config", str(config), "--cache")
    _cli("train", "--config", str(config), "--device", "cpu")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == [0, 1, 2, 3] and all(r["frames"] == 7 for r in records)
    sub = tmp_path / "sub"
    _cli("infer", "--config", str(tmp_path / "run" / "config.yml"), "--model",
         str(tmp_path / "run" / "stage3" / "best"), "--list", str(tmp_path / "prep" / "val.csv"), "--out", str(sub),
         "--scales", "1", "--opts", "infer.flip=false")
    _cli("evaluate", "--pred", str(sub), "--gt", str(tmp_path / "prep" / "val.csv"))
    scores = json.loads((sub / "scores.json").read_text())
    assert scores["counts"]["scored"] == 7 and scores["counts"]["missing"] == 0
    # validation of the last stage measured what evaluate measures
    assert records[-1]["miou"] == pytest.approx(scores["results"]["miou"], abs=1e-4)
