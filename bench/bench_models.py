"""Every buildable model in one table: learnable weights, GFLOPs and CPU latency at one size.

    .venv/bin/python bench/bench_models.py [--runs 3] [--quick] [--only resnest] [--budget 1500]

Rows: DeepLabV3+ on every backbone of the registry (ResNet*_vd from paddleseg, our ResNeXt and
ResNeSt), the FCN-8s style head on the new backbones, UNet, the lite model and a few PaddleSeg
zoo models built through `model.name: paddleseg`, each at the output stride of its recipe.

- params: learnable weights (BN running statistics excluded), as `count_params`;
- GFLOPs: paddle.flops's counting at 1x3xHxW -- its per-layer rules (paddle.hapi.dynamic_flops.
  register_hooks) run as forward hooks and summed here, because paddle.flops itself fails in its
  summary under numpy 2.4 (int() of a 1-element array). It counts one multiply-add as one
  operation and only the layers it knows (convolutions, BatchNorm, linear layers, average pools,
  ReLU): functional ops (F.interpolate, attention matmuls, softmax), LayerNorm and max pools add
  nothing, so transformer rows read low;
- latency: median of --runs eval-mode forwards of one 1x3xHxW image in dygraph on the CPU,
  after one untimed forward (the FLOPs pass); threads as the environment sets (OMP_NUM_THREADS).

Once --budget seconds have passed, the remaining rows
are listed as skipped instead of measured.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paddle_lane.config import ModelConfig  # noqa: E402
from paddle_lane.models.registry import BACKBONES  # noqa: E402

NEW_BACKBONES = ["ResNeXt50_32x4d", "ResNeXt101_32x4d", "ResNeXt50_64x4d", "ResNeSt50", "ResNeSt101"]
ZOO = {  # label -> (paddleseg model type, its arguments): PaddleSeg's configs for these models
    "PP-LiteSeg STDC2": ("PPLiteSeg", {"backbone": {"type": "STDC2"}}),
    "BiSeNetV2": ("BiSeNetV2", {}),
    "OCRNet HRNet_W18": ("OCRNet", {"backbone": {"type": "HRNet_W18"}, "backbone_indices": [0]}),
    "SegFormer B0": ("SegFormer", {"backbone": {"type": "MixVisionTransformer_B0"}, "embedding_dim": 256}),
}
QUICK = {"deeplabv3p ResNet18_vd os8", "deeplabv3p ResNet50_vd os8", "deeplabv3p ResNeXt50_32x4d os8",
         "deeplabv3p ResNeSt50 os8", "fcn ResNeXt50_32x4d os8", "lite w16", "BiSeNetV2", "PP-LiteSeg STDC2"}


def model_rows() -> list[tuple[str, ModelConfig]]:
    """(label, model section) of every row, in table order."""
    rows = [(f"deeplabv3p {b} os8", ModelConfig(name="deeplabv3p", backbone=b, output_stride=8))
            for b in BACKBONES.names()]
    rows += [(f"fcn {b} os8", ModelConfig(name="fcn", backbone=b, output_stride=8)) for b in NEW_BACKBONES]
    rows += [("unet", ModelConfig(name="unet")), ("lite w16", ModelConfig(name="lite", width=16))]
    rows += [(label, ModelConfig(name="paddleseg", type=t, args=args, init="default")) for label, (t, args) in ZOO.items()]
    return rows


def count_flops(model, shape: list[int]) -> int:
    """Operations of one forward at `shape` by paddle.flops's rules (one multiply-add = 1)."""
    import paddle
    from paddle.hapi.dynamic_flops import register_hooks
    leaves = [m for m in model.sublayers(include_self=True) if not list(m.children()) and type(m) in register_hooks]
    handles = []
    for m in leaves:
        m.register_buffer("total_ops", paddle.zeros([1], dtype="int64"))  # the rules add into this buffer
        handles.append(m.register_forward_post_hook(register_hooks[type(m)]))
    try:
        with paddle.no_grad():
            model(paddle.zeros(shape))
        return sum(int(m.total_ops.numpy().sum()) for m in leaves)
    finally:
        for m, h in zip(leaves, handles):
            h.remove()
            m._buffers.pop("total_ops")


def measure(cfg: ModelConfig, size: tuple[int, int], runs: int, num_classes: int = 8) -> dict:
    """params, GFLOPs and the median latency (ms) of one model at size (w, h)."""
    import paddle
    from paddle_lane.models import build_model, count_params
    paddle.seed(0)
    model = build_model(cfg, num_classes)
    model.eval()
    w, h = size
    flops = count_flops(model, [1, 3, h, w])
    x = paddle.randn([1, 3, h, w])
    times = []
    with paddle.no_grad():
        for _ in range(runs):
            t0 = time.perf_counter()
            out = model(x)
            out.numpy()
            times.append(time.perf_counter() - t0)
    assert list(out.shape) == [1, num_classes, h, w], out.shape
    return {"params": count_params(model), "gflops": flops / 1e9, "ms": 1000 * statistics.median(times)}


def table(results: list[tuple[str, dict | None]], size, runs: int) -> str:
    w, h = size
    lines = [f"| model | params (M) | GFLOPs @ {w}x{h} | CPU latency @ {w}x{h} (ms, median of {runs}) |",
             "| --- | ---: | ---: | ---: |"]
    for label, r in results:
        if r is None:
            lines.append(f"| {label} | skipped (time budget) | | |")
        else:
            lines.append(f"| {label} | {r['params'] / 1e6:.2f} | {r['gflops']:.1f} | {r['ms']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="timed forwards per model (median reported)")
    ap.add_argument("--size", default="768x256", help="WxH of the input")
    ap.add_argument("--quick", action="store_true", help=f"only {len(QUICK)} representative rows")
    ap.add_argument("--only", default="", help="rows whose label contains this text (case-insensitive)")
    ap.add_argument("--budget", type=float, default=1500.0, help="seconds after which remaining rows are skipped")
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    rows = [(label, cfg) for label, cfg in model_rows()
            if (not args.quick or label in QUICK) and args.only.lower() in label.lower()]
    start, results = time.perf_counter(), []
    for label, cfg in rows:
        if time.perf_counter() - start > args.budget:
            results.append((label, None))
            continue
        t0 = time.perf_counter()
        results.append((label, measure(cfg, size, args.runs)))
        print(f"{label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        gc.collect()
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"CPU: {os.cpu_count()} cores, OMP_NUM_THREADS={threads}; {len(rows)} rows in "
          f"{time.perf_counter() - start:.0f} s\n")
    print(table(results, size, args.runs))


if __name__ == "__main__":
    main()
