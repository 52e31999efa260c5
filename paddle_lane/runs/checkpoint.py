"""Checkpoints: one folder per save (model, optimizer, LR and run state), written to a
temp folder and renamed, so a killed run never leaves a half-written checkpoint. state.json
holds each file's size and SHA-256, so a checkpoint damaged later (a truncated copy, a full
disk) is recognised and --resume falls back to the newest intact one."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import paddle

STATE_FILE = "state.json"
MODEL_FILE = "model.pdparams"
OPTIM_FILE = "optimizer.pdopt"


# what a periodic checkpoint's state.json must hold for a resume
RESUME_KEYS = ("stage", "iter", "lr", "best_miou", "best_iter", "bad_vals")


def _write_folder(folder: Path, fill, state: dict | None) -> Path:
    """Make `folder` atomically: fill(temp folder) writes the files, then state.json records
    their digests, then one rename installs it (replacing an older folder of that name)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        fill(tmp)
        files = {p.name: file_digest(p) for p in sorted(tmp.iterdir())}
        (tmp / STATE_FILE).write_text(json.dumps({**(state or {}), "files": files}, indent=2))
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


def save_checkpoint(folder: str | Path, model, optimizer=None, state: dict | None = None) -> Path:
    """Write model (+ optimizer, state.json) atomically into `folder` (replacing it)."""
    def fill(tmp: Path) -> None:
        paddle.save(model.state_dict(), str(tmp / MODEL_FILE))
        if optimizer is not None:
            paddle.save(portable_optimizer_state(model, optimizer), str(tmp / OPTIM_FILE))
    return _write_folder(Path(folder), fill, state)


def copy_weights(source: str | Path, folder: str | Path) -> Path:
    """A weights-only checkpoint (model + state.json) copied from another one, atomically."""
    source = Path(source)
    state = {k: v for k, v in read_state(source).items() if k != "files"}
    return _write_folder(Path(folder), lambda tmp: shutil.copyfile(source / MODEL_FILE, tmp / MODEL_FILE), state)


def reconcile_best(stage_dir: str | Path, state: dict) -> str | None:
    """Make `stage_dir/best` hold the iteration that `state` (the newest intact checkpoint's)
    names as best. A kill or a full disk between the periodic save and the best save leaves
    best/ one validation behind (or damaged, or missing); it is re-saved from the periodic
    checkpoint of that iteration. Returns what was done or what could not be, or None."""
    stage_dir = Path(stage_dir)
    want = state.get("best_iter", -1)
    if not isinstance(want, int) or want < 0:
        return None
    best = stage_dir / "best"
    damage = checkpoint_damage(best) if best.exists() else "missing"
    held = read_state(best).get("iter") if damage is None else None
    if held == want or (isinstance(held, int) and held > state.get("iter", held)):
        return None  # in agreement, or saved after the resume point (the resumed run validates it again)
    source = stage_dir / f"iter_{want:07d}"
    if source.is_dir() and checkpoint_damage(source) is None:
        copy_weights(source, best)
        why = f"it held iteration {held}" if damage is None else f"it was damaged: {damage}"
        return f"note: {best} re-saved from {source.name}, the best iteration the run's state names ({why})"
    if damage is None:
        return (f"warning: {best} holds iteration {held} while the run's state names {want} as best, and "
                f"{source.name} is gone; the next stage starts from {best} (iteration {held})")
    fallback = newest_intact_checkpoint(stage_dir.parent, warn=False, stage=int(stage_dir.name[5:] or 0))
    if fallback is None:
        return f"warning: {best} is {damage} and no intact checkpoint of {stage_dir.name} holds weights to replace it"
    copy_weights(fallback, best)
    return (f"warning: {best} was {damage} and {source.name} (the best iteration) is gone; best/ now holds "
            f"{fallback.name}, the newest intact checkpoint of {stage_dir.name}: the next stage starts from it")


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


def file_digest(path: Path) -> dict:
    """{"bytes": size, "sha256": hex digest} of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def read_state(folder: str | Path) -> dict:
    """state.json of a checkpoint ({} when absent); an unreadable one is a one-line error naming it."""
    path = Path(folder) / STATE_FILE
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid checkpoint state ({exc})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a valid checkpoint state (expected a JSON object)")
    return state


def checkpoint_damage(folder: str | Path, required: tuple[str, ...] = ()) -> str | None:
    """Why a checkpoint cannot be trusted, or None when every recorded file matches its digest
    (and state.json holds the `required` keys). Checkpoints written before digests were recorded
    are checked for presence only."""
    folder = Path(folder)
    try:
        state = read_state(folder)
    except ValueError as exc:
        return str(exc)
    if required:
        missing = [k for k in required if k not in state]
        if missing:
            return f"{STATE_FILE} has no {missing[0]!r} key"
    files = state.get("files") or {MODEL_FILE: None}
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if want is None:
            continue
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {want['bytes']} were written"
        if file_digest(path)["sha256"] != want["sha256"]:
            return f"{name} does not match its SHA-256"
    return None


def newest_intact_checkpoint(run_dir: str | Path, warn: bool = True, stage: int | None = None) -> Path | None:
    """The newest periodic checkpoint (of `stage`, or of any) whose files match their digests and
    whose state holds what a resume reads; each damaged newer one is named in a warning and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        if stage is not None and path.parent.name != f"stage{stage}":
            continue
        damage = checkpoint_damage(path, RESUME_KEYS)
        if damage is None:
            return path
        if warn:
            print(f"warning: checkpoint {path} is damaged ({damage}); trying an older one", file=sys.stderr)
    return None


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
        # ordered by the folder names the trainer gives (stageN/iter_NNNNNNN), not by state.json,
        # which may be the damaged part; checkpoint_damage() reports that
        if p.is_dir() and (p / STATE_FILE).exists() and p.parent.name[5:].isdigit() and p.name[5:].isdigit():
            found.append((int(p.parent.name[5:]), int(p.name[5:]), p))
    return [p for _, _, p in sorted(found)]


def prune(run_dir: str | Path, stage: int, keep_last: int) -> None:
    """Keep the newest `keep_last` periodic checkpoints of a stage."""
    ckpts = [p for p in list_checkpoints(run_dir) if p.parent.name == f"stage{stage}"]
    for p in ckpts[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)
