"""Training that never hangs or leaks, at the settings users run (loader workers on):
stage transitions, SIGTERM (checkpoint, exit 143, exact resume), SIGKILL (no orphans), a
stalled loader (one line, exit 4), a damaged checkpoint (resume falls back), and VisualDL
steps that read as one curve across stages."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from conftest import ROOT, alive_after, run_until_signalled, tiny_train_opts
from paddle_lane.config import load_config
from paddle_lane.engine.trainer import Trainer
from paddle_lane.runs.checkpoint import checkpoint_damage

CONFIG = ROOT / "configs" / "demo_tiny.yml"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def _train_cmd(opts: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "paddle_lane.cli.main", "train", "--config", str(CONFIG), "--device", "cpu",
            *extra, "--opts", *opts]


def _workers_of(proc: subprocess.Popen, want: int = 2, timeout: float = 60) -> list[psutil.Process]:
    """The loader worker processes of a training subprocess, once `want` of them run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children(recursive=True)
        if len(kids) >= want:
            return kids
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.returncode}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError("no loader workers appeared")


def _wait_for_steps(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the run's VisualDL log holds a few training steps (set-up is over)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = list((out / "vdl").glob("vdlrecords*"))
        if logs and logs[0].stat().st_size > 4000:
            return
        assert proc.poll() is None, f"trainer exited early: {proc.returncode}"
        time.sleep(0.1)
    raise AssertionError("no training step was logged")


def _long_run(lists: Path, out: Path, iters: int = 400) -> list[str]:
    return tiny_train_opts(lists, out, iters=iters, val_interval=iters) + ["data.num_workers=2"]


def test_sigterm_writes_a_checkpoint_exits_143_and_resume_is_exact(prepared_synth, tmp_path):
    _, lists = prepared_synth
    out = tmp_path / "run"
    opts = _long_run(lists, out)
    proc = subprocess.Popen(_train_cmd(opts), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [w.pid for w in _workers_of(proc)]
    _wait_for_steps(out, proc)  # mid-stage: training steps are being logged
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert time.monotonic() - t0 < 15
    assert alive_after(workers, 5) == []
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM at stage 0 iteration") and "--resume" in last, last
    ckpts = sorted((out / "stage0").glob("iter_*"))
    assert len(ckpts) == 1
    stopped_at = json.loads((ckpts[0] / "state.json").read_text())["iter"]
    assert 0 < stopped_at < 400 and f"iteration {stopped_at};" in last

    # the resumed and the uninterrupted run each in a fresh process, like the interrupted one: a
    # process whose earlier work changed a global numeric setting (a Paddle Inference predictor
    # does) would not compute bit for bit like a fresh one
    resume = subprocess.run(_train_cmd(opts, "--resume"), env=ENV, capture_output=True, text=True, timeout=600)
    assert resume.returncode == 0, resume.stderr[-2000:]
    straight_opts = _long_run(lists, tmp_path / "straight")
    straight = subprocess.run(_train_cmd(straight_opts), env=ENV, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    log_every = load_config(CONFIG, opts).train.log_interval

    def losses(run_dir: Path) -> dict[int, float]:
        """Mean loss per log interval, of the intervals wholly after the stop."""
        records = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
        return {r["iter"]: r["loss"] for r in records if r["iter"] - log_every >= stopped_at}

    got, after = losses(out), losses(tmp_path / "straight")
    assert sorted(got) == sorted(after) and max(got) == 400 and len(got) >= 5
    np.testing.assert_allclose([got[i] for i in sorted(got)], [after[i] for i in sorted(after)], rtol=1e-5)


@pytest.mark.parametrize("delay", [0.8, 1.6])
def test_sigterm_early_is_exit_143_never_a_traceback(prepared_synth, tmp_path, delay):
    """SIGTERM while Paddle is imported or the trainer is built (or, on a fast machine, just after
    training began): one line, exit 143, and any checkpoint left is resumable."""
    _, lists = prepared_synth
    proc = subprocess.Popen(_train_cmd(_long_run(lists, tmp_path / "run")), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-1500:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM") and "Traceback" not in err, err[-1500:]
    if "before training began" in last:
        assert not list((tmp_path / "run").glob("stage*/iter_*"))
    else:
        assert all(checkpoint_damage(p) is None for p in (tmp_path / "run").glob("stage*/iter_*"))


def test_sigkill_of_the_trainer_leaves_no_worker_behind(prepared_synth, tmp_path):
    _, lists = prepared_synth
    proc = subprocess.Popen(_train_cmd(_long_run(lists, tmp_path / "run")), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = [w.pid for w in _workers_of(proc)]
    proc.kill()
    proc.wait(timeout=30)
    assert alive_after(workers, 5) == []


STALL_SCRIPT = """
import sys, time
from paddle_lane.data.dataset import LaneDataset
real_load = LaneDataset.load
def load(self, gid):
    if int(gid) % len(self.rows) == 3:
        time.sleep(3600)  # a worker that never delivers this frame
    return real_load(self, gid)
LaneDataset.load = load
from paddle_lane.cli import main as cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_stalled_loader_is_one_line_and_exit_4(prepared_synth, tmp_path):
    _, lists = prepared_synth
    script = tmp_path / "stall.py"
    script.write_text(STALL_SCRIPT)
    opts = _long_run(lists, tmp_path / "run") + ["data.loader_timeout=4"]
    cmd = [sys.executable, str(script), "train", "--config", str(CONFIG), "--device", "cpu", "--opts", *opts]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = [w.pid for w in _workers_of(proc)]
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err[-2000:]
    assert time.monotonic() - t0 < 60
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    stuck_key = pd.read_csv(lists / "train.csv")["key"][3]
    assert "stage 0 iteration" in errors[0] and stuck_key in errors[0] and "stalled" in errors[0], errors[0]
    assert alive_after(workers, 5) == []


def test_resume_skips_a_damaged_newest_checkpoint(prepared_synth, tmp_path, capsys):
    _, lists = prepared_synth
    opts = tiny_train_opts(lists, tmp_path / "run", iters=6, val_interval=2) + ["train.keep_last=3"]
    Trainer(load_config(CONFIG, opts), quiet=True).run()
    newest = tmp_path / "run" / "stage0" / "iter_0000006" / "model.pdparams"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a truncated copy
    capsys.readouterr()
    resumed = Trainer(load_config(CONFIG, opts), resume=True, quiet=True)
    resumed.run()
    err = capsys.readouterr().err
    assert "warning: checkpoint" in err and "iter_0000006 is damaged (model.pdparams has" in err, err
    assert [it for _, it, _ in resumed.history] == [5, 6]


def test_stage_transitions_with_loader_workers(prepared_synth, tmp_path):
    """Four stages (three transitions), each validated, with 2 loader workers, under a hard
    timeout: the fork-after-OpenCV deadlock hung ~70 % of forked workers."""
    _, lists = prepared_synth
    stages = "[" + ", ".join(f"{{width: {w}, height: {h}, batch_size: 2, iters: 3, lr: 0.01}}"
                             for w, h in [(128, 48), (160, 64), (128, 48), (160, 64)]) + "]"
    opts = tiny_train_opts(lists, tmp_path / "run", iters=3, val_interval=3) + ["data.num_workers=2",
                                                                                f"stages={stages}"]
    res = subprocess.run(_train_cmd(opts), env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["iter"], r["global_iter"]) for r in records] == [(0, 3, 3), (1, 3, 6), (2, 3, 9), (3, 3, 12)]


def test_visualdl_steps_are_one_curve_across_stages(prepared_synth, tmp_path):
    from visualdl import LogReader
    _, lists = prepared_synth
    stages = "[{width: 128, height: 48, batch_size: 2, iters: 4, lr: 0.01}, {width: 160, height: 64, batch_size: 2, iters: 3, lr: 0.01}]"
    opts = tiny_train_opts(lists, tmp_path / "run", iters=4, val_interval=2) + [f"stages={stages}"]
    Trainer(load_config(CONFIG, opts), quiet=True).run()
    record = next((tmp_path / "run" / "vdl").glob("vdlrecords*"))
    reader = LogReader(file_path=str(record))
    assert [r.id for r in reader.get_data("scalar", "train/loss")] == list(range(1, 8))
    assert [r.value for r in reader.get_data("scalar", "train/stage")] == [0, 0, 0, 0, 1, 1, 1]
    assert [r.id for r in reader.get_data("scalar", "val/miou")] == [2, 4, 6, 7]


def test_resume_keeps_the_best_checkpoint_of_the_uninterrupted_run(prepared_synth, tmp_path, monkeypatch):
    """Stopped at iteration 5 (SIGTERM in-process) and resumed: best/ holds the same iteration,
    score and weights as a run that was never stopped. Validation scores are scripted so the
    best comes before the stop (iteration 4) and a later, worse one must not replace it."""
    import paddle
    _, lists = prepared_synth
    scripted = {2: 0.5, 4: 0.9, 6: 0.3, 8: 0.4}
    monkeypatch.setattr(Trainer, "validate", lambda self, net, val, stage, it: scripted[it])

    def opts(name):
        return tiny_train_opts(lists, tmp_path / name, iters=8, val_interval=2) + ["train.keep_last=8"]

    Trainer(load_config(CONFIG, opts("straight")), quiet=True).run()
    run_until_signalled(Trainer(load_config(CONFIG, opts("stopped")), quiet=True), 5)
    Trainer(load_config(CONFIG, opts("stopped")), resume=True, quiet=True).run()
    a = json.loads((tmp_path / "straight" / "stage0" / "best" / "state.json").read_text())
    b = json.loads((tmp_path / "stopped" / "stage0" / "best" / "state.json").read_text())
    assert (a["best_iter"], a["iter"]) == (b["best_iter"], b["iter"]) == (4, 4)
    assert a["best_miou"] == pytest.approx(b["best_miou"], abs=1e-6)
    wa = paddle.load(str(tmp_path / "straight" / "stage0" / "best" / "model.pdparams"))
    wb = paddle.load(str(tmp_path / "stopped" / "stage0" / "best" / "model.pdparams"))
    for k in wa:
        np.testing.assert_allclose(wa[k].numpy(), wb[k].numpy(), rtol=1e-5, atol=1e-6)
