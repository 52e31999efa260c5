"""Training as schedulers and clusters run it: a signal to the whole process group (SLURM,
systemd, `timeout`, Ctrl-C reach the loader workers too), a signal while the loader is stalled,
one run per folder, and hints that can be pasted back. Multi-process launches are in
test_cluster_multiprocess.py (slow)."""
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

CONFIG = ROOT / "configs" / "demo_tiny.yml"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def train_cmd(opts: list[str], *extra: str, script: Path | None = None) -> list[str]:
    entry = [str(script)] if script else ["-m", "paddle_lane.cli.main"]
    return [sys.executable, *entry, "train", "--config", str(CONFIG), "--device", "cpu", *extra, "--opts", *opts]


def long_run(lists: Path, out: Path, iters: int = 400) -> list[str]:
    """The shipped loader setting (2 workers), a long stage, validation at the end only."""
    return tiny_train_opts(lists, out, iters=iters, val_interval=iters) + ["data.num_workers=2"]


def start_in_own_group(cmd: list[str]) -> subprocess.Popen:
    """A command in its own session, as a scheduler starts a job: killpg reaches all of it."""
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_log_lines(out: Path, proc: subprocess.Popen, lines: int, timeout: float = 180) -> None:
    """Until train_log.jsonl holds `lines` lines (training is under way)."""
    deadline = time.monotonic() + timeout
    log = out / "train_log.jsonl"
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= lines:
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError(f"{log} did not reach {lines} lines")


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_process_group_checkpoints_like_a_signal_to_the_trainer(prepared_synth, tmp_path, signum, code):
    """The workers get the signal too and must leave shutdown to the trainer: one line naming the
    checkpoint of the current iteration and the full command to continue (with its --opts),
    the signal's exit code, and no process left behind."""
    _, lists = prepared_synth
    out = tmp_path / "run"
    proc = start_in_own_group(train_cmd(long_run(lists, out)))
    wait_for_log_lines(out, proc, 2)
    family = descendants(proc.pid)
    assert len(family) >= 2, family  # the loader workers are running
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "DataLoader" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    ckpts = sorted((out / "stage0").glob("iter_*"))
    assert len(ckpts) == 1, ckpts
    state = json.loads((ckpts[0] / "state.json").read_text())
    assert state["stopped_by"] == signal.Signals(signum).name and state["iter"] >= 10
    assert last.startswith(f"stopped by {signal.Signals(signum).name} at stage 0 iteration {state['iter']};"), last
    assert f"train.output_dir={out}" in last and "--resume" in last, last
    assert alive_after(family, 5) == []


STALL_AFTER_SCRIPT = """
import sys, time
from paddle_lane.data.dataset import LaneDataset
real_load = LaneDataset.load
def load(self, gid):
    if int(gid) >= {stall_from}:
        time.sleep(3600)  # every frame from here on never arrives
    return real_load(self, gid)
LaneDataset.load = load
from paddle_lane.cli import main as cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_signal_while_the_loader_is_stalled_is_acted_on_within_seconds(prepared_synth, tmp_path):
    """The main thread is blocked in Paddle's queue, where its Python handler cannot run: the
    stop still comes within seconds (not after loader_timeout), with a checkpoint of the last
    finished step."""
    _, lists = prepared_synth
    script = tmp_path / "stall.py"
    batch = 4
    script.write_text(STALL_AFTER_SCRIPT.format(stall_from=batch * 12))  # batches 1-12 arrive, then nothing
    out = tmp_path / "run"
    proc = start_in_own_group(train_cmd(long_run(lists, out) + ["data.loader_timeout=600"], script=script))
    wait_for_log_lines(out, proc, 2)  # 10 steps done
    time.sleep(4)  # the loader has delivered all it will; the trainer waits
    family = descendants(proc.pid)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert time.monotonic() - t0 < 15
    ckpts = sorted((out / "stage0").glob("iter_*"))
    assert [c.name for c in ckpts] == ["iter_0000012"], ckpts
    assert json.loads((ckpts[0] / "state.json").read_text())["stopped_by"] == "SIGTERM"
    assert "stopped by SIGTERM at stage 0 iteration 12;" in err and "stalled" in err, err[-2000:]
    assert alive_after(family, 5) == []


def test_a_second_train_on_a_running_folder_is_refused_naming_the_holder(prepared_synth, tmp_path):
    _, lists = prepared_synth
    out = tmp_path / "run"
    first = start_in_own_group(train_cmd(long_run(lists, out)))
    try:
        wait_for_log_lines(out, first, 1)
        for extra in ((), ("--resume",)):
            second = subprocess.run(train_cmd(long_run(lists, out), *extra), env=ENV, capture_output=True, text=True,
                                    timeout=120)
            assert second.returncode == 2, second.stderr[-2000:]
            line = second.stderr.strip().splitlines()[-1]
            assert line.startswith(f"error: {out} is in use by another train (PID {first.pid},"), line
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 143
    # once the holder is gone, the folder is free again (the kernel dropped the lock)
    resumed = subprocess.run(train_cmd(long_run(lists, out, iters=14), "--resume", "--allow-config-change"),
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


HOLD_SCRIPT = """
import sys, time
from paddle_lane.core.folder_lock import hold_folder
hold_folder(sys.argv[1], sys.argv[2])
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("verb", ["prepare", "infer", "client"])
def test_prepare_infer_and_client_refuse_an_output_folder_in_use(prepared_synth, tmp_path, verb):
    raw, lists = prepared_synth
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(out), verb], env=ENV, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        if verb == "prepare":
            cmd = [sys.executable, "-m", "paddle_lane.cli.main", "prepare", "--data-root", str(raw), "--out", str(out),
                   "--config", str(CONFIG), "--opts", "data.crop_offset=76", "data.frame_height=192"]
        elif verb == "infer":
            cmd = [sys.executable, "-m", "paddle_lane.cli.main", "infer", "--config", str(CONFIG), "--model",
                   str(tmp_path / "no_such_ckpt"), "--list", str(lists / "val.csv"), "--out", str(out)]
        else:  # refused before the (unreachable) service is asked anything
            cmd = [sys.executable, "-m", "paddle_lane.cli.main", "client", "--url", "http://127.0.0.1:9", "--list",
                   str(lists / "val.csv"), "--out", str(out), "--config", str(CONFIG)]
        res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: {out} is in use by another {verb} (PID {holder.pid},")


def test_a_missing_pretrained_file_is_found_before_the_run_folder_is_claimed(prepared_synth, tmp_path):
    _, lists = prepared_synth
    out = tmp_path / "run"
    missing = tmp_path / "nowhere" / "model.pdparams"
    res = subprocess.run(train_cmd(tiny_train_opts(lists, out, iters=2) + [f"model.pretrained={missing}"]),
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: model.pretrained: weights file not found: {missing}"]
    assert not out.exists()  # the corrected command is not refused as a used folder


def test_an_unreachable_pretrained_url_is_one_line_and_leaves_no_file(prepared_synth, tmp_path):
    import socket
    _, lists = prepared_synth
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "weights_cache"
    url = f"http://127.0.0.1:{port}/models/model.pdparams"
    env = dict(ENV, PADDLE_LANE_WEIGHTS_CACHE=str(cache))
    res = subprocess.run(train_cmd(tiny_train_opts(lists, tmp_path / "run", iters=2) + [f"model.pretrained={url}"]),
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: model.pretrained: cannot download {url}: "), lines
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    assert not (tmp_path / "run").exists()


def test_a_url_served_once_is_downloaded_once_and_loaded(tmp_path):
    """The download path end to end against a real HTTP server: a 404 leaves nothing, a served
    file is cached and the second fetch does not ask the server again."""
    import http.server
    import threading
    import numpy as np
    import paddle
    from paddle_lane.core.errors import UserError
    from paddle_lane.models.download import fetch_weights

    root = tmp_path / "www"
    root.mkdir()
    paddle.save({"w": paddle.to_tensor(np.arange(6, dtype="float32"))}, str(root / "model.pdparams"))
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    os.environ["PADDLE_LANE_WEIGHTS_CACHE"] = str(tmp_path / "cache")
    try:
        with pytest.raises(UserError, match=r"^model.pretrained: cannot download .*/absent.pdparams: HTTP 404 "):
            fetch_weights(f"{base}/absent.pdparams", "model.pretrained")
        assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
        first = fetch_weights(f"{base}/model.pdparams")
        second = fetch_weights(f"{base}/model.pdparams")
    finally:
        del os.environ["PADDLE_LANE_WEIGHTS_CACHE"]
        server.shutdown()
    assert first == second and Path(first).read_bytes() == (root / "model.pdparams").read_bytes()
    assert hits.count("/model.pdparams") == 1
    np.testing.assert_array_equal(paddle.load(first)["w"].numpy(), np.arange(6, dtype="float32"))


ORPHAN_SCRIPT = """
import os, sys, time
from paddle_lane.core.procs import die_with_parent
pid = os.fork()
if pid == 0:
    time.sleep(1.0)  # the parent is gone by now: getppid() already names the new parent
    die_with_parent()
    open(sys.argv[1], "w").write("survived")
    time.sleep(30)
    os._exit(0)
print(pid, flush=True)
os._exit(0)
"""


def test_a_worker_whose_parent_died_before_its_initialiser_ran_exits(tmp_path):
    """A pool worker forked just before its parent was killed outlived it (seen after a SIGKILL
    of prepare): the initialiser must compare with the PID that forked it, not ask getppid()."""
    marker = tmp_path / "survived"
    res = subprocess.run([sys.executable, "-c", ORPHAN_SCRIPT, str(marker)], env=ENV, capture_output=True, text=True,
                         timeout=60)
    child = int(res.stdout.strip())
    assert alive_after([child], 5) == []
    assert not marker.exists()
