"""Checkpoints: one folder per save (model, optimizer, LR and run state), written to a
temp folder and renamed, so a killed run never leaves a half-written checkpoint."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import paddle

STATE_FILE = "state.json"
MODEL_FILE = "model.pdparams"
OPTIM_FILE = "optimizer.pdopt"


def save_checkpoint(folder: str | Path, model, optimizer=None, state: dict | None = None) -> Path:
    """Write model (+ optimizer, state.json) atomically into `folder` (replacing it)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        paddle.save(model.state_dict(), str(tmp / MODEL_FILE))
        if optimizer is not None:
            paddle.save(portable_optimizer_state(model, optimizer), str(tmp / OPTIM_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(state or {}, indent=2))
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _rename_keys(state: dict, mapping: dict[str, str]) -> dict:
    """Rename accumulator keys '<param name>_moment1_0' by the longest matching param name."""
    names = sorted(mapping, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        hit = next((n for n in names if key.startswith(n + "_")), None) if isinstance(key, str) else None
        out[mapping[hit] + key[len(hit):] if hit else key] = value
    return out


def portable_optimizer_state(model, optimizer) -> dict:
    """Optimizer state keyed by structured parameter names (Paddle keys it by global
    counter names like conv2d_36.w_0, which differ between processes and model builds)."""
    to_struct = {p.name: "@" + n for n, p in model.named_parameters()}
    return _rename_keys(optimizer.state_dict(), to_struct)


def load_optimizer_state(model, optimizer, path: str | Path) -> None:
    """Load a portable optimizer state into this model's parameter names."""
    from_struct = {"@" + n: p.name for n, p in model.named_parameters()}
    optimizer.set_state_dict(_rename_keys(paddle.load(str(path)), from_struct))


def read_state(folder: str | Path) -> dict:
    path = Path(folder) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def resolve_weights(path: str | Path) -> Path:
    """A checkpoint folder or a .pdparams file -> the .pdparams path (clear error if absent)."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load_weights(model, path: str | Path) -> None:
    """Load our own checkpoint strictly: every model tensor must come from the file."""
    from paddle_lane.models.builder import load_weights as load_into
    path = resolve_weights(path)
    report = load_into(model, str(path))
    if report.missing:
        raise ValueError(f"{path}: checkpoint does not match the model: {len(report.missing)} parameter(s) "
                         f"missing, e.g. {report.missing[0]}")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Periodic checkpoints of a run, oldest first (by stage then iteration)."""
    found = []
    for p in Path(run_dir).glob("stage*/iter_*"):
        if p.is_dir() and (p / STATE_FILE).exists():
            st = read_state(p)
            found.append((st.get("stage", 0), st.get("iter", 0), p))
    return [p for _, _, p in sorted(found)]


def prune(run_dir: str | Path, stage: int, keep_last: int) -> None:
    """Keep the newest `keep_last` periodic checkpoints of a stage."""
    ckpts = [p for p in list_checkpoints(run_dir) if read_state(p).get("stage") == stage]
    for p in ckpts[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)
