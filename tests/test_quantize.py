"""`export --quantize int8`: an INT8 ONNX graph per member, calibrated on labelled frames, scored
against dygraph on the calibration and held-out frames, refused over --max-drop, and served by
`--backend onnxruntime-int8` in infer, serve and worker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import paddle
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import EXPORT_CONFIG as CONFIG, EXPORT_OPTS as OPTS, ROOT, random_checkpoint
from paddle_lane.cli import main as cli
from paddle_lane.cli import commands
from paddle_lane.config import load_config
from paddle_lane.core.label_io import image_size, read_image, read_label
from paddle_lane.core.labels import load_scheme
from paddle_lane.core.procs import die_with_parent, wait_http_ready
from paddle_lane.deploy import export as exp
from paddle_lane.inference.backends import export_predictor
from paddle_lane.inference.export_folder import read_deploy
from paddle_lane.inference.predictor import Predictor

SIZE = (128, 48)
LISTS_OPTS = ["data.crop_offset=76", "data.frame_height=192"]


@pytest.fixture(scope="module")
def setup(prepared_synth, tmp_path_factory):
    """A lite checkpoint and the synthetic prepare lists (train.csv and val.csv with labels)."""
    _, lists = prepared_synth
    cfg = load_config(CONFIG, OPTS + [f"data.lists_dir={lists}"])
    base = tmp_path_factory.mktemp("quant")
    paddle.seed(3)
    ck = random_checkpoint(cfg.model, base / "run" / "best", SIZE)
    return cfg, ck, lists, base


@pytest.fixture(scope="module")
def int8_export(setup):
    cfg, ck, lists, base = setup
    out = base / "export_int8"
    info = exp.export_model(cfg, [str(ck)], formats="onnx", out=out, quantize="int8", calib=str(lists / "train.csv"),
                            calib_frames=3, max_drop=1.0)
    return out, info


def ids_like_infer(predictor, image: str) -> np.ndarray:
    """Full-size Apollo ids of one image file, decoded as `infer` and the server decode it."""
    full = image_size(image)
    probs = predictor.predict_batch([x[None] for x in predictor.prepare_file(image, full)])[0]
    return predictor.scheme.decode(predictor.to_train_ids(probs, full))


def miou_by_hand(predictor, rows: pd.DataFrame) -> float:
    """mIoU (8 classes) of full-size predictions against the labels through the evaluation table, one
    confusion over the frames, absent classes left out: computed here with numpy alone (frames decoded
    from their files as `infer` decodes them)."""
    scheme = load_scheme("apollo8")
    pred_lut, eval_lut = scheme.pred_lut(), scheme.eval_lut()
    conf = np.zeros((8, 8), np.int64)
    for image, label in zip(rows["image"], rows["label"]):
        pred = pred_lut[ids_like_infer(predictor, image)]
        gt = eval_lut[read_label(label)]
        keep = gt < 8
        conf += np.bincount(gt[keep].astype(np.int64) * 8 + pred[keep], minlength=64).reshape(8, 8)
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def test_int8_export_writes_a_quantized_graph_and_its_self_check(int8_export, setup):
    cfg, ck, lists, _ = setup
    out, info = int8_export
    assert sorted(p.name for p in (out / "members" / "0").iterdir()) == ["model.int8.onnx", "model.onnx"]
    graph = onnx.load(str(out / "members" / "0" / "model.int8.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 5  # every conv's weights

    deploy = read_deploy(out)
    q = deploy["quantization"]
    assert deploy["members"][0]["int8"] == "model.int8.onnx"
    train = pd.read_csv(lists / "train.csv", keep_default_na=False)
    calib, held = q["self_check"]["sets"]["calibration"], q["self_check"]["sets"]["held_out"]
    assert q["calibration"]["method"] == "minmax" and q["calibration"]["frames"] == 3 == calib["frames"]
    assert q["calibration"]["source"] == f"list {lists / 'train.csv'}"
    assert calib["keys"] == q["calibration"]["keys"]
    assert set(calib["keys"]) <= set(train["key"].astype(str)) and set(held["keys"]) <= set(train["key"].astype(str))
    assert not set(calib["keys"]) & set(held["keys"]) and held["frames"] == min(3, len(train) - 3)

    # the self-check's mIoU figures are the leaderboard's, recomputed here by hand for both models
    reference = Predictor(cfg, [str(ck)], flip=False)
    int8 = export_predictor(out, "onnxruntime-int8")
    assert int8.backend == "onnxruntime-int8"
    for name, s in (("calibration", calib), ("held_out", held)):
        rows = train.set_index(train["key"].astype(str)).loc[s["keys"]]
        assert s["dygraph"]["miou"] == pytest.approx(miou_by_hand(reference, rows), abs=1e-6)
        assert s["int8"]["miou"] == pytest.approx(miou_by_hand(int8, rows), abs=1e-6)
        assert s["miou_drop"] == pytest.approx(s["dygraph"]["miou"] - s["int8"]["miou"], abs=1e-6)

    # an INT8 graph, not a copy of the FP32 one: close to it, not equal (random weights: flat, tie-prone probabilities)
    rgb = read_image(train["image"].iloc[0])
    p32, p8 = export_predictor(out, "onnxruntime").predict_probs(rgb), int8.predict_probs(rgb)
    assert 0 < np.abs(p32 - p8).max() < 0.25
    assert (p32.argmax(0) == p8.argmax(0)).mean() > 0.8


def test_infer_with_the_int8_backend(int8_export, setup, tmp_path):
    cfg, _, lists, _ = setup
    out, _ = int8_export
    val = pd.read_csv(lists / "val.csv", keep_default_na=False)
    assert commands.run_infer(None, [], str(out), None, None, str(lists / "val.csv"), str(tmp_path / "sub"),
                              no_zip=True, backend="onnxruntime-int8") == 0
    int8 = export_predictor(out, "onnxruntime-int8")
    for image in val["image"]:
        name = Path(image).stem + "_bin.png"
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / name)), ids_like_infer(int8, image))
    manifest = yaml.safe_load((tmp_path / "sub" / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime-int8"
    # an FP32-only export names the missing file and how to make it
    with pytest.raises(ValueError, match="model.int8.onnx missing.*--quantize int8"):
        export_predictor(_fp32_export(setup), "onnxruntime-int8")


def _fp32_export(setup):
    cfg, ck, _, base = setup
    out = base / "export_fp32"
    if not out.exists():
        exp.export_model(cfg, [str(ck)], formats="onnx", out=out)
    return out


def test_a_drop_over_the_bound_is_refused_in_one_line(setup, tmp_path, capsys):
    """Forced with a bound no quantized graph meets (INT8 would have to beat dygraph by 1.0)."""
    cfg, ck, lists, _ = setup
    cfg_file = tmp_path / "c.yml"
    from paddle_lane.config import save_config
    save_config(cfg, cfg_file)
    rc = cli.main(["export", "--config", str(cfg_file), "--model", str(ck), "--format", "onnx",
                   "--out", str(tmp_path / "e"), "--quantize", "int8", "--calib", str(lists / "train.csv"),
                   "--calib-frames", "2", "--max-drop", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "INT8 self-check: mIoU drop" in err[0] and "over --max-drop -1" in err[0]
    assert "nothing kept" in err[0]
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.partial-*"))


def test_calibration_needs_labelled_frames(setup, tmp_path, capsys):
    cfg, ck, lists, _ = setup
    test_only = tmp_path / "test.csv"
    pd.read_csv(lists / "val.csv", keep_default_na=False).assign(label="").to_csv(test_only, index=False)
    with pytest.raises(ValueError, match="no frame with a label"):
        exp.export_model(cfg, [str(ck)], formats="onnx", out=tmp_path / "e", quantize="int8", calib=str(test_only))
    with pytest.raises(ValueError, match="quantizes the ONNX graph"):
        exp.export_model(cfg, [str(ck)], formats="paddle", out=tmp_path / "e", quantize="int8")
    assert not (tmp_path / "e").exists()


def _child():
    import signal as s
    s.pthread_sigmask(s.SIG_UNBLOCK, {s.SIGTERM})
    die_with_parent()


def test_serve_runs_the_int8_graph(int8_export, setup, tmp_path):
    """A real server on --backend onnxruntime-int8: /readyz names it, the mask equals the INT8 predictor's,
    and the answer carries its Server-Timing breakdown."""
    import io
    import socket
    out, _ = int8_export
    _, _, lists, _ = setup
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "paddle_lane.cli.main", "serve", "--model", str(out), "--port", str(port),
                             "--backend", "onnxruntime-int8"], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            cwd=str(ROOT), preexec_fn=_child)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(f"{url}/readyz", proc, 120)
        assert httpx.get(f"{url}/readyz", timeout=10).json()["backend"] == "onnxruntime-int8"
        image = pd.read_csv(lists / "val.csv", keep_default_na=False)["image"].iloc[0]
        r = httpx.post(f"{url}/v1/segment", content=Path(image).read_bytes(), headers={"content-type": "image/jpeg"},
                       timeout=60)
        assert r.status_code == 200
        # the server says where the time went: decode, waiting for the model, the forward pass, encode
        timing = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
        assert list(timing) == ["decode", "queue", "infer", "encode"] and all(float(v) >= 0 for v in timing.values())
        assert float(timing["infer"]) > 0 and float(timing["decode"]) > 0
        got = np.asarray(Image.open(io.BytesIO(r.content)))
        np.testing.assert_array_equal(got, ids_like_infer(export_predictor(out, "onnxruntime-int8"), image))
        assert httpx.get(f"{url}/v1/model", timeout=10).json()["quantization"]["calibration"]["frames"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, log.read_text()[-2000:]
