"""An export folder as a Predictor: each member's exported graph behind one backend
(onnxruntime, Paddle Inference, or the saved static graph run by Paddle), with the same
pre-processing, TTA, ensemble and full-size post-processing as a checkpoint (infer/predictor.py).

A backend is a callable: NCHW float32 input tensor -> NCHW logits tensor. The graphs hold the
networks only; softmax, flip TTA and the ensemble run in the shared Predictor code, so one export
serves with or without TTA.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import paddle

from paddle_lane.config import CONFIG_FILE, load_config
from paddle_lane.core.errors import UserError
from paddle_lane.inference.export_folder import BACKENDS, DEPLOY_FILE, INT8_FILE, export_formats, read_deploy



def default_backend(info: dict | None = None) -> str:
    """The backend for an export: what it holds first (a --format paddle export runs on Paddle Inference,
    an ONNX-only one on onnxruntime); with both, onnxruntime on CPU (the fastest measured here) and
    Paddle Inference where Paddle has CUDA."""
    formats = export_formats(info)
    if formats == {"paddle"}:
        return "paddle-inference"
    if formats == {"onnx"}:
        return "onnxruntime"
    return "paddle-inference" if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() else "onnxruntime"


def model_identity(export_dir: str | os.PathLike, info: dict | None = None) -> dict:
    """What GET /v1/model serves: the model's identity (classes, input geometry, TTA, versions, the
    self-check, and per member its size, mean/std, weight, architecture, checkpoint SHA-256 and the size and
    SHA-256 of each served file), not the exporter's file system (no checkpoint paths)."""
    from paddle_lane.runs.checkpoint import file_digest
    export_dir = Path(export_dir)
    info = info or read_deploy(export_dir)
    members = []
    for m in info["members"]:
        files = {}
        for name in sorted((export_dir / m["path"]).iterdir()):
            if name.is_file():
                files[name.name] = file_digest(name)
        members.append({"size": m["size"], "mean": m["mean"], "std": m["std"], "weight": m["weight"],
                        "arch": m.get("arch"), "checkpoint_sha256": m.get("checkpoint_sha256"), "files": files})
    keep = ("format_version", "created", "paddle_version", "paddle_lane_version", "input", "output", "scheme",
            "class_names", "decode", "tta", "formats", "self_check", "quantization")
    out = {k: info[k] for k in keep if k in info}
    out["input"] = {k: v for k, v in (info.get("input") or {}).items()}
    out["members"] = members
    out["deploy_yml_sha256"] = file_digest(export_dir / DEPLOY_FILE)["sha256"]
    return out


class OnnxRunner:
    """onnxruntime session; spinning off (idle threads otherwise burn the CPU between requests)."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort
        ort.set_default_logger_severity(3)  # its notes on unused initializers are not the user's concern
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.numpy(), np.float32)})[0]
        return paddle.to_tensor(out)


class PaddleInferenceRunner:
    """Paddle Inference predictor. On CPU oneDNN runs with its placement pass removed (Paddle 3.3
    fails in that pass on these graphs); on GPU it runs on the card. Creating one changes a global
    setting of the process: later dygraph training there differs in the 5th digit (measured, any
    config), so a process that exports or serves should not go on to train."""

    def __init__(self, model_file: Path, params_file: Path, threads: int | None = None):
        from paddle import inference
        config = inference.Config(str(model_file), str(params_file))
        if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count():
            config.enable_use_gpu(256, 0)
        else:
            config.disable_gpu()
            config.enable_mkldnn()
            config.delete_pass("onednn_placement_pass")
            config.set_cpu_math_library_num_threads(threads or os.cpu_count() or 1)
        config.disable_glog_info()
        self.predictor = inference.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        arr = np.ascontiguousarray(x.numpy(), np.float32)
        self.input.reshape(list(arr.shape))
        self.input.copy_from_cpu(arr)
        self.predictor.run()
        return paddle.to_tensor(self.output.copy_to_cpu())


class StaticGraphRunner:
    """The saved static graph loaded back into Paddle (paddle.jit.load): the reference backend."""

    def __init__(self, prefix: Path):
        self.layer = paddle.jit.load(str(prefix))
        self.layer.eval()

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.layer(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def make_runner(member_dir: Path, backend: str, threads: int | None = None):
    """The callable for one exported member; a missing file is a one-line error naming it."""
    need = {"onnxruntime": ["model.onnx"], "onnxruntime-int8": [INT8_FILE],
            "paddle-inference": ["model.json", "model.pdiparams"], "dygraph": ["model.json", "model.pdiparams"]}[backend]
    for name in need:
        if not (member_dir / name).is_file():
            how = "export with --quantize int8" if backend == "onnxruntime-int8" else "export with --format both"
            raise UserError(f"{member_dir / name} missing: backend {backend} needs {', '.join(need)} "
                            f"({how}, or choose another --backend)")
    if backend in ("onnxruntime", "onnxruntime-int8"):
        return OnnxRunner(member_dir / need[0], threads)
    if backend == "paddle-inference":
        return PaddleInferenceRunner(member_dir / "model.json", member_dir / "model.pdiparams", threads)
    return StaticGraphRunner(member_dir / "model")


def export_predictor(export_dir: str | os.PathLike, backend: str | None = None, flip: bool | None = None,
                     scales=None, device: str | None = None, cfg=None, threads: int | None = None):
    """A Predictor over an export folder's members run by `backend` (default: what the export holds, see
    default_backend)."""
    from paddle_lane.inference.predictor import Member, Predictor
    export_dir = Path(export_dir)
    info = read_deploy(export_dir)
    backend = backend or default_backend(info)
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: choose from {list(BACKENDS)}")
    cfg = cfg or load_config(export_dir / CONFIG_FILE)
    members = []
    for i, m in enumerate(info["members"]):
        member_dir = export_dir / m["path"]
        members.append(Member(make_runner(member_dir, backend, threads), (int(m["size"][0]), int(m["size"][1])),
                              float(m["weight"]), str(m.get("checkpoint", member_dir)), tuple(m["mean"]),
                              tuple(m["std"]), f"{m.get('arch', '')} [{backend}]".strip(), None,
                              f"export {export_dir} member {i}", sha256=m.get("checkpoint_sha256")))
    tta = info.get("tta", {})
    predictor = Predictor(cfg, flip=tta.get("flip", False) if flip is None else flip,
                          scales=tta.get("scales") if scales is None else scales, device=device,
                          members=members)
    predictor.backend = backend
    predictor.export_info = info
    return predictor
