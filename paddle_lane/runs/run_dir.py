"""What a training run folder may be used for: a folder that holds a run is never trained into
again by default (that replaced a trained `best/` before), a resume must use the config the run
was made with, and stale temp entries of an interrupted save are cleared."""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import yaml

from paddle_lane.config import CONFIG_FILE
from paddle_lane.core.errors import UserError

# Keys that change how a run is watched or fed, not what it learns: free on resume.
RUNTIME_KEYS = re.compile(r"^(data\.num_workers|data\.loader_timeout|data\.lists_dir|train\.log_interval|"
                          r"train\.vis_images|train\.output_dir|infer\..*)$")
# Deliberate changes to a run's plan: allowed on resume with --allow-config-change.
PLAN_KEYS = re.compile(r"^(stages\.\d+\.iters|train\.val_interval|train\.patience|train\.keep_last|"
                       r"train\.checkpoint_interval|train\.checkpoint_minutes|train\.max_loss)$")


def stop_message(signame: str, state: dict | None, checkpoint: Path | None, resume_hint: str) -> str:
    """The one line a stopped run ends with: where it stopped, what was kept, how to continue."""
    if state is None:
        return f"stopped by {signame} before training began; continue with: {resume_hint}"
    return (f"stopped by {signame} at stage {state['stage']} iteration {state['iter']}; checkpoint {checkpoint}; "
            f"continue with: {resume_hint}")


def stopped_line(out: Path, signame: str, resume_hint: str) -> str:
    """stop_message for a run stopped in other processes (the ranks of a launch), read from the
    newest checkpoint's state.json (no Paddle import: the launching process stays light)."""
    import json
    found = []
    for path in Path(out).glob("stage*/iter_*/state.json"):
        try:
            state = json.loads(path.read_text())
            found.append(((state["stage"], state["iter"]), state, path.parent))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not found:
        return stop_message(signame, None, None, resume_hint)
    _, state, folder = max(found, key=lambda f: f[0])
    line = stop_message(signame, state, folder, resume_hint)
    return line if state.get("stopped_by") == signame else line + " (the newest checkpoint; no rank wrote one at the stop)"


def holds_run(out: Path) -> list[str]:
    """The entries that show `out` holds a training run (empty when it does not)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir()
                  if p.name in (CONFIG_FILE, "metrics.jsonl") or re.fullmatch(r"stage\d+", p.name))


def aside_name(out: Path) -> Path:
    """<out>.old-<YYYYmmdd-HHMMSS>[-n]: where a run moved aside goes (never over another)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = out.with_name(f"{out.name}.old-{stamp}"), 1
    while candidate.exists():
        candidate, n = out.with_name(f"{out.name}.old-{stamp}-{n}"), n + 1
    return candidate


def move_aside(out: Path) -> Path:
    """Rename a used folder out of the way (one rename: nothing is copied or deleted)."""
    target = aside_name(out)
    out.rename(target)
    return target


def check_fresh_start(out: Path, force: bool) -> Path | None:
    """Before a run without --resume: a folder holding a run is an error, or with `force` it
    is moved aside (returned); an empty or absent folder is fine."""
    found = holds_run(out)
    if not found:
        return None
    if not force:
        raise UserError(f"{out} already holds a training run ({', '.join(found)}): continue it with --resume, "
                        f"choose another train.output_dir, or pass --force to move it aside to {out.name}.old-<time>")
    return move_aside(out)


def flatten(tree, prefix: str = "") -> dict:
    """{'stages.0.iters': 1000, ...} from a nested dict/list config."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix.rstrip("."): tree}
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def config_differences(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """(key, value in the run, value now) for every leaf that differs, runtime-only keys left out."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in keys
            if a.get(k, "<absent>") != b.get(k, "<absent>") and not RUNTIME_KEYS.match(k)]


def check_resume_config(out: Path, current: dict, allow_change: bool) -> list[tuple[str, object, object]]:
    """Compare the config a run was made with to the one given now. Plan changes (more
    iterations, a new stage, validation or checkpoint cadence) need `allow_change`; anything
    else is refused. Returns the accepted differences."""
    path = out / CONFIG_FILE
    if not path.exists():
        return []
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc}); cannot check the config of the run to resume") from None
    saved.pop("source", None)
    current = {k: v for k, v in current.items() if k != "source"}
    diffs = config_differences(saved, current)
    n_saved = len(saved.get("stages", []))
    plan = [d for d in diffs if PLAN_KEYS.match(d[0]) or re.match(rf"^stages\.(\d+)\.", d[0])
            and int(d[0].split(".")[1]) >= n_saved]
    other = [d for d in diffs if d not in plan]
    listing = lambda ds: "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ds[:8]) + (" ..." if len(ds) > 8 else "")
    if other:
        raise UserError(f"cannot resume {out}: the config differs from the run's {path.name} in {listing(other)}; "
                        "start a new run (another train.output_dir, or --force to move this one aside)")
    if plan and not allow_change:
        raise UserError(f"cannot resume {out}: the config changes the run's plan ({listing(plan)}); "
                        "pass --allow-config-change to continue with it")
    return plan


def clear_stale_temps(out: Path) -> list[Path]:
    """Remove temp folders/files an interrupted checkpoint save left (names `.<final name>.*`)."""
    removed = []
    for stage in out.glob("stage*"):
        for p in stage.glob(".*"):
            if re.match(r"^\.(iter_\d+|best)\.", p.name):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed
