"""`paddle-lane client` keeps a submission folder one model's: it records the served model's identity
(GET /v1/model) in manifest.json and applies infer's rules to a used --out (resume with the same model,
refuse another one or PNGs without a manifest, --overwrite moves the old folder aside). Real servers on
127.0.0.1, started and stopped inside each test; every wait is bounded."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import paddle
import pytest

from conftest import EXPORT_CONFIG as CONFIG, EXPORT_OPTS as OPTS, ROOT, random_checkpoint
from paddle_lane.cli import commands
from paddle_lane.config import load_config, save_config
from paddle_lane.deploy import export as exp
from test_serve import assets, free_port, start, stop, wait_ready  # noqa: F401 (assets: a fixture)

SIZE = (128, 48)
CLIENT_TIMEOUT = 300


def _export(base: Path, name: str, seed: int, sample: str) -> dict:
    """An export of a lite checkpoint whose weights come from `seed`; with the checkpoint's SHA-256 and
    the served ONNX file's SHA-256, hashed here from the files themselves."""
    cfg = load_config(CONFIG, OPTS)
    paddle.seed(seed)
    ck = random_checkpoint(cfg.model, base / f"run_{name}" / "best", SIZE)
    save_config(cfg, base / f"run_{name}" / "config.yml")
    out = base / f"export_{name}"
    exp.export_model(cfg, [str(ck)], formats="onnx", out=out, samples=[sample])
    return {"dir": out, "ckpt_sha256": sha256(Path(ck) / "model.pdparams"),
            "onnx_sha256": sha256(out / "members" / "0" / "model.onnx")}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(assets):
    """test_serve's export (A, seed 4), its four test images and infer's folder of it; a second export of
    other weights (B, seed 5) and infer's folder of B; and a folder written by `client` from a server of A."""
    base = assets["base"]
    a = {"dir": assets["export"], "infer": assets["infer"], "ckpt_sha256": sha256(base / "run" / "best" / "model.pdparams"),
         "onnx_sha256": sha256(assets["export"] / "members" / "0" / "model.onnx")}
    b = _export(base, "b", 5, str(assets["files"][0]))
    assert a["ckpt_sha256"] != b["ckpt_sha256"]
    b["infer"] = base / "infer_b"
    assert commands.run_infer(None, [], str(b["dir"]), None, str(assets["images"]), None, str(b["infer"]),
                              no_zip=True, backend="onnxruntime") == 0
    names = sorted(p.stem + "_bin.png" for p in assets["files"])
    # the two models' masks differ, so a mixed folder would be a real mix
    assert any((a["infer"] / n).read_bytes() != (b["infer"] / n).read_bytes() for n in names)
    models = {"base": base, "images": assets["images"], "a": a, "b": b, "names": names}
    sub_a = base / "client_a"
    with serving(models, "a") as url:
        run = client(models, url, sub_a)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    models["client_a"] = sub_a
    models["client_a_run"] = run
    return models


@contextmanager
def serving(models, which: str):
    """`paddle-lane serve` of export `which` on a free loopback port; stopped (SIGTERM, bounded) on exit."""
    port = free_port()
    log = models["base"] / f"serve_{which}_{port}.log"
    proc = start(["serve", "--model", str(models[which]["dir"]), "--host", "127.0.0.1", "--port", str(port),
                  "--workers", "1"], log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield url
    finally:
        assert stop(proc) == 0, log.read_text()[-2000:]


def client(models, url: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")  # 1: no warning of Paddle's on import
    return subprocess.run([sys.executable, "-m", "paddle_lane.cli.main", "client", "--url", url, "--images",
                           str(models["images"]), "--out", str(out), "--concurrency", "2", *extra],
                          capture_output=True, text=True, timeout=CLIENT_TIMEOUT, env=env, cwd=str(ROOT))


def snapshot(folder: Path) -> dict:
    """Every file under folder (relative name -> bytes) and the zip beside it."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    z = folder.parent / f"{folder.name}.zip"
    return {"files": files, "zip": z.read_bytes() if z.exists() else None}


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def error_lines(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]


def test_the_client_records_the_served_model_and_a_rerun_resumes(models, tmp_path):
    sub_a = models["client_a"]
    manifest_path = sub_a / "manifest.json"
    text = manifest_path.read_text()
    manifest = json.loads(text)
    member = manifest["checkpoints"][0]
    assert member["sha256"] == models["a"]["ckpt_sha256"]
    assert member["files"]["model.onnx"] == models["a"]["onnx_sha256"]
    assert manifest["flip"] is False and manifest["scales"] == [1.0] and manifest["weights"] == [1.0]
    assert str(models["base"]) not in text and "/tmp" not in text             # no path of this machine
    for name in models["names"]:                                               # the served masks are infer's
        assert (sub_a / name).read_bytes() == (models["a"]["infer"] / name).read_bytes()

    out = copy_folder(sub_a, tmp_path / "sub")
    (out / models["names"][1]).unlink()
    before = (out / "manifest.json").stat()
    with serving(models, "a") as url:
        run = client(models, url, out)
        again = client(models, url, out)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "3 already done, 1 sent, 0 failed" in run.stdout
    assert again.returncode == 0 and "4 already done, 0 sent, 0 failed" in again.stdout
    after = (out / "manifest.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)   # written once, not again
    assert (out / "manifest.json").read_text() == text
    assert (out / models["names"][1]).read_bytes() == (models["a"]["infer"] / models["names"][1]).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(models["names"] + ["manifest.json"])


def test_another_served_model_is_refused_and_the_folder_is_unchanged(models, tmp_path):
    out = copy_folder(models["client_a"], tmp_path / "sub")
    shutil.copyfile(models["client_a"].parent / "client_a.zip", tmp_path / "sub.zip")
    (out / models["names"][2]).unlink()                     # the case: one file missing
    before = snapshot(out)
    with serving(models, "b") as url:
        run = client(models, url, out)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    lines = error_lines(run)
    assert len(lines) == 1, lines
    a, b = models["a"]["ckpt_sha256"][:12], models["b"]["ckpt_sha256"][:12]
    assert "other weights" in lines[0] and a in lines[0] and b in lines[0] and "--overwrite" in lines[0]
    assert snapshot(out) == before                          # nothing written, nothing removed
    assert not (out / models["names"][2]).exists()


def test_overwrite_moves_the_old_folder_aside_and_starts_over(models, tmp_path):
    out = copy_folder(models["client_a"], tmp_path / "sub")
    old = snapshot(out)
    with serving(models, "b") as url:
        run = client(models, url, out, "--overwrite")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("sub.old-")]
    assert len(aside) == 1 and aside[0].is_dir()
    assert snapshot(aside[0])["files"] == old["files"]                  # the old folder, as it was
    assert "0 already done, 4 sent, 0 failed" in run.stdout
    for name in models["names"]:                                        # the new one is model B's only
        assert (out / name).read_bytes() == (models["b"]["infer"] / name).read_bytes()
    assert json.loads((out / "manifest.json").read_text())["checkpoints"][0]["sha256"] == models["b"]["ckpt_sha256"]


def test_pngs_without_a_manifest_are_refused(models, tmp_path):
    out = tmp_path / "sub"
    out.mkdir()
    shutil.copyfile(models["a"]["infer"] / models["names"][0], out / models["names"][0])
    before = snapshot(out)
    with serving(models, "a") as url:
        run = client(models, url, out)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    lines = error_lines(run)
    assert len(lines) == 1 and "1 PNG(s) without a manifest.json" in lines[0], lines
    assert snapshot(out) == before


def test_an_infer_folder_is_continued_by_the_same_model_and_refused_by_another(models, tmp_path):
    """infer's manifest and the client's describe the same model alike: the same export served resumes
    infer's folder, another export is refused in one line."""
    out = copy_folder(models["a"]["infer"], tmp_path / "sub")
    (out / models["names"][3]).unlink()
    manifest = (out / "manifest.json").read_bytes()
    with serving(models, "b") as url:
        refused = client(models, url, out)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    lines = error_lines(refused)
    assert len(lines) == 1 and "other weights" in lines[0] and models["b"]["ckpt_sha256"][:12] in lines[0], lines
    assert not (out / models["names"][3]).exists() and (out / "manifest.json").read_bytes() == manifest
    with serving(models, "a") as url:
        resumed = client(models, url, out, "--no-zip")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "3 already done, 1 sent, 0 failed" in resumed.stdout
    assert (out / "manifest.json").read_bytes() == manifest                 # still infer's record
    for name in models["names"]:
        assert (out / name).read_bytes() == (models["a"]["infer"] / name).read_bytes()


def test_the_client_prints_no_line_per_request(models):
    """One progress bar and a summary; no 'HTTP Request: POST ...' log line for each of the 4 uploads."""
    run = models["client_a_run"]
    both = run.stdout + run.stderr
    assert "4 sent, 0 failed" in run.stdout
    assert [line for line in both.splitlines() if "HTTP Request:" in line] == []
