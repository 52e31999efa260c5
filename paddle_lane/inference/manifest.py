"""What made a submission folder: checkpoint file hashes, ensemble weights, TTA, the config
parts that shape the output, and the code version (`infer`), or the served model's identity from
GET /v1/model (`client`). A folder is resumed only by the same recipe; another recipe is refused
(or, with --overwrite, the old folder is moved aside), so a submission never mixes two models'
masks. An infer folder and a client folder are compared on what both record: the checkpoints
by content, member geometry, weights, TTA, backend, scheme and crop."""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from paddle_lane.config import to_dict
from paddle_lane.core.errors import UserError
from paddle_lane.core.io_utils import atomic_write_json
from paddle_lane.runs.checkpoint import file_digest, resolve_weights
from paddle_lane.runs.run_dir import move_aside

MANIFEST_FILE = "manifest.json"

# compared between two manifests of the same maker ...
MEMBER_KEYS = {"infer": ("size", "model", "mean", "std"), "client": ("size", "model", "mean", "std", "files")}
RECIPE_KEYS = {"infer": ("weights", "flip", "scales", "config_sha1", "code_version", "backend"),
               "client": ("weights", "flip", "scales", "backend", "scheme", "crop_offset", "frame_height",
                          "export_version", "paddle_version")}
# ... and between an infer and a client manifest (a key only one of them records is skipped)
SHARED_MEMBER_KEYS = ("size", "mean", "std")
SHARED_KEYS = ("weights", "flip", "scales", "backend", "scheme", "crop_offset", "frame_height")
RESUMING = {"infer": "same checkpoints, weights, TTA and config",
            "client": "the same served model: checkpoints, files, weights and TTA"}


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
        "made_by": "infer", "scheme": predictor.scheme.name,
        "crop_offset": cfg.data.crop_offset, "frame_height": cfg.data.frame_height,
    }


def served_manifest(identity: dict, backend: str | None) -> dict:
    """The recipe of a served model's answers, from its GET /v1/model identity (no paths: per member
    the checkpoint's SHA-256 and each served file's) and the backend /readyz names (None in Redis mode)."""
    members = identity.get("members") or []
    tta = identity.get("tta") or {}
    geometry = identity.get("input") or {}
    return {
        "made_by": "client",
        "checkpoints": [{"sha256": m.get("checkpoint_sha256"), "size": list(m.get("size") or []),
                         "model": m.get("arch"), "mean": list(m.get("mean") or []), "std": list(m.get("std") or []),
                         "files": {name: d.get("sha256") for name, d in sorted((m.get("files") or {}).items())}}
                        for m in members],
        "weights": [round(float(m.get("weight", 1.0)), 6) for m in members],
        "flip": bool(tta.get("flip", False)), "scales": [float(x) for x in tta.get("scales") or [1.0]],
        "backend": backend, "scheme": identity.get("scheme"),
        "crop_offset": geometry.get("crop_offset"), "frame_height": geometry.get("frame_height"),
        "export_version": identity.get("paddle_lane_version"), "paddle_version": identity.get("paddle_version"),
    }


def _maker(manifest: dict) -> str:
    return manifest.get("made_by", "infer")  # manifests written before `client` kept one are infer's


def _value(manifest: dict, key: str):
    if key == "backend" and _maker(manifest) == "infer":
        return manifest.get("backend", "dygraph")  # infer records the backend only when it is not dygraph
    return manifest.get(key)


def _label(member: dict) -> str:
    return member.get("path") or f"sha256 {str(member.get('sha256'))[:12]}"


def differences(old: dict, new: dict) -> list[str]:
    """Readable differences between two manifests ('checkpoint 1: a -> b (other weights)', 'flip: False ->
    True'). Two manifests of one maker (infer or client) are compared on all they record; an infer and a
    client manifest on what both record (SHARED_KEYS), and the first difference says which made the folder."""
    same = _maker(old) == _maker(new)
    member_keys = MEMBER_KEYS[_maker(new)] if same else SHARED_MEMBER_KEYS
    keys = RECIPE_KEYS[_maker(new)] if same else [k for k in SHARED_KEYS if k == "backend" or (k in old and k in new)]
    out = []
    old_ck, new_ck = old.get("checkpoints", []), new.get("checkpoints", [])
    if len(old_ck) != len(new_ck):
        out.append(f"models: {len(old_ck)} -> {len(new_ck)}")
    for i, (a, b) in enumerate(zip(old_ck, new_ck)):
        if a.get("sha256") != b.get("sha256"):
            out.append(f"checkpoint {i + 1}: {_label(a)} -> {_label(b)} (other weights)")
        else:
            for key in member_keys:  # what each member's own config (or export) decides
                if a.get(key) != b.get(key):
                    out.append(f"checkpoint {i + 1} {key}: {a.get(key)} -> {b.get(key)}")
    for key in keys:
        if _value(old, key) != _value(new, key):
            out.append(f"{key}: {_value(old, key)} -> {_value(new, key)}")
    if out and not same:
        out.insert(0, f"made by {_maker(old)}")
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
            return f"resuming {out_dir} ({RESUMING[_maker(manifest)]})"
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
