"""`paddle-lane export`: checkpoints -> a self-contained folder a server loads without the
training code's configs or runs:

    DIR/deploy.yml            what the model needs and is (sizes, crop, mean/std, classes, the
                              train-id -> Apollo-id table, TTA, checkpoint hashes, versions, self-check)
    DIR/config.yml            the config it was exported with (pre/post-processing settings)
    DIR/members/<i>/model.json + model.pdiparams   static graph (Paddle Inference, Paddle)
    DIR/members/<i>/model.onnx                     the same graph for onnxruntime

Each member is exported with a dynamic input [N, 3, H, W] (one graph serves every size) and
full_graph=True (a partial DeepLabV3+ program segfaults when run). Softmax, flip TTA and the
ensemble stay outside the graphs, in the Predictor code every backend shares.

The export checks itself before it is kept: every exported backend predicts sample frames and
is compared with the checkpoints in Paddle (probabilities and full-size ids); beyond the
tolerance nothing is kept. Written to a temp folder, renamed into place at the end.
"""
from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import paddle
import yaml

from paddle_lane.config import CONFIG_FILE, save_config
from paddle_lane.core.errors import UserError
from paddle_lane.core.io_utils import atomic_write_text
from paddle_lane.core.label_io import read_image
from paddle_lane.core.resize import FULL_SIZE
from paddle_lane.deploy.parity import compare
from paddle_lane.inference.backends import export_predictor
from paddle_lane.inference.export_folder import DEPLOY_FILE, FORMAT_VERSION, INT8_FILE
from paddle_lane.inference.manifest import code_version
from paddle_lane.runs.checkpoint import file_digest, resolve_weights
from paddle_lane.runs.run_dir import move_aside

FORMATS = {"onnx": ("onnxruntime",), "paddle": ("paddle-inference", "dygraph"),
           "both": ("onnxruntime", "paddle-inference", "dygraph")}
PROB_TOLERANCE = 1e-3       # max |p_export - p_dygraph| over every pixel and class
ID_AGREEMENT = 0.999        # share of full-size pixels with the same Apollo id
ONNX_OPSET = 11


def save_static(model: paddle.nn.Layer, prefix: Path) -> None:
    """model.json + model.pdiparams with a dynamic [N, 3, H, W] float32 input named x."""
    spec = [paddle.static.InputSpec([None, 3, None, None], "float32", "x")]
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    paddle.jit.save(static, str(prefix))


ONNX_TIMEOUT_S = 900
ONNX_CONVERT = """
import sys
import paddle2onnx
data = paddle2onnx.export(sys.argv[1], sys.argv[2], None, opset_version=int(sys.argv[4]), enable_onnx_checker=True,
                          optimize_tool="None")
if not data:
    sys.exit("paddle2onnx returned no model")
open(sys.argv[3], "wb").write(data)
"""


def save_onnx(prefix: Path, out: Path) -> None:
    """paddle2onnx on the saved graph, in a child process: on some graphs (PP-LiteSeg's adaptive
    pooling with a dynamic input) the converter aborts its whole process instead of raising, which
    must not take the export down with it. Its optimiser is off (the default one installs packages
    at run time). A failure is one line naming the graph and the converter's last words."""
    import signal
    import subprocess
    import sys
    from paddle_lane.core.procs import die_with_parent
    cmd = [sys.executable, "-c", ONNX_CONVERT, f"{prefix}.json", f"{prefix}.pdiparams", str(out), str(ONNX_OPSET)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=ONNX_TIMEOUT_S, preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired:
        raise UserError(f"ONNX conversion of {prefix}.json took over {ONNX_TIMEOUT_S} s; stopped") from None
    if run.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        how = (f"killed by {signal.Signals(-run.returncode).name}" if run.returncode < 0
               else f"exit code {run.returncode}")
        said = [l for l in (run.stderr + run.stdout).splitlines() if l.strip()]
        raise UserError(f"ONNX conversion of {prefix}.json failed ({how}): {said[-1].strip()[:300] if said else 'no output'}"
                        "; export with --format paddle to keep the Paddle static graph only")


def sample_frames(paths, full_size=FULL_SIZE, seed: int = 0) -> list[np.ndarray]:
    """The frames the self-check predicts: the given images, else one seeded random frame of the
    competition size (smooth noise, so every class gets some probability)."""
    if paths:
        return [read_image(p) for p in paths]
    rng = np.random.default_rng(seed)
    import cv2
    small = rng.integers(0, 256, (full_size[1] // 32, full_size[0] // 32, 3)).astype(np.uint8)
    return [cv2.resize(small, full_size, interpolation=cv2.INTER_LINEAR)]


def member_entry(i: int, m, formats: str) -> dict:
    digest = file_digest(resolve_weights(m.name))["sha256"] if m.sha256 is None else m.sha256
    files = {"onnx": "model.onnx"} if formats in ("onnx", "both") else {}
    if formats in ("paddle", "both"):
        files["paddle"] = ["model.json", "model.pdiparams"]
    return {"path": f"members/{i}", "size": list(m.size), "mean": list(m.mean), "std": list(m.std),
            "weight": round(float(m.weight), 8), "arch": m.arch, "checkpoint": m.name,
            "checkpoint_sha256": digest, "files": files}


def deploy_info(predictor, cfg, formats: str, checks: dict) -> dict:
    scheme = predictor.scheme
    return {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "paddle_version": paddle.__version__, "paddle_lane_version": code_version(),
        "input": {"layout": "NCHW float32 RGB, (x/255 - mean) / std", "crop_offset": cfg.data.crop_offset,
                  "frame_height": cfg.data.frame_height,
                  "crop_rule": "cut round(crop_offset * height / frame_height) top rows, resize the rest to the member size "
                               "(area when shrinking both sides, else bilinear)"},
        "output": {"graph": "logits N x C x h x w", "post": "softmax, TTA and weighted ensemble average, bilinear "
                                                           "up to the cropped full size, argmax, decode"},
        "scheme": scheme.name, "class_names": scheme.class_names,
        "decode": {i: int(v) for i, v in enumerate(scheme.decode(np.arange(scheme.num_classes, dtype=np.uint8)))},
        "tta": {"flip": bool(predictor.flip), "scales": list(predictor.scales), "in_graph": False},
        "formats": formats,
        "members": [member_entry(i, m, formats) for i, m in enumerate(predictor.members)],
        "self_check": checks,
    }


def export_model(cfg, checkpoints, weights=None, flip: bool | None = None, formats: str = "both",
                 out: str | os.PathLike = "export", member_configs=None, samples=(), force: bool = False,
                 tolerance: float = PROB_TOLERANCE, quantize: str | None = None, calib: str | None = None,
                 calib_frames: int = 8, calib_method: str = "minmax", max_drop: float = 0.01) -> dict:
    """Export checkpoints (an ensemble when several) into `out`; returns deploy.yml's content. With
    quantize="int8", also an INT8 ONNX graph per member, calibrated on `calib` (deploy/quantize.py)."""
    from paddle_lane.inference.predictor import Predictor
    if formats not in FORMATS:
        raise UserError(f"--format {formats!r}: choose from {list(FORMATS)}")
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize {quantize!r}: only int8 is offered")
    if quantize and formats == "paddle":
        raise UserError("--quantize int8 quantizes the ONNX graph: export with --format onnx or both")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} exists and is not empty: choose another --out, or pass --force to move it aside")
    reference = Predictor(cfg, checkpoints, weights, flip=flip, member_configs=member_configs, device="cpu")
    frames = sample_frames(samples)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for i, m in enumerate(reference.members):
            d = tmp / "members" / str(i)
            d.mkdir(parents=True)
            save_static(m.model, d / "model")
            if formats in ("onnx", "both"):
                save_onnx(d / "model", d / "model.onnx")
            if formats == "onnx":
                for f in ("model.json", "model.pdiparams"):
                    (d / f).unlink()
        save_config(cfg, tmp / CONFIG_FILE)
        info = deploy_info(reference, cfg, formats, {})
        atomic_write_text(tmp / DEPLOY_FILE, yaml.safe_dump(info, sort_keys=False))
        checks = {"frames": len(frames), "tolerance": {"max_abs_prob_diff": tolerance, "id_agreement": ID_AGREEMENT},
                  "backends": {}}
        for backend in FORMATS[formats]:
            t0 = time.perf_counter()
            candidate = export_predictor(tmp, backend, flip=reference.flip, scales=reference.scales, cfg=cfg)
            res = compare(reference, candidate, frames)
            res["seconds"] = round(time.perf_counter() - t0, 2)
            checks["backends"][backend] = res
            if res["max_abs_prob_diff"] > tolerance or res["id_agreement"] < ID_AGREEMENT:
                raise UserError(f"export self-check failed for {backend}: max |p diff| {res['max_abs_prob_diff']:.2e} "
                                f"(tolerance {tolerance:.0e}), ids equal on {100 * res['id_agreement']:.3f} % of pixels "
                                f"(need {100 * ID_AGREEMENT:.1f} %); nothing kept")
        info["self_check"] = checks
        if quantize:
            from paddle_lane.deploy.quantize import quantize_export
            info["quantization"] = quantize_export(tmp, reference, cfg, info, calib, calib_frames, calib_method,
                                                   max_drop)
        atomic_write_text(tmp / DEPLOY_FILE, yaml.safe_dump(info, sort_keys=False))
        moved = move_aside(out) if out.exists() and any(out.iterdir()) else None
        if out.exists():
            out.rmdir()
        tmp.rename(out)
        info["moved_aside"] = str(moved) if moved else None
        return info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def format_export(info: dict, out) -> str:
    lines = [f"export: {out} ({info['formats']}; {len(info['members'])} member(s); TTA flip "
             f"{'on' if info['tta']['flip'] else 'off'})"]
    for m in info["members"]:
        lines.append(f"  {m['path']}: {m['arch']} {m['size'][0]}x{m['size'][1]} w={m['weight']:.2f} "
                     f"from {m['checkpoint']} (sha256 {m['checkpoint_sha256'][:12]})")
    for backend, r in info["self_check"]["backends"].items():
        lines.append(f"  self-check {backend}: max |p diff| {r['max_abs_prob_diff']:.1e}, ids equal on "
                     f"{100 * r['id_agreement']:.4f} % of pixels ({info['self_check']['frames']} frame(s))")
    q = info.get("quantization")
    if q:
        c = q["calibration"]
        lines.append(f"  INT8 ({q['format']}, per-tensor): {INT8_FILE} per member, calibrated ({c['method']}) on "
                     f"{c['frames']} frame(s) of {c['source']}")
        for name, s in q["self_check"]["sets"].items():
            if s["miou_drop"] is not None:
                lines.append(f"  INT8 self-check, {name} ({s['frames']} frames): mIoU dygraph {s['dygraph']['miou']:.4f}, "
                             f"INT8 {s['int8']['miou']:.4f} (drop {s['miou_drop']:+.4f}, bound {q['self_check']['max_drop']})")
    if info.get("moved_aside"):
        lines.append(f"  the previous contents of {out} were moved aside to {info['moved_aside']}")
    return "\n".join(lines)
