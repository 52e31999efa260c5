"""Checkpoints on an exported backend (`infer --model RUN/stageN/best --backend onnxruntime`):
exported once, self-checked like any export, into a cache folder keyed by what the graphs are made
of (each checkpoint's SHA-256, its model section, size and mean/std, the ensemble weights, the
format, the ONNX opset and the exporter's versions), then reused. Another checkpoint, or the same
path trained further, is another key.

The cache is PADDLE_LANE_EXPORT_CACHE, default ~/.cache/paddle-lane/exports/; an entry is complete
when its deploy.yml exists (export_model renames a finished temp folder into place), and two
processes wanting the same entry take turns on a lock beside it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path

from paddle_lane.core.errors import UserError

CACHE_ENV = "PADDLE_LANE_EXPORT_CACHE"
LOCK_TIMEOUT_S = 1800  # another process exporting the same entry (a large model's conversion) is waited for this long
FORMAT_FOR = {"onnxruntime": "onnx", "paddle-inference": "both"}


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "paddle-lane" / "exports")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def cache_key(cfg, checkpoints, weights=None, member_configs=None, formats: str = "onnx") -> str:
    """SHA-256 (hex) of everything the exported graphs and deploy.yml's members depend on."""
    import paddle
    from paddle_lane.config import to_dict
    from paddle_lane.deploy.export import ONNX_OPSET
    from paddle_lane.inference.export_folder import FORMAT_VERSION
    from paddle_lane.inference.geometry import normalize_weights
    from paddle_lane.inference.predictor import checkpoint_size, member_config
    from paddle_lane.runs.checkpoint import file_digest, resolve_weights
    configs = list(member_configs or [None] * len(checkpoints))
    members = []
    for ckpt, explicit in zip(checkpoints, configs):
        own, _ = member_config(cfg, str(ckpt), explicit)
        d = to_dict(own)
        members.append({"sha256": file_digest(resolve_weights(ckpt))["sha256"], "model": d["model"],
                        "size": list(checkpoint_size(own, ckpt)), "mean": d["data"]["mean"], "std": d["data"]["std"]})
    what = {"members": members, "weights": [round(w, 8) for w in normalize_weights(weights, len(members))],
            "scheme": cfg.data.scheme, "formats": formats, "opset": ONNX_OPSET, "format_version": FORMAT_VERSION,
            "paddle": paddle.__version__, "paddle2onnx": _version("paddle2onnx"), "paddle_lane": _version("paddle-lane")}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _locked(path: Path):
    """An exclusive flock on `path`, waited for at most LOCK_TIMEOUT_S (another process exporting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise UserError(f"{path}: another process has been exporting this checkpoint for over "
                                f"{LOCK_TIMEOUT_S} s; try again later or remove {path.parent}") from None
            time.sleep(0.5)


def cached_export(cfg, checkpoints, weights=None, member_configs=None, backend: str = "onnxruntime",
                  say=print) -> Path:
    """The export folder of these checkpoints for `backend`: made on first use, reused after."""
    from paddle_lane.deploy.export import export_model
    from paddle_lane.inference.export_folder import is_export_dir
    if backend not in FORMAT_FOR:
        raise UserError(f"--backend {backend} for checkpoints: choose from {list(FORMAT_FOR)} or dygraph; "
                        f"{backend} needs an export made by `paddle-lane export`"
                        + (" --quantize int8" if backend == "onnxruntime-int8" else ""))
    formats = FORMAT_FOR[backend]
    key = cache_key(cfg, checkpoints, weights, member_configs, formats)
    folder = cache_root() / key[:24]
    if is_export_dir(folder):
        say(f"{backend}: reusing the export of these checkpoints cached in {folder}")
        return folder
    fd = _locked(folder.with_name(f".{folder.name}.lock"))
    try:
        if not is_export_dir(folder):  # the process we waited for may have made it
            t0 = time.perf_counter()
            export_model(cfg, list(checkpoints), weights, flip=False, formats=formats, out=folder,
                         member_configs=member_configs, force=True)
            say(f"{backend}: exported the checkpoints once into {folder} in {time.perf_counter() - t0:.1f} s "
                "(self-checked; reused while the checkpoints and the export options stay the same)")
        return folder
    finally:
        os.close(fd)
