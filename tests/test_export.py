"""`paddle-lane export` and the exported backends: the folder's contents, the self-check, and
predictions from onnxruntime / Paddle Inference / the static graph equal to the checkpoint's in
Paddle (probabilities within 1e-4, full-size ids equal), on synthetic and real frames."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
import yaml
from PIL import Image

from conftest import EXPORT_CONFIG as CONFIG, EXPORT_OPTS as OPTS, ROOT, real_data_or_skip, random_checkpoint
from paddle_lane.cli import main as cli
from paddle_lane.cli import commands
from paddle_lane.config import load_config
from paddle_lane.core.errors import UserError
from paddle_lane.core.label_io import read_image
from paddle_lane.deploy import export as exp
from paddle_lane.inference.backends import export_predictor
from paddle_lane.inference.export_folder import read_deploy
from paddle_lane.inference.predictor import Predictor
from paddle_lane.prepare.synth import make_dataset

W, H, OFFSET = 384, 192, 76
SIZE = (128, 48)
SUBMIT = {0: 0, 1: 204, 2: 203, 3: 217, 4: 210, 5: 214, 6: 224, 7: 227}  # apollo8, by hand


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG, OPTS)


def checkpoint(cfg, folder, seed, **model):
    overrides = [f"model.{k}={v}" for k, v in model.items()]
    return random_checkpoint(load_config(CONFIG, OPTS + overrides).model, folder / "best", SIZE, seed)


@pytest.fixture(scope="module")
def ckpt(cfg, tmp_path_factory):
    return checkpoint(cfg, tmp_path_factory.mktemp("ckpt"), 0)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_synth")
    info = make_dataset(root, roads=("Road02",), records_per_road=1, frames_per_record=2, cameras=("Camera 5",),
                        width=W, height=H, seed=9, test_frames=2)
    return [p["image"] for p in info["pairs"]]


@pytest.fixture(scope="module")
def exported(cfg, ckpt, frames, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "lite"
    info = exp.export_model(cfg, [str(ckpt)], flip=True, formats="both", out=out, samples=frames[:1])
    return out, info


def test_export_folder_holds_what_a_server_needs(exported, ckpt):
    out, info = exported
    assert sorted(p.name for p in out.iterdir()) == ["config.yml", "deploy.yml", "members"]
    assert sorted(p.name for p in (out / "members" / "0").iterdir()) == ["model.json", "model.onnx", "model.pdiparams"]
    deploy = read_deploy(out)
    assert deploy == yaml.safe_load((out / "deploy.yml").read_text())
    assert deploy["decode"] == SUBMIT
    assert deploy["class_names"][1] == "dividing" and len(deploy["class_names"]) == 8
    assert deploy["input"]["crop_offset"] == OFFSET and deploy["input"]["frame_height"] == H
    assert deploy["tta"] == {"flip": True, "scales": [1.0], "in_graph": False}
    (m,) = deploy["members"]
    assert m["size"] == list(SIZE) and m["weight"] == 1.0 and m["path"] == "members/0"
    assert m["checkpoint_sha256"] == sha256(ckpt / "model.pdparams")
    assert deploy["paddle_version"] == paddle.__version__
    checks = deploy["self_check"]["backends"]
    assert sorted(checks) == ["dygraph", "onnxruntime", "paddle-inference"]
    assert all(c["max_abs_prob_diff"] <= 1e-3 and c["id_agreement"] >= 0.999 for c in checks.values())
    assert not list(out.parent.glob(".lite.partial-*"))


@pytest.mark.parametrize("backend", ["onnxruntime", "paddle-inference", "dygraph"])
def test_each_backend_equals_the_checkpoint(exported, cfg, ckpt, frames, backend):
    out, _ = exported
    reference = Predictor(cfg, [str(ckpt)], flip=True)
    served = export_predictor(out, backend)
    assert served.backend == backend and served.flip is True and served.members[0].size == SIZE
    for path in frames:
        rgb = read_image(path)
        p_ref, p_new = reference.predict_probs(rgb), served.predict_probs(rgb)
        assert p_new.shape == p_ref.shape == (8, SIZE[1], SIZE[0])
        assert np.abs(p_ref - p_new).max() < 1e-4
        np.testing.assert_array_equal(served.predict_ids(rgb), reference.predict_ids(rgb))


def test_deeplab_exports_as_one_full_graph(cfg, frames, tmp_path):
    """DeepLabV3+ (ResNet18_vd, OS8): a partial program would segfault; the full graph runs in onnxruntime."""
    opts = ["model.name=deeplabv3p", "model.backbone=ResNet18_vd", "model.output_stride=8"]
    dl_cfg = load_config(CONFIG, OPTS + opts)
    paddle.seed(1)
    ck = random_checkpoint(dl_cfg.model, tmp_path / "dl" / "best", SIZE)
    info = exp.export_model(dl_cfg, [str(ck)], formats="onnx", out=tmp_path / "dl_export", samples=frames[:1])
    assert sorted(info["self_check"]["backends"]) == ["onnxruntime"]
    assert sorted(p.name for p in (tmp_path / "dl_export" / "members" / "0").iterdir()) == ["model.onnx"]
    assert info["members"][0]["arch"] == "deeplabv3p ResNet18_vd os8"
    rgb = read_image(frames[1])
    ref = Predictor(dl_cfg, [str(ck)], flip=False).predict_probs(rgb)
    got = export_predictor(tmp_path / "dl_export", "onnxruntime").predict_probs(rgb)
    assert np.abs(ref - got).max() < 1e-3


def test_an_ensemble_exports_its_members_and_weights(cfg, ckpt, frames, tmp_path):
    other = checkpoint(cfg, tmp_path / "other", 7, width=8)
    cfg8 = load_config(CONFIG, OPTS + ["model.width=8"])
    from paddle_lane.config import save_config
    save_config(cfg8, other.parent / "config.yml")   # the second member's own run config
    info = exp.export_model(cfg, [str(ckpt), str(other)], weights=[3, 1], formats="onnx", out=tmp_path / "ens",
                            samples=frames[:1])
    assert [m["weight"] for m in info["members"]] == [0.75, 0.25]
    assert [m["arch"] for m in info["members"]] == ["lite width 4", "lite width 8"]
    rgb = read_image(frames[0])
    ref = Predictor(cfg, [str(ckpt), str(other)], weights=[3, 1], flip=False).predict_probs(rgb)
    got = export_predictor(tmp_path / "ens").predict_probs(rgb)
    assert np.abs(ref - got).max() < 1e-4


def test_used_folder_is_refused_and_force_moves_it_aside(cfg, ckpt, frames, tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="exists and is not empty.*--force"):
        exp.export_model(cfg, [str(ckpt)], formats="onnx", out=out, samples=frames[:1])
    assert (out / "mine.txt").read_text() == "keep me"
    info = exp.export_model(cfg, [str(ckpt)], formats="onnx", out=out, samples=frames[:1], force=True)
    aside = info["moved_aside"]
    assert aside and (tmp_path / os.path.basename(aside) / "mine.txt").read_text() == "keep me"
    assert (out / "deploy.yml").is_file()


def test_a_failed_self_check_keeps_nothing(cfg, ckpt, frames, tmp_path, monkeypatch):
    monkeypatch.setattr(exp, "compare", lambda ref, cand, fr: {"max_abs_prob_diff": 0.5, "id_agreement": 0.9})
    with pytest.raises(UserError, match="self-check failed for onnxruntime: max .p diff. 5.00e-01.*nothing kept"):
        exp.export_model(cfg, [str(ckpt)], formats="onnx", out=tmp_path / "bad", samples=frames[:1])
    assert list(tmp_path.iterdir()) == []


def test_export_cli_and_its_errors(cfg, ckpt, tmp_path, capsys):
    from paddle_lane.config import save_config
    save_config(cfg, tmp_path / "c.yml")
    rc = cli.main(["export", "--config", str(tmp_path / "c.yml"), "--model", str(ckpt), "--format", "onnx",
                   "--out", str(tmp_path / "e")])
    out = capsys.readouterr().out
    assert rc == 0 and "self-check onnxruntime: max |p diff|" in out and (tmp_path / "e" / "members" / "0" / "model.onnx").is_file()
    assert cli.main(["export", "--config", str(tmp_path / "c.yml"), "--model", str(tmp_path / "nope"),
                     "--out", str(tmp_path / "f")]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(UserError, match="not an export folder"):
        export_predictor(tmp_path)
    with pytest.raises(UserError, match="model.json missing: backend paddle-inference needs"):
        export_predictor(tmp_path / "e", "paddle-inference")


# ----------------------------------------------------------------------------- infer from an export
@pytest.mark.parametrize("source", ["synthetic", "real"])
def test_infer_from_an_export_writes_the_checkpoints_submission(source, cfg, tmp_path, tmp_path_factory):
    """The submission from `infer --model EXPORT` (onnxruntime) equals the one from the checkpoint."""
    if source == "real":
        data = real_data_or_skip()
        import pandas as pd
        images = [str(data / p) for p in pd.read_csv(data / "pairs.csv")["image"][:3]]
        run_cfg = load_config(ROOT / "configs" / "demo_tiny.yml", ["data.crop_offset=690", "data.frame_height=1710",
                                                                    "model.width=4", "infer.num_workers=0",
                                                                    "stages=[{width: 384, height: 128, batch_size: 1, iters: 1, lr: 0.01}]"])
    else:
        root = tmp_path_factory.mktemp("infer_synth_export")
        info = make_dataset(root, roads=("Road02",), records_per_road=1, frames_per_record=3, cameras=("Camera 5",),
                            width=W, height=H, seed=11)
        images = [p["image"] for p in info["pairs"]]
        run_cfg = cfg
    folder = tmp_path / "test_images"
    folder.mkdir()
    for p in images:
        os.symlink(p, folder / os.path.basename(p))
    from paddle_lane.config import save_config
    paddle.seed(3)
    size = (run_cfg.stages[0].width, run_cfg.stages[0].height)
    ck = random_checkpoint(run_cfg.model, tmp_path / "run" / "best", size)
    save_config(run_cfg, tmp_path / "run" / "config.yml")
    exp.export_model(run_cfg, [str(ck)], formats="both", out=tmp_path / "export", samples=images[:1])
    assert commands.run_infer(str(tmp_path / "run" / "config.yml"), [], str(ck), None, str(folder), None,
                              str(tmp_path / "sub_ckpt"), no_zip=True) == 0
    assert commands.run_infer(None, [], str(tmp_path / "export"), None, str(folder), None,
                              str(tmp_path / "sub_export"), no_zip=True, backend="onnxruntime") == 0
    names = sorted(p.name for p in (tmp_path / "sub_ckpt").glob("*.png"))
    assert len(names) == len(images)
    for name in names:
        a = np.asarray(Image.open(tmp_path / "sub_ckpt" / name))
        b = np.asarray(Image.open(tmp_path / "sub_export" / name))
        assert a.shape == b.shape and (a != b).sum() <= max(2, a.size // 100_000), name  # near-ties only
    manifest = yaml.safe_load((tmp_path / "sub_export" / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime"


def test_sharded_infer_over_two_processes_equals_one(exported, frames, tmp_path):
    """`infer --nproc 2` (paddle.distributed.launch on CPU): each rank writes its share, then one zip
    and one validation; the folder equals a single-process run."""
    out, _ = exported
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        os.symlink(frames[i % len(frames)], folder / f"f{i}.jpg")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PADDLE_LANE_LAUNCHED", None)
    run = subprocess.run([sys.executable, "-m", "paddle_lane.cli.main", "infer", "--model", str(out), "--images",
                          str(folder), "--out", str(tmp_path / "sharded"), "--nproc", "2"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "zip:" in run.stdout
    assert commands.run_infer(None, [], str(out), None, str(folder), None, str(tmp_path / "single"), no_zip=True) == 0
    for i in range(5):
        a = np.asarray(Image.open(tmp_path / "sharded" / f"f{i}_bin.png"))
        b = np.asarray(Image.open(tmp_path / "single" / f"f{i}_bin.png"))
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "sharded.zip").is_file()


def test_a_converter_crash_is_one_line_and_keeps_nothing(frames, tmp_path):
    """paddle2onnx aborts its whole process on PP-LiteSeg's adaptive pooling with a dynamic input:
    the conversion runs in a child, so the export ends with one line, and --format paddle works."""
    cfg = load_config(CONFIG, OPTS + ["model.name=paddleseg", "model.type=PPLiteSeg", "model.backbone={type: STDC1}",
                                      "model.init=default"])
    paddle.seed(0)
    ck = random_checkpoint(cfg.model, tmp_path / "pp" / "best", SIZE)
    with pytest.raises(UserError, match=r"ONNX conversion of .*model.json failed \((killed by SIG|exit code).*"
                                        r"--format paddle"):
        exp.export_model(cfg, [str(ck)], formats="onnx", out=tmp_path / "pp_onnx", samples=frames[:1])
    assert not (tmp_path / "pp_onnx").exists() and not list(tmp_path.glob(".pp_onnx.partial-*"))
    info = exp.export_model(cfg, [str(ck)], formats="paddle", out=tmp_path / "pp_paddle", samples=frames[:1])
    assert sorted(info["self_check"]["backends"]) == ["dygraph", "paddle-inference"]


@pytest.mark.parametrize("opts,label", [
    (["model.name=fcn", "model.backbone=ResNeXt50_32x4d", "model.output_stride=16"], "fcn ResNeXt50_32x4d os16"),
    (["model.name=deeplabv3p", "model.backbone=ResNeSt50"], "deeplabv3p ResNeSt50 os8"),
    (["model.name=paddleseg", "model.type=BiSeNetV2", "model.init=default"], "paddleseg BiSeNetV2"),
    (["model.name=unet"], "unet"),
    ([], "lite width 4"),
])
def test_member_labels_name_the_architecture(opts, label):
    """What deploy.yml's `arch`, the infer member list and manifests say of a model."""
    from paddle_lane.inference.predictor import model_label
    assert model_label(load_config(CONFIG, OPTS + opts).model) == label


def test_video_from_an_export(exported, frames, tmp_path, capsys):
    """`video --model EXPORT` (no --config): every frame of the input comes out annotated."""
    import cv2
    out, _ = exported
    src = tmp_path / "in.mp4"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (W, H))
    for p in frames * 2:
        writer.write(cv2.cvtColor(read_image(p), cv2.COLOR_RGB2BGR))
    writer.release()
    assert commands.run_video(None, [], str(out), str(src), str(tmp_path / "out.mp4"), backend="onnxruntime") == 0
    assert "[onnxruntime]" in capsys.readouterr().out
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == 2 * len(frames)
