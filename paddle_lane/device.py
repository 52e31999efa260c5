"""Pick the device: GPU when Paddle is built with CUDA and one is visible, else CPU."""
from __future__ import annotations

import os

import paddle


def select_device(prefer: str | None = None) -> str:
    """'gpu:N' or 'cpu'; `prefer` ('cpu'/'gpu') or PADDLE_LANE_DEVICE overrides the choice."""
    prefer = (prefer or os.environ.get("PADDLE_LANE_DEVICE", "")).lower()
    has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if prefer == "cpu" or not has_gpu:
        if prefer.startswith("gpu") and not has_gpu:
            raise RuntimeError("a GPU was requested but this Paddle build has no CUDA device")
        device = "cpu"
    else:
        device = f"gpu:{paddle.distributed.ParallelEnv().dev_id}"
    paddle.set_device(device)
    return device


def is_gpu(device: str) -> bool:
    return device.startswith("gpu")
