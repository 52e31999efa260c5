"""Submission manifests (paddle_lane/inference/manifest.py) on hand-made dicts: which differences make
a folder another recipe's, by content and never by path, between infer's and client's manifests,
and what a used folder does. Fast: `./run.sh mutate manifest`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddle_lane.core.errors import UserError
from paddle_lane.inference.manifest import claim_folder, differences, served_manifest

DEMO_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo_tiny.yml")


def infer_manifest(**over):
    m = {"checkpoints": [{"path": "/runs/a/stage2/best", "sha256": "a" * 64, "size": [768, 256], "model": "lite",
                          "mean": [0.5], "std": [0.2]}],
         "weights": [1.0], "flip": True, "scales": [1.0], "config_sha1": "c1", "code_version": "0.1.0",
         "made_by": "infer", "scheme": "apollo8", "crop_offset": 690, "frame_height": 1710}
    m.update(over)
    return m


def client_manifest(**over):
    m = {"made_by": "client", "checkpoints": [{"sha256": "a" * 64, "size": [768, 256], "model": "lite",
                                               "mean": [0.5], "std": [0.2], "files": {"model.onnx": "f" * 64}}],
         "weights": [1.0], "flip": True, "scales": [1.0], "backend": "onnxruntime", "scheme": "apollo8",
         "crop_offset": 690, "frame_height": 1710, "export_version": "0.1.0", "paddle_version": "3.3.1"}
    m.update(over)
    return m


def test_the_same_recipe_has_no_differences_whatever_the_paths():
    a = infer_manifest()
    b = infer_manifest(checkpoints=[{**a["checkpoints"][0], "path": "/elsewhere/best"}])
    assert differences(a, a) == [] and differences(a, b) == []


def test_other_weights_at_the_same_path_are_another_recipe():
    a = infer_manifest()
    b = infer_manifest(checkpoints=[{**a["checkpoints"][0], "sha256": "b" * 64}])
    assert differences(a, b) == ["checkpoint 1: /runs/a/stage2/best -> /runs/a/stage2/best (other weights)"]


def test_each_member_and_recipe_key_is_named():
    a = infer_manifest()
    member = {**a["checkpoints"][0], "size": [1024, 384], "model": "unet", "mean": [0.4], "std": [0.3]}
    b = infer_manifest(checkpoints=[member], weights=[0.7], flip=False, scales=[1.0, 1.5], config_sha1="c2",
                       code_version="0.2.0", backend="onnxruntime")
    assert differences(a, b) == [
        "checkpoint 1 size: [768, 256] -> [1024, 384]", "checkpoint 1 model: lite -> unet",
        "checkpoint 1 mean: [0.5] -> [0.4]", "checkpoint 1 std: [0.2] -> [0.3]",
        "weights: [1.0] -> [0.7]", "flip: True -> False", "scales: [1.0] -> [1.0, 1.5]", "config_sha1: c1 -> c2",
        "code_version: 0.1.0 -> 0.2.0", "backend: dygraph -> onnxruntime"]


def test_a_different_number_of_models_is_named():
    a = infer_manifest()
    b = infer_manifest(checkpoints=a["checkpoints"] * 2, weights=[0.5, 0.5])
    assert differences(a, b) == ["models: 1 -> 2", "weights: [1.0] -> [0.5, 0.5]"]


def test_a_manifest_without_a_maker_is_infers():
    a = infer_manifest()
    del a["made_by"]
    assert differences(a, infer_manifest()) == []


def test_client_manifests_compare_the_served_files_and_versions():
    a = client_manifest()
    member = {**a["checkpoints"][0], "files": {"model.onnx": "e" * 64}}
    b = client_manifest(checkpoints=[member], paddle_version="3.2.2", backend=None)
    assert differences(a, b) == [f"checkpoint 1 files: {{'model.onnx': '{'f' * 64}'}} -> {{'model.onnx': '{'e' * 64}'}}",
                                 "backend: onnxruntime -> None", "paddle_version: 3.3.1 -> 3.2.2"]
    other = client_manifest(checkpoints=[{**a["checkpoints"][0], "sha256": "9" * 64}])
    assert differences(a, other) == [f"checkpoint 1: sha256 {'a' * 12} -> sha256 {'9' * 12} (other weights)"]


def test_an_infer_and_a_client_manifest_compare_on_what_both_record():
    infer = infer_manifest(backend="onnxruntime")
    assert differences(infer, client_manifest()) == []
    assert differences(client_manifest(), infer) == []
    served_other = client_manifest(flip=False, crop_offset=700, checkpoints=[
        {**client_manifest()["checkpoints"][0], "model": "unet", "size": [512, 256]}])
    assert differences(infer, served_other) == ["made by infer", "checkpoint 1 size: [768, 256] -> [512, 256]",
                                                "flip: True -> False", "crop_offset: 690 -> 700"]
    dygraph = infer_manifest()  # infer records no backend for dygraph
    assert differences(dygraph, client_manifest()) == ["made by infer", "backend: dygraph -> onnxruntime"]
    older = infer_manifest(backend="onnxruntime")
    del older["scheme"]
    assert differences(older, client_manifest(scheme="apollo9")) == []  # a key only one side records is skipped


def test_the_served_identity_becomes_a_manifest_without_paths():
    identity = {"members": [{"checkpoint_sha256": "a" * 64, "size": [768, 256], "arch": "lite", "mean": [0.5],
                             "std": [0.2], "weight": 1, "files": {"model.onnx": {"sha256": "f" * 64, "bytes": 10}},
                             "path": "/secret/run"}],
                "tta": {"flip": True, "scales": [1]}, "input": {"crop_offset": 690, "frame_height": 1710},
                "scheme": "apollo8", "paddle_lane_version": "0.1.0", "paddle_version": "3.3.1"}
    got = served_manifest(identity, "onnxruntime")
    assert got == client_manifest()
    assert "/secret" not in json.dumps(got)
    assert served_manifest({}, None)["scales"] == [1.0] and served_manifest({}, None)["flip"] is False
    two = served_manifest({"members": [{"weight": 2 / 3}, {}]}, None)  # an export without weights: each 1
    assert two["weights"] == [0.666667, 1.0]


def test_a_folder_is_claimed_resumed_refused_or_moved_aside(tmp_path):
    out = tmp_path / "sub"
    assert claim_folder(out, infer_manifest(), overwrite=False) == f"new submission folder {out}"
    (out / "a_bin.png").write_bytes(b"png")
    assert claim_folder(out, infer_manifest(), overwrite=False).startswith(f"resuming {out} (same checkpoints")
    other = infer_manifest(flip=False)
    with pytest.raises(UserError) as info:
        claim_folder(out, other, overwrite=False)
    assert str(info.value) == (f"{out} holds another submission (flip: True -> False): choose another --out, or "
                               "pass --overwrite to move it aside and start over")
    assert (out / "a_bin.png").read_bytes() == b"png"
    said = claim_folder(out, other, overwrite=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("sub.old-")]
    assert len(aside) == 1 and (aside[0] / "a_bin.png").read_bytes() == b"png"
    assert said == f"moved the previous submission aside to {aside[0]} (flip: True -> False); starting over"
    assert json.loads((out / "manifest.json").read_text()) == other and not (out / "a_bin.png").exists()


def test_pngs_without_a_manifest_or_an_unreadable_one_are_another_recipe(tmp_path):
    out = tmp_path / "sub"
    out.mkdir()
    (out / "x_bin.png").write_bytes(b"png")
    with pytest.raises(UserError, match=r"holds another submission \(1 PNG\(s\) without a manifest.json"):
        claim_folder(out, infer_manifest(), overwrite=False)
    (out / "manifest.json").write_text("{oops")
    with pytest.raises(UserError, match=r"is unreadable"):
        claim_folder(out, infer_manifest(), overwrite=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert claim_folder(empty, infer_manifest(), overwrite=False) == f"new submission folder {empty}"


# --- build_manifest: what infer records, from a predictor and its config ---

def _predictor(members, backend="dygraph"):
    from types import SimpleNamespace
    return SimpleNamespace(members=members, flip=True, scales=(0.75, 1.0), backend=backend,
                           scheme=SimpleNamespace(name="apollo8"))


def _member(name, sha256=None, weight=1.0):
    from types import SimpleNamespace
    return SimpleNamespace(name=name, sha256=sha256, size=(768, 256), arch="lite", mean=(0.5, 0.5, 0.5),
                           std=(0.2, 0.2, 0.2), weight=weight)


def test_build_manifest_records_checkpoints_by_content_and_the_shaping_config(tmp_path):
    import hashlib
    from importlib import metadata
    from paddle_lane.config import load_config
    from paddle_lane.inference.manifest import build_manifest
    folder = tmp_path / "stage1" / "best"
    folder.mkdir(parents=True)
    (folder / "model.pdparams").write_bytes(b"weights of run A")
    cfg = load_config(DEMO_CONFIG, [])
    got = build_manifest(_predictor([_member(str(folder), weight=2 / 3), _member("x.pdparams", "b" * 64, 1 / 3)]), cfg)
    assert got["checkpoints"][0] == {"path": str(folder), "sha256": hashlib.sha256(b"weights of run A").hexdigest(),
                                     "size": [768, 256], "model": "lite", "mean": [0.5] * 3, "std": [0.2] * 3}
    assert got["checkpoints"][1]["sha256"] == "b" * 64  # a member that knows its digest is not re-read
    assert got["weights"] == [0.666667, 0.333333] and got["flip"] is True and got["scales"] == [0.75, 1.0]
    assert "backend" not in got  # dygraph is the default and is not recorded
    assert got["made_by"] == "infer" and got["scheme"] == "apollo8"
    assert (got["crop_offset"], got["frame_height"]) == (cfg.data.crop_offset, cfg.data.frame_height)
    assert got["code_version"] == metadata.version("paddle-lane")
    assert build_manifest(_predictor([_member("x.pdparams", "b" * 64)], backend="onnxruntime"), cfg)["backend"] == \
        "onnxruntime"

    def sha1(*opts):
        return build_manifest(_predictor([_member("x.pdparams", "b" * 64)]), load_config(DEMO_CONFIG,
                                                                                         list(opts)))["config_sha1"]
    base = sha1()
    assert len(base) == 40 and sha1() == base
    assert sha1("train.seed=7") == base and sha1("stages.0.iters=3") == base  # training alone: same outputs
    for shaping in ("data.crop_offset=101", "data.frame_height=500", "data.mean=[0.4,0.5,0.5]", "data.std=[0.3,0.2,0.2]", "model.width=8",
                    "infer.name_suffix=_x", "infer.window=[256,128]"):
        assert sha1(shaping) != base, shaping


def test_build_manifest_names_a_missing_checkpoint(tmp_path):
    from paddle_lane.config import load_config
    from paddle_lane.inference.manifest import build_manifest
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*gone"):
        build_manifest(_predictor([_member(str(tmp_path / "gone"))]), load_config(DEMO_CONFIG, []))
