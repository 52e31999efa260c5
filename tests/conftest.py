"""Shared fixtures and helpers: a small synthetic dataset prepared once per session, a free
loopback port, a grey label PNG, and a checkpoint of a freshly initialised model."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "apollo_dev"

os.environ.setdefault("OMP_NUM_THREADS", "2")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_gray(path: str | Path, ids: np.ndarray) -> Path:
    """ids as a one-channel 8-bit PNG (an Apollo grey label or a submission file); parents made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(ids, np.uint8), "L").save(path)
    return path


def random_checkpoint(model_cfg, path: Path, size: tuple[int, int], seed: int | None = None,
                      num_classes: int = 8) -> Path:
    """A checkpoint folder at path: a freshly initialised model (seeded when seed is given) whose
    state.json says it was trained at size (w, h)."""
    import paddle

    from paddle_lane.models import build_model
    from paddle_lane.runs.checkpoint import save_checkpoint
    if seed is not None:
        paddle.seed(seed)
    return save_checkpoint(path, build_model(model_cfg, num_classes), state={"stage": 0, "size": list(size)})


# A lite model at 128x48 on 384x192 frames (76 rows cut, as 690 of 1710): exports and servers in tests
EXPORT_CONFIG = ROOT / "configs" / "demo_tiny.yml"
EXPORT_OPTS = ["data.crop_offset=76", "data.frame_height=192", "data.use_cache=false", "model.width=4",
               "infer.num_workers=0", "infer.flip=false", "infer.scales=[1.0]", "infer.batch_size=2",
               "stages=[{width: 128, height: 48, batch_size: 2, iters: 1, lr: 0.01}]"]


def real_data_or_skip() -> Path:
    """The 30 real competition frames beside the project, or skip the test."""
    if not (REAL_DATA / "pairs.csv").exists():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def prepared_synth(tmp_path_factory):
    """Synthetic frames (384x192) prepared into lists; returns (raw_root, lists_dir)."""
    from paddle_lane.config import load_config
    from paddle_lane.prepare.pipeline import prepare
    from paddle_lane.prepare.synth import make_dataset

    base = tmp_path_factory.mktemp("synth")
    raw = base / "raw"
    make_dataset(raw, roads=("Road02", "Road03"), records_per_road=3, frames_per_record=2,
                 width=384, height=192, seed=3, test_frames=2)
    lists = base / "prepare"
    cfg = load_config(ROOT / "configs" / "demo_tiny.yml",
                      [f"data.lists_dir={lists}", "data.crop_offset=76", "data.frame_height=192", "prepare.val_fraction=0.34"])
    prepare(raw, lists, cfg, workers=1)
    return raw, lists


def tiny_train_opts(lists: Path, out: Path, iters: int = 40, val_interval: int = 20) -> list[str]:
    """Overrides for a fast one-stage CPU run of the lite model."""
    return [f"data.lists_dir={lists}", f"train.output_dir={out}", "data.crop_offset=76", "data.frame_height=192",
            "data.num_workers=0", "data.use_cache=false",
            f"stages=[{{width: 128, height: 48, batch_size: 4, iters: {iters}, lr: 0.01}}]",
            f"train.val_interval={val_interval}", "train.log_interval=5", "train.vis_images=1",
            "schedule.warmup_iters=5", "model.width=8"]


def run_until_signalled(trainer, at_iter: int) -> None:
    """Run `trainer`, sending this process SIGTERM right after iteration `at_iter` (what a scheduler
    sends; the trainer only sets a flag), and expect it to stop with TrainingInterrupted."""
    import os
    import signal
    from paddle_lane.engine.trainer import TrainingInterrupted
    real_step = trainer.monitor.train_step

    def step_then_signal(stage, it, *args):
        real_step(stage, it, *args)
        if it == at_iter:
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.monitor.train_step = step_then_signal
    with pytest.raises(TrainingInterrupted):
        trainer.run()


def alive_after(pids: list[int], seconds: float) -> list[int]:
    """The pids still running (zombies excluded) once `seconds` have passed, or [] as soon as none is."""
    import time
    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + seconds
    while True:
        alive = [p for p in pids if running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)
