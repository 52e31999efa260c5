"""INT8 ONNX for CPU serving (`export --quantize int8`): onnxruntime static quantization of each
member's FP32 graph, calibrated on real frames, checked against the checkpoints in Paddle by the
leaderboard's own scoring before it is kept.

- QDQ format, per-tensor scales (the opset-11 graph has no `axis` on DequantizeLinear, so
  per-channel needs opset 13), activations uint8 and weights int8, calibration ranges by
  `--calib-method` (minmax by default). Measured here: 2.6x the FP32 session for DeepLabV3+ R18
  at 768x256 on 2 cores.
- Calibration frames: `--calib` (a prepare list with labels, or a dataset folder whose images are
  paired with their *_bin.png labels; default the config's val.csv), N of them spread over records
  and cameras. The self-check scores dygraph and INT8 on those frames and on N held-out frames of
  the same source; a drop of the mIoU (8 classes) above `--max-drop` on either set refuses the
  export (nothing is kept).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from paddle_lane.core.errors import UserError

MAX_DROP = 0.01          # largest mIoU (8 classes) loss accepted against dygraph
CALIB_FRAMES = 8
CALIB_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
CALIB_SEED = 0


def labelled_frames(calib: str | Path) -> tuple[pd.DataFrame, str]:
    """(rows with image, label, key and, when known, road/record/camera; a description) from a prepare list
    CSV or a dataset folder (images paired with labels by key, as prepare pairs them)."""
    from paddle_lane.data.dataset import read_list
    from paddle_lane.prepare.scan import scan
    path = Path(calib)
    if path.is_file() and path.suffix.lower() == ".csv":
        df = read_list(path, need_labels=False)
        if "label" not in df.columns:
            df["label"] = ""
        return df, f"list {path}"
    if path.is_dir():
        found = scan(path)
        df = pd.DataFrame([vars(f) for f in found.pairs])
        return (df if not df.empty else pd.DataFrame(columns=["key", "image", "label"])), f"folder {path}"
    raise UserError(f"--calib {calib}: not a prepare list CSV or a folder")


def split_calibration(df: pd.DataFrame, n: int, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """N labelled frames to calibrate on and up to N others held out, each spread over records and cameras."""
    from paddle_lane.engine.validation import sample_val_rows
    if n < 1:
        raise UserError(f"--calib-frames must be >= 1, got {n}")
    labelled = df[df["label"].astype(str) != ""].reset_index(drop=True)
    if labelled.empty:
        raise UserError(f"--calib {source}: no frame with a label; the mIoU drop of the INT8 graph cannot be "
                        "checked (give a prepare list with labels, or a dataset folder with *_bin.png labels)")
    calib = sample_val_rows(labelled, n, CALIB_SEED)
    rest = labelled[~labelled["key"].astype(str).isin(set(calib["key"].astype(str)))].reset_index(drop=True)
    return calib, sample_val_rows(rest, n, CALIB_SEED)


class _Frames:
    """onnxruntime's CalibrationDataReader protocol over prepared inputs (get_next, then None)."""

    def __init__(self, name: str, arrays: list[np.ndarray]):
        self.feeds = iter([{name: a[None]} for a in arrays])

    def get_next(self):
        return next(self.feeds, None)


def member_inputs(predictor, member, images: list[str]) -> list[np.ndarray]:
    """The member's normalized 3xHxW inputs (scale 1) for each image, prepared as `infer` prepares them."""
    from paddle_lane.core.label_io import image_size
    from paddle_lane.inference.geometry import scaled_size
    k = predictor.input_keys.index((scaled_size(member.size, 1.0), member.mean, member.std))
    return [predictor.prepare_file(p, image_size(p))[k] for p in images]


def quantize_graph(fp32: Path, out: Path, inputs: list[np.ndarray], method: str = "minmax") -> None:
    """Static QDQ INT8 of one ONNX graph, calibrated on `inputs` (per-tensor; activations uint8, weights int8)."""
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
    except ImportError as exc:
        raise UserError(f"INT8 export needs onnxruntime.quantization ({exc}); install requirements.lock") from None
    import onnx
    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name

    class Reader(_Frames, CalibrationDataReader):
        pass
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with tempfile.TemporaryDirectory(prefix="paddle_lane_quant_") as tmp:
        # onnxruntime's pre-processing folds BatchNorm into Conv and paddle2onnx's Constant weights into
        # initializers: without it the conv weights stay float (only activations were quantized)
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(name, inputs), quant_format=QuantFormat.QDQ, per_channel=False,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, CALIB_METHODS[method]))


def score(predictor, rows: pd.DataFrame) -> dict:
    """The leaderboard's scoring of a predictor on labelled rows (validation's own function)."""
    from paddle_lane.core.labels import load_scheme
    from paddle_lane.engine.validation import validate_frames
    if rows.empty:
        return {"frames": 0, "miou": None, "miou_lanes": None}
    res = validate_frames(predictor, rows, load_scheme(predictor.cfg.data.scheme), num_workers=0, what="int8 check")
    r = res.metric.compute()
    return {"frames": int(res.frames), "miou": round(float(r["miou"]), 6), "miou_lanes": round(float(r["miou_lanes"]), 6)}


def check_int8(reference, candidate, calib: pd.DataFrame, held_out: pd.DataFrame, max_drop: float) -> dict:
    """mIoU of dygraph and INT8 on the calibration and held-out frames, their id agreement; the drop is
    dygraph - INT8 (8 classes), checked on every set that has frames."""
    from paddle_lane.core.label_io import read_image
    from paddle_lane.deploy.parity import compare
    t0 = time.perf_counter()
    out = {"max_drop": max_drop, "sets": {}}
    for name, rows in (("calibration", calib), ("held_out", held_out)):
        ref, got = score(reference, rows), score(candidate, rows)
        drop = None if ref["miou"] is None else round(ref["miou"] - got["miou"], 6)
        out["sets"][name] = {"frames": ref["frames"], "keys": rows["key"].astype(str).tolist(),
                             "dygraph": ref, "int8": got, "miou_drop": drop}
    agree = compare(reference, candidate, [read_image(p) for p in calib["image"].astype(str).head(2)])
    out["id_agreement"] = round(agree["id_agreement"], 6)
    out["max_abs_prob_diff"] = round(agree["max_abs_prob_diff"], 6)
    drops = [s["miou_drop"] for s in out["sets"].values() if s["miou_drop"] is not None]
    out["worst_drop"] = max(drops)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def refusal(check: dict) -> str | None:
    """The one line that refuses an INT8 graph whose mIoU drop is over the bound, else None."""
    if check["worst_drop"] <= check["max_drop"]:
        return None
    parts = [f"{name} ({s['frames']} frames) {s['dygraph']['miou']:.4f} -> {s['int8']['miou']:.4f}"
             for name, s in check["sets"].items() if s["miou_drop"] is not None]
    return (f"INT8 self-check: mIoU drop {check['worst_drop']:.4f} is over --max-drop {check['max_drop']} "
            f"(dygraph -> INT8: {'; '.join(parts)}); nothing kept: export without --quantize, calibrate on "
            "more frames (--calib-frames) or another --calib-method, or allow a larger --max-drop")


def quantize_export(tmp: Path, reference, cfg, info: dict, calib: str | None, frames: int, method: str,
                    max_drop: float) -> dict:
    """Write members/<i>/model.int8.onnx beside each FP32 graph of the export being made in `tmp`, check it,
    and return deploy.yml's `quantization` section; a drop over the bound is a UserError (one line)."""
    from paddle_lane.inference.backends import export_predictor
    from paddle_lane.inference.export_folder import INT8_FILE
    if method not in CALIB_METHODS:
        raise UserError(f"--calib-method {method!r}: choose from {list(CALIB_METHODS)}")
    source = calib or str(Path(cfg.data.lists_dir) / "val.csv")
    if calib is None and not Path(source).is_file():
        raise UserError(f"--quantize int8 calibrates on real frames: {source} not found; give --calib LIST_OR_FOLDER")
    df, described = labelled_frames(source)
    calib_rows, held_out = split_calibration(df, frames, described)
    t0 = time.perf_counter()
    for i, m in enumerate(reference.members):
        d = tmp / info["members"][i]["path"]
        quantize_graph(d / "model.onnx", d / INT8_FILE, member_inputs(reference, m, calib_rows["image"].astype(str).tolist()),
                       method)
        info["members"][i]["int8"] = INT8_FILE
    seconds = round(time.perf_counter() - t0, 2)
    candidate = export_predictor(tmp, "onnxruntime-int8", flip=reference.flip, scales=reference.scales, cfg=cfg)
    check = check_int8(reference, candidate, calib_rows, held_out, max_drop)
    section = {"dtype": "int8", "format": "QDQ", "per_channel": False, "activations": "uint8", "weights": "int8",
               "calibration": {"source": described, "method": method, "frames": len(calib_rows),
                               "keys": calib_rows["key"].astype(str).tolist(), "seconds": seconds},
               "self_check": check}
    line = refusal(check)
    if line:
        raise UserError(line)
    return section
