"""What made a submission folder: checkpoint file hashes, ensemble weights, TTA, the config
parts that shape the output, and the code version. A folder is resumed only by the same
recipe; another recipe is refused (or, with --overwrite, the old folder is moved aside), so
a submission never mixes two models' masks."""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from data_prep.io_utils import atomic_write_json
from paddle_lane.config import to_dict
from paddle_lane.engine.checkpoint import file_digest, resolve_weights
from paddle_lane.engine.run_dir import move_aside
from paddle_lane.errors import UserError

MANIFEST_FILE = "manifest.json"


def code_version() -> str:
    try:
        return metadata.version("paddle-lane")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_manifest(predictor, cfg) -> dict:
    """The recipe of a Predictor's outputs (checkpoints by content, not by path)."""
    d = to_dict(cfg)
    shaping = {"data": {k: d["data"][k] for k in ("scheme", "crop_offset", "frame_height", "mean", "std")},
               "model": d["model"],
               "infer": {k: d["infer"][k] for k in ("window", "window_stride", "name_suffix")}}
    config_sha1 = hashlib.sha1(json.dumps(shaping, sort_keys=True).encode()).hexdigest()
    return {
        "checkpoints": [{"path": m.name, "sha256": m.sha256 or file_digest(resolve_weights(m.name))["sha256"],
                         "size": list(m.size), "model": m.arch, "mean": list(m.mean), "std": list(m.std)}
                        for m in predictor.members],
        "weights": [round(m.weight, 6) for m in predictor.members],
        "flip": predictor.flip, "scales": list(predictor.scales),
        "config_sha1": config_sha1, "code_version": code_version(),
        **({"backend": predictor.backend} if getattr(predictor, "backend", "dygraph") != "dygraph" else {}),
    }


def differences(old: dict, new: dict) -> list[str]:
    """Readable differences between two manifests ('checkpoint 1 content', 'flip: False -> True')."""
    out = []
    old_ck, new_ck = old.get("checkpoints", []), new.get("checkpoints", [])
    if len(old_ck) != len(new_ck):
        out.append(f"models: {len(old_ck)} -> {len(new_ck)}")
    for i, (a, b) in enumerate(zip(old_ck, new_ck)):
        if a.get("sha256") != b.get("sha256"):
            out.append(f"checkpoint {i + 1}: {a.get('path')} -> {b.get('path')} (other weights)")
        else:
            for key in ("size", "model", "mean", "std"):  # what each member's own config decides
                if a.get(key) != b.get(key):
                    out.append(f"checkpoint {i + 1} {key}: {a.get(key)} -> {b.get(key)}")
    for key in ("weights", "flip", "scales", "config_sha1", "code_version", "backend"):
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)} -> {new.get(key)}")
    return out


def claim_folder(out_dir: Path, manifest: dict, overwrite: bool) -> str:
    """Make out_dir this recipe's: a new or empty folder gets the manifest; the same recipe
    resumes; another recipe is refused, or with `overwrite` moved aside. Returns what was done."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST_FILE
    pngs = list(out_dir.glob("*.png")) if out_dir.is_dir() else []
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {"unreadable": True}
        diffs = differences(old, manifest) if "unreadable" not in old else [f"{path} is unreadable"]
        if not diffs:
            return f"resuming {out_dir} (same checkpoints, weights, TTA and config)"
    elif pngs:
        diffs = [f"{len(pngs)} PNG(s) without a {MANIFEST_FILE} (made by an unknown recipe)"]
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, manifest)
        return f"new submission folder {out_dir}"
    if not overwrite:
        raise UserError(f"{out_dir} holds another submission ({'; '.join(diffs)}): choose another --out, "
                        "or pass --overwrite to move it aside and start over")
    aside = move_aside(out_dir)
    out_dir.mkdir(parents=True)
    atomic_write_json(path, manifest)
    return f"moved the previous submission aside to {aside} ({'; '.join(diffs)}); starting over"
