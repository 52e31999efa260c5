"""The deployment chain on the package as a user installs it: the built wheel (not an editable install)
with the run-time lock and paddleseg --no-deps, in a fresh venv, run from a folder outside the checkout:
doctor, prepare on synthetic data, train a few iterations, export, serve + requests through `client`,
evaluate. Nothing here imports the project from the checkout; .venv is not touched.

Slow (a fresh venv of the whole lock: minutes with pip's cache, more without); .ci/run runs it."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

from test_packaging import build_wheel, source_copy

ROOT = Path(__file__).resolve().parents[1]
STEP_TIMEOUT = 900
TINY = ["data.crop_offset=76", "data.frame_height=192", "data.num_workers=0", "data.use_cache=false",
        "stages=[{width: 128, height: 48, batch_size: 4, iters: 6, lr: 0.01}]", "train.val_interval=6",
        "train.log_interval=2", "train.vis_images=1", "train.train_eval_images=1", "schedule.warmup_iters=2",
        "model.width=4", "infer.num_workers=0"]

pytestmark = pytest.mark.slow


def run(argv: list, cwd: Path, env: dict, timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, argv))} -> {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv holding the wheel, the run-time lock and paddleseg (--no-deps), as the Dockerfile builds it."""
    base = tmp_path_factory.mktemp("installed")
    wheel = build_wheel(source_copy(base / "src"), base / "dist")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, "-r", ROOT / "requirements.lock"], base, dict(os.environ), timeout=3600)
    run([*pip, "--no-deps", "-r", ROOT / "requirements-nodeps.lock"], base, dict(os.environ))
    run([*pip, "--no-deps", wheel], base, dict(os.environ))
    return base, venv, wheel


def test_wheel_in_a_fresh_venv_runs_the_deployment_chain(installed):
    base, venv, wheel = installed
    work = base / "user"          # outside the checkout: nothing of it on any path
    work.mkdir()
    shutil.copytree(ROOT / "configs", work / "configs")   # the user's own config files
    bin_dir = venv / "bin"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(work), "OMP_NUM_THREADS": "2", "LANG": "C.UTF-8"}
    cli = bin_dir / "paddle-lane"
    py = bin_dir / "python"

    # installed, not linked to the checkout
    where = run([py, "-c", "import paddle_lane, paddle_lane.core; print(paddle_lane.__file__); print(paddle_lane.core.__file__)"],
                work, env).stdout.split()
    assert all(str(venv) in w and str(ROOT) not in w for w in where), where

    out = run([cli, "doctor"], work, env).stdout
    assert "checks passed" in out and "scheme apollo8 8 classes" in out, out

    run([py, "-c", "from paddle_lane.prepare.synth import make_dataset; make_dataset('raw', roads=('Road02', 'Road03'), "
                   "records_per_road=3, frames_per_record=2, width=384, height=192, seed=3)"], work, env)
    config = work / "configs" / "demo_tiny.yml"
    run([cli, "prepare", "--data-root", "raw", "--out", "prep", "--config", config, "--workers", "1",
         "--opts", "data.crop_offset=76", "data.frame_height=192", "prepare.val_fraction=0.34"], work, env)
    val = (work / "prep" / "val.csv").read_text().splitlines()
    assert len(val) >= 3, val

    run([cli, "train", "--config", config, "--opts", "data.lists_dir=prep", "train.output_dir=run", *TINY],
        work, env)
    best = work / "run" / "stage0" / "best"
    assert best.is_dir(), sorted(p.name for p in (work / "run").rglob("*"))

    run([cli, "export", "--config", work / "run" / "config.yml", "--model", best, "--out", "export"], work, env)
    assert (work / "export" / "deploy.yml").is_file()

    port = free_port()
    log = (work / "serve.log").open("w")
    server = subprocess.Popen([str(cli), "serve", "--model", "export", "--port", str(port), "--workers", "1"],
                              cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (work / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (work / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        run([cli, "client", "--url", f"http://127.0.0.1:{port}", "--list", "prep/val.csv", "--out", "served",
             "--concurrency", "2", "--no-zip"], work, env)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
        log.close()
    assert server.returncode == 0, (work / "serve.log").read_text()[-3000:]
    assert len(list((work / "served").glob("*.png"))) == len(val) - 1

    scores = run([cli, "evaluate", "--pred", "served", "--gt", "prep/val.csv", "--threads", "1"], work, env).stdout
    assert "mIoU" in scores, scores
