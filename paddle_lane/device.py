"""Pick the device: GPU when Paddle is built with CUDA and one is visible, else CPU."""
from __future__ import annotations

import os

import paddle

from paddle_lane.core.errors import UserError


def cuda_device_count() -> int:
    """CUDA devices Paddle can use here; 0 on a CPU-only build."""
    return paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0


def require_cuda(what: str) -> int:
    """The visible CUDA device count, or a one-line UserError saying `what` needs CUDA."""
    count = cuda_device_count()
    if count == 0:
        build = "has no CUDA" if not paddle.device.is_compiled_with_cuda() else "sees no CUDA device"
        raise UserError(f"{what} needs a GPU, but the Paddle installed here {build} "
                        "(install paddlepaddle-gpu, see PADDLE_LANE_PADDLE in run.sh)")
    return count


def _gpu_index(prefer: str) -> int | None:
    """N of 'gpu:N', None for plain 'gpu'; anything else after 'gpu' is a UserError."""
    head, colon, index = prefer.partition(":")
    if head == "gpu" and not colon:
        return None
    if head != "gpu" or not index.isdigit():
        raise UserError(f"device {prefer!r}: expected gpu or gpu:N with N a card id")
    return int(index)


def select_device(prefer: str | None = None) -> str:
    """'gpu:N' or 'cpu'; `prefer` ('cpu', 'gpu' or 'gpu:N') or PADDLE_LANE_DEVICE overrides the choice."""
    prefer = (prefer or os.environ.get("PADDLE_LANE_DEVICE", "")).lower()
    if prefer.startswith("gpu"):
        index = _gpu_index(prefer)
        count = require_cuda(f"device {prefer!r}")
        if index is not None and index >= count:
            raise UserError(f"device {prefer!r}: only {count} CUDA device(s) visible (ids 0-{count - 1})")
        # gpu:N is an explicit card; plain gpu follows the launcher's card for this rank
        device = f"gpu:{paddle.distributed.ParallelEnv().dev_id if index is None else index}"
    elif prefer == "cpu" or cuda_device_count() == 0:
        device = "cpu"
    else:
        device = f"gpu:{paddle.distributed.ParallelEnv().dev_id}"
    paddle.set_device(device)
    return device


def is_gpu(device: str) -> bool:
    return device.startswith("gpu")
