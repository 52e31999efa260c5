"""`paddle-lane doctor`: does this installation run, before it serves anything?

Each check does what the first request would: import every backend and the server's modules
(their native libraries load here), read the label table and the scheme from the installed
package, and run one forward pass of a tiny model on each backend, compared with a reference.
A missing system library (libgomp for Paddle), a data file left out of the wheel or a broken
backend fails here, in `docker build`, with one line naming it, and exit 1.
"""
from __future__ import annotations

import importlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# What serving and the deployment chain import; native code loads with each.
MODULES = ("paddle", "paddle.inference", "onnxruntime", "onnxruntime.quantization", "cv2", "paddleseg", "onnx",
           "paddle2onnx", "fastapi", "gunicorn", "uvicorn_worker", "redis", "prometheus_client", "multipart", "httpx")
TOLERANCE = 1e-4  # largest probability difference accepted between a backend and its reference


class Missing(Exception):
    """A check failed: the message names what is missing or broken."""


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def check_imports(modules=MODULES) -> str:
    versions = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except Exception as exc:  # ImportError, OSError of a native library, anything a module raises
            raise Missing(f"import {name} failed ({_reason(exc)})") from None
        version = getattr(mod, "__version__", None)
        if version and "." not in name:
            versions.append(f"{name} {version}")
    return "imports: " + ", ".join(modules) + " (" + ", ".join(versions) + ")"


def check_data(scheme_name: str = "apollo8"):
    """The label table and the scheme, read from the installed package."""
    from paddle_lane.core import labels
    try:
        table = labels.label_table()
        scheme = labels.load_scheme(scheme_name)
    except (OSError, ValueError) as exc:
        raise Missing(f"package data: {_reason(exc)}") from None
    return scheme, (f"data: label table {len(table)} ids ({labels.LABEL_TABLE_FILE}), scheme {scheme.name} "
                    f"{scheme.num_classes} classes ({scheme.source})")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _compare(name: str, got, want: np.ndarray) -> float:
    got = np.asarray(got)
    if got.shape != want.shape or not np.isfinite(got).all():
        raise Missing(f"backend {name}: output {got.shape} (finite: {np.isfinite(got).all()}), expected {want.shape}")
    diff = float(np.abs(_softmax(got) - _softmax(want)).max())
    if diff > TOLERANCE:
        raise Missing(f"backend {name}: probabilities differ from the reference by {diff:.2e} (> {TOLERANCE})")
    return diff


def check_paddle_backends(num_classes: int, work: Path) -> list[str]:
    """The lite model (width 4) in dygraph, saved as a static graph and run by Paddle Inference
    and by paddle.jit.load: the three backends of an export's Paddle format."""
    import paddle
    from paddle_lane.inference.backends import PaddleInferenceRunner, StaticGraphRunner
    from paddle_lane.models.lite import LiteSeg
    paddle.set_device("cpu")
    paddle.seed(0)
    model = LiteSeg(num_classes, width=4)
    model.eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 64)).astype(np.float32)
    try:
        ref = model(paddle.to_tensor(x)).numpy()
        prefix = work / "tiny"
        paddle.jit.save(model, str(prefix),
                        input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32", "x")])
    except Exception as exc:
        raise Missing(f"backend dygraph: {_reason(exc)}") from None
    lines = [f"backend dygraph: lite w4 {list(x.shape)} -> {list(ref.shape)}"]
    for name, make in (("paddle-inference", lambda: PaddleInferenceRunner(prefix.with_suffix(".json"),
                                                                           prefix.with_suffix(".pdiparams"), 1)),
                       ("static graph (dygraph backend of an export)", lambda: StaticGraphRunner(prefix))):
        try:
            out = make()(paddle.to_tensor(x)).numpy()
        except Exception as exc:
            raise Missing(f"backend {name}: {_reason(exc)}") from None
        lines.append(f"backend {name}: max probability difference {_compare(name, out, ref):.1e}")
    return lines


def check_onnxruntime(num_classes: int, work: Path) -> str:
    """A 1x1 convolution built as an ONNX graph, run by onnxruntime through the serving runner,
    against the same convolution in numpy."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from paddle_lane.inference.backends import OnnxRunner
    import paddle
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((num_classes, 3, 1, 1)).astype(np.float32)
    x = rng.standard_normal((1, 3, 16, 24)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "doctor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, num_classes, None, None])],
        [numpy_helper.from_array(weight, "w")])
    path = work / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7), str(path))
    want = np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x)
    try:
        got = OnnxRunner(path, threads=1)(paddle.to_tensor(x)).numpy()
    except Exception as exc:
        raise Missing(f"backend onnxruntime: {_reason(exc)}") from None
    return f"backend onnxruntime: 1x1 conv {list(x.shape)}, max probability difference {_compare('onnxruntime', got, want):.1e}"


def run_doctor(scheme: str = "apollo8", out=print, err=None) -> int:
    """0 when every check passes; else one line on stderr naming what is missing, and 1."""
    err = err or (lambda line: print(line, file=sys.stderr))
    t0 = time.perf_counter()
    done = 0
    try:
        out("ok  " + check_imports()); done += 1
        scheme_obj, line = check_data(scheme)
        out("ok  " + line); done += 1
        with tempfile.TemporaryDirectory(prefix="paddle_lane_doctor_") as tmp:
            for line in check_paddle_backends(scheme_obj.num_classes, Path(tmp)):
                out("ok  " + line); done += 1
            out("ok  " + check_onnxruntime(scheme_obj.num_classes, Path(tmp))); done += 1
    except Missing as exc:
        err(f"doctor: {exc}")
        return 1
    out(f"doctor: {done} checks passed in {time.perf_counter() - t0:.1f} s")
    return 0
