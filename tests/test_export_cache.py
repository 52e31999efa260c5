"""`infer --model CKPT --backend onnxruntime`: the checkpoint is exported once into a cache keyed by
its SHA-256 and the export options, reused by the next run, and another checkpoint gets its own entry."""
from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import EXPORT_CONFIG as CONFIG, EXPORT_OPTS as OPTS, random_checkpoint
from paddle_lane.cli import commands
from paddle_lane.config import load_config, save_config
from paddle_lane.core.label_io import image_size
from paddle_lane.deploy import export as exp
from paddle_lane.inference.predictor import Predictor
from paddle_lane.prepare.synth import make_dataset

SIZE = (128, 48)


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PADDLE_LANE_EXPORT_CACHE", str(cache))
    cfg = load_config(CONFIG, OPTS)
    runs = {}
    for name, seed in (("a", 1), ("b", 2)):
        paddle.seed(seed)
        runs[name] = random_checkpoint(cfg.model, tmp_path / name / "best", SIZE)
        save_config(cfg, tmp_path / name / "config.yml")
    info = make_dataset(tmp_path / "raw", roads=("Road02",), records_per_road=1, frames_per_record=2,
                        cameras=("Camera 5",), width=384, height=192, seed=5)
    images = tmp_path / "images"
    images.mkdir()
    for p in info["pairs"]:
        (images / p["image"].split("/")[-1]).symlink_to(p["image"])
    save_config(cfg, tmp_path / "c.yml")
    calls = []
    real = exp.export_model
    monkeypatch.setattr(exp, "export_model", lambda *a, **k: calls.append(k["out"]) or real(*a, **k))
    return tmp_path, cache, runs, images, calls


def infer(tmp_path, ckpt, images, out, backend="onnxruntime", overwrite=False):
    return commands.run_infer(str(tmp_path / "c.yml"), [], str(ckpt), None, str(images), None, str(tmp_path / out),
                              no_zip=True, backend=backend, overwrite=overwrite)


def ids_by_hand(cfg, ckpt, image) -> np.ndarray:
    ref = Predictor(cfg, [str(ckpt)], flip=False)
    full = image_size(str(image))
    probs = ref.predict_batch([x[None] for x in ref.prepare_file(str(image), full)])[0]
    return ref.scheme.decode(ref.to_train_ids(probs, full))


def test_the_cache_is_made_once_reused_and_keyed_by_the_checkpoint(setup, capsys):
    tmp_path, cache, runs, images, calls = setup
    cfg = load_config(CONFIG, OPTS)
    assert infer(tmp_path, runs["a"], images, "sub_a") == 0
    assert len(calls) == 1 and calls[0].parent == cache
    entry = calls[0]
    assert "exported the checkpoints once" in capsys.readouterr().out
    stamp = (entry / "deploy.yml").stat().st_mtime_ns

    # a second run of the same checkpoint reuses the entry: no export, the file untouched
    assert infer(tmp_path, runs["a"], images, "sub_a2") == 0
    assert len(calls) == 1 and (entry / "deploy.yml").stat().st_mtime_ns == stamp
    assert f"reusing the export of these checkpoints cached in {entry}" in capsys.readouterr().out
    for png in sorted((tmp_path / "sub_a").glob("*.png")):
        np.testing.assert_array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "sub_a2" / png.name)))

    # another checkpoint: its own entry, and its own predictions (equal to its dygraph ones here)
    assert infer(tmp_path, runs["b"], images, "sub_b") == 0
    assert len(calls) == 2 and calls[1] != entry and calls[1].parent == cache
    for image in sorted(images.iterdir()):
        got = np.asarray(Image.open(tmp_path / "sub_b" / (image.stem + "_bin.png")))
        np.testing.assert_array_equal(got, ids_by_hand(cfg, runs["b"], image))

    # the same path trained further is another checkpoint by content: the key changes
    paddle.seed(9)
    random_checkpoint(cfg.model, runs["a"], SIZE)
    assert infer(tmp_path, runs["a"], images, "sub_a3") == 0
    assert len(calls) == 3 and calls[2] not in (entry, calls[1])


def test_the_backend_is_part_of_the_recipe(setup, capsys):
    """A dygraph folder is not resumed on onnxruntime (the manifest records the backend) and the manifest
    names the checkpoint path given, not the one the cache entry was made from."""
    tmp_path, _, runs, images, _ = setup
    assert infer(tmp_path, runs["a"], images, "sub", backend=None) == 0
    with pytest.raises(ValueError, match="backend: dygraph -> onnxruntime"):
        infer(tmp_path, runs["a"], images, "sub")
    assert infer(tmp_path, runs["a"], images, "sub", overwrite=True) == 0
    manifest = json.loads((tmp_path / "sub" / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime" and manifest["checkpoints"][0]["path"] == str(runs["a"])
    with pytest.raises(ValueError, match="needs an export made by `paddle-lane export` --quantize int8"):
        infer(tmp_path, runs["a"], images, "sub_int8", backend="onnxruntime-int8")
