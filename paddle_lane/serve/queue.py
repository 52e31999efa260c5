"""Scale-out through Redis (the course's design, made reliable): web processes append requests
to a stream and wait for their answer by id; model workers on any machine read the stream in a
consumer group, a batch at a time, and push each answer to a per-request list that expires.

Nothing is lost when a worker dies mid-batch: its entries stay pending in the group, and after
`claim_idle_ms` another worker takes them over (XAUTOCLAIM). An answer is pushed by a Lua
script only together with the entry's acknowledgement, so a request taken over from a slow
worker is still answered exactly once. The stream length is the back-pressure signal (503).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid

import numpy as np

STREAM = "paddle_lane:requests"
GROUP = "paddle_lane:workers"
RESULT = "paddle_lane:result:"
ALIVE = "paddle_lane:alive"     # sorted set: worker name -> time (epoch s) its heartbeat runs out
ALIVE_TTL_S = 30                # a worker silent this long no longer counts as serving (/readyz)
HEARTBEAT_ENV = "PADDLE_LANE_HEARTBEAT"   # file a worker touches while it serves (unset: none)

# ack + delete the entry, and push the answer only if this call acknowledged it (exactly once)
FINISH = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('XDEL', KEYS[1], ARGV[2])
  if ARGV[3] ~= '0' then
    redis.call('RPUSH', KEYS[2], ARGV[4])
    redis.call('EXPIRE', KEYS[2], ARGV[3])
  end
  return 1
end
return 0
"""


def pack(status: int, content_type: str, body: bytes) -> bytes:
    return f"{status}\n{content_type}\n".encode() + body


def unpack(data: bytes) -> tuple[int, str, bytes]:
    status, content_type, body = data.split(b"\n", 2)
    return int(status), content_type.decode(), body


# ----------------------------------------------------------------------------- web side
class RedisQueue:
    """The web process's end: submit an upload, wait for its answer (asyncio)."""

    def __init__(self, url: str, max_queue: int, result_ttl_s: int, timeout_s: float = 30.0):
        import redis.asyncio as aioredis
        # every call is bounded: a BLPOP waits at most timeout_s, so the socket may wait a little longer
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=timeout_s + 10)
        self.max_queue, self.result_ttl_s = max_queue, result_ttl_s

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False

    async def depth(self) -> int:
        return int(await self.redis.xlen(STREAM))

    async def live_workers(self) -> int:
        """Workers whose heartbeat has not run out (none after Redis restarted empty, until they beat)."""
        return int(await self.redis.zcount(ALIVE, time.time(), "+inf"))

    async def submit(self, data: bytes, fmt: str, deadline: float) -> tuple[int, str, bytes] | None:
        """(status, content type, body), or None when no worker answered by `deadline` (epoch s)."""
        from paddle_lane.serve.batcher import Overloaded
        if await self.depth() >= self.max_queue:
            raise Overloaded(f"{self.max_queue} requests already queued for the workers")
        rid = uuid.uuid4().hex
        await self.redis.xadd(STREAM, {"id": rid, "fmt": fmt, "deadline": f"{deadline:.3f}", "image": data})
        remaining = deadline - time.time()
        if remaining <= 0:
            return None
        # BLPOP takes whole or fractional seconds; 0 would mean forever
        got = await self.redis.blpop([RESULT + rid], timeout=max(0.01, remaining))
        return unpack(got[1]) if got else None

    async def close(self) -> None:
        await self.redis.aclose()


# ----------------------------------------------------------------------------- worker side
class Worker:
    """`paddle-lane worker`: read up to max_batch requests, predict them in one pass, answer each."""

    def __init__(self, settings, predictor=None, consumer: str | None = None):
        import redis
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis, socket_connect_timeout=5, socket_timeout=30)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.finish = self.redis.register_script(FINISH)
        self.predictor = predictor
        self.stopping = False
        self.answered = 0
        # touched after every successful round with Redis: a probe reads its age (deploy/k8s/worker-deployment.yaml)
        self.heartbeat = os.environ.get(HEARTBEAT_ENV) or None

    def ensure_group(self) -> None:
        """Create the stream and the group if absent (first start, or Redis restarted empty: then
        XREADGROUP fails with NOGROUP until they exist again). From id 0: entries added meanwhile
        are read too."""
        import redis
        try:
            self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def publish_alive(self) -> None:
        """This worker serves: its heartbeat in Redis (what /readyz counts), expired ones removed."""
        now = time.time()
        pipe = self.redis.pipeline()
        pipe.zadd(ALIVE, {self.consumer: now + ALIVE_TTL_S})
        pipe.zremrangebyscore(ALIVE, "-inf", now)
        pipe.execute()

    def next_batch(self, block_ms: int = 1000) -> list:
        """Entries of dead or silent workers first, then new ones (blocking at most block_ms)."""
        n = self.settings.batch_for(self.predictor.device if self.predictor is not None else "cpu")
        _, claimed, *_ = self.redis.xautoclaim(STREAM, GROUP, self.consumer, self.settings.claim_idle_ms,
                                               start_id="0-0", count=n)
        entries = [e for e in claimed if e and e[1]]
        if len(entries) < n:
            got = self.redis.xreadgroup(GROUP, self.consumer, {STREAM: ">"}, count=n - len(entries), block=block_ms)
            entries += [e for _, items in (got or []) for e in items]
        return entries

    def answer(self, entry_id, rid: str, status: int, content_type: str, body: bytes) -> bool:
        return bool(self.finish(keys=[STREAM, RESULT + rid],
                                args=[GROUP, entry_id, self.settings.result_ttl_s, pack(status, content_type, body)]))

    def drop(self, entry_id) -> None:
        self.finish(keys=[STREAM, RESULT + "-"], args=[GROUP, entry_id, 0, b""])

    def process(self, entries: list) -> int:
        """Predict a batch of entries and answer each; returns how many were answered."""
        from paddle_lane.serve.frames import FORMATS, BadInput, check_format, inspect_upload, model_inputs, render_answer
        from paddle_lane.serve.metrics import BATCH_SECONDS, BATCH_SIZE
        p, s = self.predictor, self.settings
        ready, answered = [], 0
        for entry_id, fields in entries:
            rid = fields[b"id"].decode()
            if float(fields[b"deadline"]) < time.time():  # its caller has given up (504): no work, no answer
                self.drop(entry_id)
                continue
            try:
                fmt = check_format(fields[b"fmt"].decode())
                data = fields[b"image"]
                full_size = inspect_upload(data, int(s.max_upload_mb * 2**20), s.max_pixels, p.rows_cut)
                inputs = model_inputs(p, data, full_size)
            except BadInput as exc:
                answered += self.answer(entry_id, rid, exc.status, "application/json", _error_body(exc.message))
                continue
            ready.append((entry_id, rid, fmt, data, full_size, inputs, float(fields[b"deadline"])))
        ready = self._within_deadline(ready)  # decoding took time too
        if ready:
            t0 = time.perf_counter()
            probs = p.predict_batch([np.stack([r[5][k] for r in ready]) for k in range(len(ready[0][5]))])
            BATCH_SIZE.observe(len(ready))
            BATCH_SECONDS.observe(time.perf_counter() - t0)
            for (entry_id, rid, fmt, data, full_size, _, deadline), prob in zip(ready, probs):
                if deadline < time.time():  # nobody waits for it any more: no render, no answer
                    self.drop(entry_id)
                    continue
                body = render_answer(p, prob, data, full_size, fmt)
                answered += self.answer(entry_id, rid, 200, FORMATS[fmt], body)
        self.answered += answered
        return answered

    def _within_deadline(self, ready: list) -> list:
        """The entries whose caller still waits; the others are acknowledged and dropped."""
        now, kept = time.time(), []
        for r in ready:
            if r[-1] < now:
                self.drop(r[0])
            else:
                kept.append(r)
        return kept

    def beat(self) -> None:
        self.publish_alive()
        if self.heartbeat:
            touch(self.heartbeat)

    def run(self, log=print, give_up_s: float = 60.0) -> int:
        """Serve until stopped; Redis unreachable for give_up_s in a row is one line and exit 3."""
        import redis
        log(f"worker {self.consumer}: reading {STREAM} as group {GROUP} on {self.settings.redis} "
            f"(batches of up to {self.settings.batch_for(self.predictor.device)})")
        down_since, grouped = None, False
        while not self.stopping:
            try:
                if not grouped:
                    self.ensure_group()
                    grouped = True
                entries = self.next_batch()
                if entries:
                    self.process(entries)
                down_since = None
                self.beat()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis came back empty: the stream and the group are gone; make them again and go on
                log(f"worker {self.consumer}: the stream's group is gone (Redis restarted empty?); creating it again")
                grouped = False
                down_since = None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                grouped = False  # it may come back empty
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    log(f"worker {self.consumer}: Redis unreachable ({exc}); retrying for {give_up_s:.0f} s")
                if now - down_since > give_up_s:
                    log(f"worker {self.consumer}: Redis at {self.settings.redis} unreachable for {give_up_s:.0f} s; "
                        "stopping (requests it held are taken over by other workers)")
                    return 3
                time.sleep(1.0)
        try:
            self.redis.zrem(ALIVE, self.consumer)  # /readyz stops counting this worker at once
        except redis.RedisError:
            pass
        log(f"worker {self.consumer}: stopped after answering {self.answered} request(s)")
        return 0


def touch(path: str) -> None:
    """Create or refresh `path`'s modification time (the worker's heartbeat)."""
    with open(path, "a"):
        os.utime(path)


def _error_body(message: str) -> bytes:
    import json
    return json.dumps({"error": message}).encode()


def run_worker(settings) -> int:
    """The `worker` verb: load the export, warm up, then serve the stream until SIGTERM/SIGINT
    (the batch in hand is finished first)."""
    from paddle_lane.inference.backends import export_predictor
    predictor = export_predictor(settings.model, settings.backend, threads=settings.threads or None)
    worker = Worker(settings, predictor)

    def stop(signum, _frame):
        worker.stopping = True
        print(f"worker {worker.consumer}: {signal.Signals(signum).name}, finishing the current batch", file=sys.stderr)
    # Paddle replaces the SIGTERM handler when it loads: ours goes back in after it
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return worker.run()
