"""Two-process launches (`--nproc 2` on CPU, as `--gpus` on cards) as users run them: the
shipped loader setting (2 workers per rank), two stages with validation between them. A signal
to the process group checkpoints the agreed iteration and resumes to the unbroken run's numbers;
a kill -9 of the launching command leaves no rank or worker behind; validation logs what
`infer` + `evaluate` give the saved checkpoint. Slow: run with -m slow (CI runs them)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, alive_after, tiny_train_opts

pytestmark = pytest.mark.slow

CONFIG = ROOT / "configs" / "demo_tiny.yml"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
STAGES = ("[{width: 128, height: 48, batch_size: 2, iters: 30, lr: 0.01}, "
          "{width: 160, height: 64, batch_size: 2, iters: 20, lr: 0.005}]")


def two_stage_opts(lists: Path, out: Path) -> list[str]:
    return tiny_train_opts(lists, out, iters=30, val_interval=10) + [
        "data.num_workers=2", f"stages={STAGES}", "train.keep_last=2", "train.train_eval_images=2"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "paddle_lane.cli.main", *args]


def train(opts: list[str], *extra: str) -> list[str]:
    return cli("train", "--config", str(CONFIG), "--device", "cpu", "--nproc", "2", *extra, "--opts", *opts)


def metrics(out: Path) -> list[tuple]:
    return [(r["stage"], r["iter"], round(r["miou"], 6), round(r["train_miou"], 6))
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def family(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}) waiting for {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def log_lines(out: Path) -> int:
    log = out / "train_log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture(scope="module")
def unbroken(prepared_synth, tmp_path_factory):
    """The reference: a 2-process, 2-stage run never interrupted."""
    _, lists = prepared_synth
    out = tmp_path_factory.mktemp("unbroken") / "run"
    res = subprocess.run(train(two_stage_opts(lists, out)), env=ENV, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_validation_of_two_processes_scores_the_saved_checkpoint(prepared_synth, unbroken, tmp_path):
    """The logged mIoU of stage 1's best equals infer --tta none + evaluate of stage1/best."""
    _, lists = prepared_synth
    best_state = json.loads((unbroken / "stage1" / "best" / "state.json").read_text())
    logged = {(r["stage"], r["iter"]): r for r in map(json.loads, (unbroken / "metrics.jsonl").read_text().splitlines())}
    record = logged[(1, best_state["iter"])]
    assert record["ranks"] == 2
    pred = tmp_path / "pred"
    opts = two_stage_opts(lists, unbroken)
    res = subprocess.run(cli("infer", "--config", str(CONFIG), "--model", str(unbroken / "stage1" / "best"),
                             "--list", str(lists / "val.csv"), "--out", str(pred), "--tta", "none", "--no-zip",
                             "--device", "cpu", "--opts", *opts), env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run(cli("evaluate", "--pred", str(pred), "--gt", str(lists / "val.csv")), env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    scored = json.loads((pred / "scores.json").read_text())["results"]
    assert record["miou"] == pytest.approx(scored["miou"], abs=1e-5)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_group_signal_checkpoints_every_rank_at_one_iteration_and_resumes_to_the_unbroken_numbers(
        prepared_synth, unbroken, tmp_path, signum, code):
    """SIGTERM as a scheduler sends it, SIGINT as Ctrl-C in a terminal sends it: to the whole group."""
    _, lists = prepared_synth
    out = tmp_path / "run"
    opts = two_stage_opts(lists, out)
    proc = subprocess.Popen(train(opts), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for(lambda: log_lines(out) >= 3, proc, what="15 steps")  # mid stage 0, after one validation
    everyone = family(proc.pid)
    assert len(everyone) >= 7, everyone  # launcher, 2 ranks, 2 loader workers each
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-3000:]
    assert alive_after(everyone, 5) == []
    stopped = [p for p in out.glob("stage*/iter_*") if "stopped_by" in json.loads((p / "state.json").read_text())]
    assert len(stopped) == 1, stopped
    state = json.loads((stopped[0] / "state.json").read_text())
    last = err.strip().splitlines()[-1]
    assert state["stopped_by"] == signal.Signals(signum).name
    assert last.startswith(f"stopped by {signal.Signals(signum).name} at stage {state['stage']} iteration {state['iter']}; "
                           f"checkpoint {stopped[0]}; continue with: "), last
    assert "--nproc 2" in last and f"train.output_dir={out}" in last
    resumed = subprocess.run(train(opts, "--resume"), env=ENV, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics(out) == metrics(unbroken)


@pytest.mark.parametrize("victim", ["command", "launcher"])
def test_kill_9_leaves_no_rank_or_worker_behind(prepared_synth, tmp_path, victim):
    """SIGKILL of the user's command, or of paddle.distributed.launch under it: every rank and
    every loader worker dies too (they used to finish the run, re-parented to PID 1)."""
    _, lists = prepared_synth
    out = tmp_path / "run"
    long_stages = STAGES.replace("iters: 30", "iters: 2000").replace("iters: 20", "iters: 2000")
    proc = subprocess.Popen(train(two_stage_opts(lists, out) + [f"stages={long_stages}"]), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: log_lines(out) >= 1, proc, what="5 steps")
        everyone = family(proc.pid)
        assert len(everyone) >= 7, everyone
        target = proc.pid if victim == "command" else psutil.Process(proc.pid).children()[0].pid
        os.kill(target, signal.SIGKILL)
        assert alive_after(everyone + [proc.pid] * (victim == "launcher"), 10) == []
        logged = log_lines(out)
        time.sleep(3)
        assert log_lines(out) == logged  # nothing trains on in the folder
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
