"""Annotate a driving video: predict lanes per frame and write coloured overlays with the
measured frames per second drawn on each frame."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from paddle_lane.core.io_utils import atomic_path
from paddle_lane.core.visual import overlay

FOURCC = "mp4v"
DEFAULT_FPS = 10.0  # when the container does not say


def draw_fps(bgr: np.ndarray, fps: float) -> np.ndarray:
    """Write 'N.N fps' in the top-left corner (black outline keeps it readable on any road)."""
    text = f"{fps:.1f} fps"
    scale = max(0.4, bgr.shape[1] / 1200)
    thick = max(1, int(round(scale * 2)))
    org = (int(10 * scale) + 4, int(30 * scale) + 4)
    cv2.putText(bgr, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(bgr, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return bgr


def _open(input_path: str | Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(input_path))
    if not cap.isOpened():
        raise ValueError(f"cannot open video: {input_path}")
    return cap


def annotate_video(predictor, input_path: str | Path, out_path: str | Path, every: int = 1,
                   progress: bool = True) -> dict:
    """Overlay predictions on every frame (a new prediction every `every` frames, the last one
    reused in between); returns frame counts and the measured frames per second."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    cap = _open(input_path)
    fps_in = cap.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    palette = predictor.scheme.palette()
    frames = predicted = 0
    train_ids, start = None, time.perf_counter()
    out_path = Path(out_path)
    writer = None
    try:
        with atomic_path(out_path, suffix=out_path.suffix or ".mp4") as tmp:
            for bgr in tqdm(_frames(cap), total=total, desc="video", unit="frame", disable=not progress):
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                if frames % every == 0 or train_ids is None:
                    train_ids = predictor.predict_train_ids(rgb)
                    predicted += 1
                frames += 1
                fps = frames / max(time.perf_counter() - start, 1e-9)
                out = draw_fps(cv2.cvtColor(overlay(rgb, train_ids, palette), cv2.COLOR_RGB2BGR), fps)
                writer = writer or _writer(tmp, fps_in, out.shape)
                writer.write(out)
            if writer is None:
                raise ValueError(f"{input_path}: no frames could be read")
            writer.release()  # flush before the rename
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    seconds = time.perf_counter() - start
    return {"input": str(input_path), "output": str(out_path), "frames": frames, "predicted": predicted,
            "seconds": round(seconds, 3), "fps": frames / seconds if seconds > 0 else 0.0}


def _frames(cap: cv2.VideoCapture):
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield frame


def _writer(path: str, fps: float, shape: tuple) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*FOURCC), fps, (shape[1], shape[0]))
    if not writer.isOpened():
        raise ValueError(f"cannot write video {path} with codec {FOURCC}")
    return writer
