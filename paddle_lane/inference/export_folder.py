"""What an export folder is, without Paddle: its file names, format version and backends, and
reading its deploy.yml. The gunicorn master, the CLI's choices and the export cache use it."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from paddle_lane.core.errors import UserError

DEPLOY_FILE = "deploy.yml"
BACKENDS = ("onnxruntime", "onnxruntime-int8", "paddle-inference", "dygraph")
FORMAT_VERSION = 1
INT8_FILE = "model.int8.onnx"   # beside model.onnx when exported with --quantize int8


def export_formats(info: dict | None) -> set[str]:
    """The graph formats every member of an export holds: {"onnx", "paddle"} or a part of it."""
    if not info:
        return {"onnx", "paddle"}
    held = [set((m.get("files") or {}).keys()) for m in info.get("members", [])]
    if held and all(held):
        return set.intersection(*held)
    return {"onnx": {"onnx"}, "paddle": {"paddle"}}.get(info.get("formats"), {"onnx", "paddle"})


def read_deploy(export_dir: str | os.PathLike) -> dict:
    """deploy.yml of an export folder, checked for what loading needs (one-line errors)."""
    path = Path(export_dir) / DEPLOY_FILE
    if not path.is_file():
        raise UserError(f"{export_dir}: not an export folder (no {DEPLOY_FILE}); make one with `paddle-lane export`")
    try:
        info = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: unreadable YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION or not info.get("members"):
        raise UserError(f"{path}: not a paddle-lane deploy file of format_version {FORMAT_VERSION} with members")
    return info


def is_export_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / DEPLOY_FILE).is_file()
