"""Nothing lost, nothing stale: a rerun into a used folder keeps what was there and says
what it did; caches and outputs follow their inputs; interrupted writes never break the
next run; corrupt inputs and children are handled."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from conftest import ROOT, alive_after, real_data_or_skip, tiny_train_opts
from paddle_lane.cli import main as cli
from paddle_lane.config import load_config
from paddle_lane.core.label_io import read_label
from paddle_lane.engine.trainer import Trainer
from paddle_lane.runs.checkpoint import checkpoint_damage, list_checkpoints, read_state

CONFIG = ROOT / "configs" / "demo_tiny.yml"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def _train(opts, *flags) -> int:
    return cli.main(["train", "--config", str(CONFIG), "--device", "cpu", *flags, "--opts", *opts])


# ----------------------------------------------------------------------------- training reruns
def test_training_into_a_used_folder_is_refused_and_force_moves_it_aside(prepared_synth, tmp_path, capsys):
    _, lists = prepared_synth
    run = tmp_path / "run"
    opts = tiny_train_opts(lists, run, iters=4, val_interval=2)
    assert _train(opts) == 0
    best = (run / "stage0" / "best" / "model.pdparams").read_bytes()
    capsys.readouterr()
    assert _train(opts + ["train.seed=7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a training run" in err[0] and "--resume" in err[0] and "--force" in err[0]
    assert (run / "stage0" / "best" / "model.pdparams").read_bytes() == best
    assert _train(opts + ["train.seed=7"], "--force") == 0
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and (moved[0] / "stage0" / "best" / "model.pdparams").read_bytes() == best
    assert f"aside to {moved[0]}" in capsys.readouterr().out
    assert (run / "stage0" / "best" / "model.pdparams").exists()


def test_checkpoints_between_validations(prepared_synth, tmp_path):
    _, lists = prepared_synth
    opts = tiny_train_opts(lists, tmp_path / "run", iters=7, val_interval=100) + [
        "train.checkpoint_interval=3", "train.keep_last=5"]
    Trainer(load_config(CONFIG, opts), quiet=True).run()
    states = [read_state(p) for p in list_checkpoints(tmp_path / "run")]
    assert [s["iter"] for s in states] == [3, 6, 7]
    assert [("val_miou" in s) for s in states] == [False, False, True]


def test_resume_checks_the_config_of_the_run(prepared_synth, tmp_path, capsys):
    _, lists = prepared_synth
    opts = tiny_train_opts(lists, tmp_path / "run", iters=4, val_interval=2)
    assert _train(opts) == 0
    capsys.readouterr()
    assert _train(opts + ["optimizer.weight_decay=0.5"], "--resume") == 2
    err = capsys.readouterr().err
    assert "optimizer.weight_decay: 0.0001 -> 0.5" in err and "cannot resume" in err
    longer = [o if not o.startswith("stages=") else o.replace("iters: 4", "iters: 6") for o in opts]
    assert _train(longer, "--resume") == 2
    assert "stages.0.iters: 4 -> 6" in capsys.readouterr().err
    assert _train(longer, "--resume", "--allow-config-change") == 0
    assert "resuming with plan changes: stages.0.iters: 4 -> 6" in capsys.readouterr().out
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in lines] == [2, 4, 6]


def test_metrics_have_no_duplicated_iteration_after_a_resume(prepared_synth, tmp_path):
    _, lists = prepared_synth
    opts = tiny_train_opts(lists, tmp_path / "run", iters=6, val_interval=2) + ["train.keep_last=3"]
    Trainer(load_config(CONFIG, opts), quiet=True).run()
    import shutil
    shutil.rmtree(tmp_path / "run" / "stage0" / "iter_0000006")  # killed after logging iteration 6, before its save
    Trainer(load_config(CONFIG, opts), resume=True, quiet=True).run()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in lines] == [2, 4, 6]


def test_an_invalid_state_file_is_named(prepared_synth, tmp_path, capsys):
    _, lists = prepared_synth
    opts = tiny_train_opts(lists, tmp_path / "run", iters=4, val_interval=2)
    assert _train(opts) == 0
    state = tmp_path / "run" / "stage0" / "iter_0000004" / "state.json"
    state.write_text("")
    assert checkpoint_damage(state.parent).startswith(f"{state}: not a valid checkpoint state")
    capsys.readouterr()
    assert _train(opts, "--resume") == 0  # falls back to iteration 2, and says why
    assert f"{state}: not a valid checkpoint state" in capsys.readouterr().err


# ----------------------------------------------------------------------------- submissions
def test_inference_into_a_used_folder_follows_its_manifest(prepared_synth, tmp_path, capsys):
    _, lists = prepared_synth
    a, b = tmp_path / "a", tmp_path / "b"
    for run, seed in ((a, 1), (b, 2)):
        Trainer(load_config(CONFIG, tiny_train_opts(lists, run, iters=2, val_interval=2) + [f"train.seed={seed}"]),
                quiet=True).run()
    sub = tmp_path / "sub"

    def infer(ckpt, *flags):
        return cli.main(["infer", "--config", str(a / "config.yml"), "--model", str(ckpt / "stage0" / "best"),
                         "--list", str(lists / "val.csv"), "--out", str(sub), "--tta", "none", *flags])

    assert infer(a) == 0
    masks = {p.name: p.read_bytes() for p in sub.glob("*.png")}
    assert infer(a) == 0 and "resuming" in capsys.readouterr().out
    assert infer(b) == 2
    err = capsys.readouterr().err
    assert "holds another submission" in err and "checkpoint 1:" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in sub.glob("*.png")} == masks
    assert infer(b, "--overwrite") == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("sub.old-")]
    assert len(aside) == 1 and {p.name: p.read_bytes() for p in aside[0].glob("*.png")} == masks
    assert json.loads((sub / "manifest.json").read_text())["checkpoints"][0]["path"].startswith(str(b))
    assert {p.name: p.read_bytes() for p in sub.glob("*.png")} != masks


def test_unknown_tta_value_is_refused(tmp_path, capsys):
    code = cli.main(["infer", "--config", str(CONFIG), "--model", str(tmp_path), "--images", str(tmp_path),
                     "--out", str(tmp_path / "o"), "--tta", "flp"])
    assert code == 2
    assert "unknown value 'flp'; choose from ['flip', 'none']" in capsys.readouterr().err


# ----------------------------------------------------------------------------- servers
def test_visualdl_on_a_used_port_exits_at_once(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "paddle_lane.cli.main", "visualdl", "--logdir", str(tmp_path),
                              "--port", str(port)], env=ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and time.monotonic() - t0 < 30
    assert f"port {port} on 127.0.0.1 is already in use" in res.stderr


# ----------------------------------------------------------------------------- prepare
def _prepare(raw, out, *extra):
    return cli.main(["prepare", "--data-root", str(raw), "--out", str(out), "--workers", "1", "--cache",
                     "--config", str(CONFIG), *extra, "--opts", "data.crop_offset=76", "data.frame_height=192"])


def test_cache_entries_follow_their_source_files(prepared_synth, tmp_path, capsys):
    raw, _ = prepared_synth
    out = tmp_path / "prep"
    assert _prepare(raw, out) == 0
    capsys.readouterr()
    val = pd.read_csv(out / "val.csv")
    label = Path(val["label"][0])
    original = label.read_bytes()
    try:
        import cv2
        cv2.imwrite(str(label), np.zeros_like(read_label(label)))  # the label redrawn as all background
        assert _prepare(raw, out) == 0
        text = capsys.readouterr().out
        assert text.count(" 1 rebuilt (source changed)") == 2  # both stage sizes of the demo config
        for folder in (out / "cache").iterdir():
            assert (read_label(folder / f"{val['key'][0]}_label.png") == 0).all()
    finally:
        label.write_bytes(original)


def test_prepare_output_inside_the_data_root_is_not_read_back(prepared_synth, tmp_path):
    import shutil
    raw, _ = prepared_synth
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    out = root / "prep"
    assert _prepare(root, out) == 0
    first = pd.read_csv(out / "train.csv")["image"].tolist() + pd.read_csv(out / "val.csv")["image"].tolist()
    assert _prepare(root, out) == 0
    second = pd.read_csv(out / "train.csv")["image"].tolist() + pd.read_csv(out / "val.csv")["image"].tolist()
    assert sorted(first) == sorted(second) and not any("/prep/" in p for p in second)
    problems = pd.read_csv(out / "problems.csv")
    assert not problems["file"].astype(str).str.contains("/prep/").any()


def test_prepare_without_a_usable_pair_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _prepare(tmp_path / "empty", tmp_path / "out") == 2
    assert "no image/label pair found" in capsys.readouterr().err


def _cut_jpeg(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + b"\xff\xd9")  # half the bytes, then an end marker


def test_a_cut_jpeg_with_an_end_marker_is_reported(prepared_synth, tmp_path):
    import shutil
    raw, _ = prepared_synth
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    victim = sorted(root.rglob("*.jpg"))[0]
    _cut_jpeg(victim)
    assert _prepare(root, tmp_path / "out") == 0
    problems = pd.read_csv(tmp_path / "out" / "problems.csv")
    hit = problems[problems["file"] == str(victim.resolve())]
    assert len(hit) == 1 and "ends early" in hit["reason"].iloc[0]
    listed = pd.concat([pd.read_csv(tmp_path / "out" / f) for f in ("train.csv", "val.csv")])["image"]
    assert str(victim.resolve()) not in set(listed)


def test_a_cut_real_jpeg_is_reported(tmp_path):
    from paddle_lane.core.label_io import UnreadableFileError, read_image
    data = real_data_or_skip()
    src = sorted(data.rglob("*.jpg"))[0]
    cut = tmp_path / src.name
    cut.write_bytes(src.read_bytes())
    _cut_jpeg(cut)
    for reduce in (1, 2, 4):
        with pytest.raises(UnreadableFileError, match="ends early"):
            read_image(cut, reduce)
    assert read_image(src, 2).shape == (855, 1692, 3)


# ----------------------------------------------------------------------------- kills
def _kill_after(cmd: list[str], delay: float) -> None:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    kids = [k.pid for k in psutil.Process(proc.pid).children(recursive=True)] if proc.poll() is None else []
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert alive_after(kids, 5) == [], "a child outlived its killed parent"


def test_training_killed_at_ten_points_always_resumes(prepared_synth, tmp_path):
    _, lists = prepared_synth
    opts = tiny_train_opts(lists, tmp_path / "run", iters=60, val_interval=20) + [
        "train.checkpoint_interval=1", "train.keep_last=2", "data.num_workers=2"]
    cmd = [sys.executable, "-m", "paddle_lane.cli.main", "train", "--config", str(CONFIG), "--device", "cpu"]
    rng = random.Random(0)
    for k in range(10):
        flags = ["--resume"] if k else []
        _kill_after(cmd + flags + ["--opts", *opts], rng.uniform(2.5, 6.0))
    res = subprocess.run(cmd + ["--resume", "--opts", *opts], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ckpts = list_checkpoints(tmp_path / "run")
    assert ckpts and all(checkpoint_damage(p) is None for p in ckpts)
    assert read_state(ckpts[-1])["iter"] == 60 and (tmp_path / "run" / "stage0" / "best").is_dir()
    assert not [p for p in (tmp_path / "run" / "stage0").iterdir() if p.name.startswith(".")]


def test_inference_killed_at_ten_points_always_completes(prepared_synth, tmp_path):
    _, lists = prepared_synth
    run = tmp_path / "run"
    Trainer(load_config(CONFIG, tiny_train_opts(lists, run, iters=2, val_interval=2)), quiet=True).run()
    sub = tmp_path / "sub"
    all_list = tmp_path / "all.csv"
    pd.concat([pd.read_csv(lists / "train.csv"), pd.read_csv(lists / "val.csv")]).to_csv(all_list, index=False)
    cmd = [sys.executable, "-m", "paddle_lane.cli.main", "infer", "--config", str(run / "config.yml"), "--model",
           str(run / "stage0" / "best"), "--list", str(all_list), "--out", str(sub), "--tta", "flip",
           "--scales", "0.75,1,1.25", "--opts", "infer.num_workers=2"]
    rng = random.Random(1)
    for _ in range(10):
        _kill_after(cmd, rng.uniform(2.0, 5.0))
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "validation: OK" in res.stdout
    assert len(list(sub.glob("*.png"))) == len(pd.read_csv(all_list))


def test_sigkill_of_prepare_leaves_no_pool_worker(prepared_synth, tmp_path):
    raw, _ = prepared_synth
    cmd = [sys.executable, "-m", "paddle_lane.cli.main", "prepare", "--data-root", str(raw), "--out", str(tmp_path / "o"),
           "--workers", "2", "--cache", "--config", str(CONFIG), "--opts", "data.crop_offset=76", "data.frame_height=192"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: list[int] = []
    deadline = time.monotonic() + 60
    while len(kids) < 2 and time.monotonic() < deadline and proc.poll() is None:
        kids = [k.pid for k in psutil.Process(proc.pid).children(recursive=True)]
        time.sleep(0.05)
    if len(kids) < 2:
        pytest.skip("prepare finished before its pool could be observed")
    proc.kill()
    proc.wait(timeout=30)
    assert alive_after(kids, 5) == [], "a pool worker outlived the killed prepare"


def test_temp_files_of_a_killed_infer_are_removed_and_never_scored(prepared_synth, tmp_path):
    _, lists = prepared_synth
    run = tmp_path / "run"
    Trainer(load_config(CONFIG, tiny_train_opts(lists, run, iters=2, val_interval=2)), quiet=True).run()
    sub = tmp_path / "sub"
    args = ["infer", "--config", str(run / "config.yml"), "--model", str(run / "stage0" / "best"),
            "--list", str(lists / "val.csv"), "--out", str(sub), "--tta", "none"]
    assert cli.main(args) == 0
    stale = sub / f".{next(sub.glob('*.png')).name}.k2j3h4.png"  # what atomic_path leaves when killed
    stale.write_bytes(b"partial")
    from paddle_lane.evaluation.scorer import score_folders
    gt_dir = Path(pd.read_csv(lists / "val.csv")["label"][0]).parent
    report = score_folders(sub, gt_dir, "apollo8", workers=1, progress=False)
    assert not any(stale.name in p["file"] for p in report.problems)
    assert cli.main(args) == 0
    assert not stale.exists()


def test_manifest_differences_name_what_each_member_config_decides():
    from paddle_lane.inference.manifest import differences
    old = {"checkpoints": [{"path": "a", "sha256": "1", "size": [8, 4], "model": "lite width 4", "mean": [0.5] * 3,
                            "std": [0.2] * 3}], "weights": [1.0], "flip": True, "scales": [1.0],
           "config_sha1": "c", "code_version": "0.1.0"}
    new = {**old, "checkpoints": [{**old["checkpoints"][0], "mean": [0.4] * 3}]}
    assert differences(old, old) == []
    assert differences(old, new) == ["checkpoint 1 mean: [0.5, 0.5, 0.5] -> [0.4, 0.4, 0.4]"]
    other = {**old, "checkpoints": [{**old["checkpoints"][0], "sha256": "2", "path": "b"}], "flip": False}
    assert differences(old, other) == ["checkpoint 1: a -> b (other weights)", "flip: True -> False"]
