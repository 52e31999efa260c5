"""`paddle-lane visualdl` serves a run's logs on loopback (real server, started and stopped here)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from conftest import ROOT, free_port


def test_visualdl_serves_training_scalars(tmp_path):
    from visualdl import LogWriter
    logdir = tmp_path / "vdl"
    with LogWriter(logdir=str(logdir)) as w:
        for step in range(3):
            w.add_scalar("train/loss", 1.0 / (step + 1), step)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "paddle_lane.cli.main", "visualdl", "--logdir", str(logdir),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        tags, deadline = None, time.time() + 90
        while time.time() < deadline and tags is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/app/api/scalar/tags", timeout=5) as r:
                    tags = json.loads(r.read())["data"]["tags"]
            except OSError:
                time.sleep(1)
        assert tags is not None, "VisualDL did not answer within 90 s"
        assert "train/loss" in tags[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/app/index", timeout=10) as r:
            assert r.status == 200  # the UI page itself, without an Accept-Language header
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
