"""One web process's serving state and the path of one request through it: admission (in-flight
limit), the deadline over every stage (read, decode, inference, render), and the model in this
process (micro-batched) or behind Redis (scale-out mode)."""
from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from paddle_lane.serve import metrics
from paddle_lane.serve.batcher import MicroBatcher, Overloaded
from paddle_lane.serve.frames import FORMATS, BadInput, check_format, inspect_upload, model_inputs, render_answer
from paddle_lane.serve.refusals import PastDeadline, error, retry_later
from paddle_lane.serve.settings import ServeSettings
from paddle_lane.serve.uploads import read_upload

if TYPE_CHECKING:  # Paddle and redis are imported when the service starts, not with this module
    from paddle_lane.serve.queue import RedisQueue


def import_runtime_keeping_signals() -> None:
    """Import Paddle (through the runtime) in the main thread and put the server's SIGTERM/SIGINT
    handlers back: Paddle installs its own at import, which would kill a worker mid-request
    instead of letting it drain."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    import paddle_lane.inference.backends  # noqa: F401
    if threading.current_thread() is not threading.main_thread():
        return  # an app run in a thread (a test client): the signals belong to its host
    for s, h in handlers.items():
        if h is not None:
            signal.signal(s, h)


def load_local_model(settings: ServeSettings):
    """The export's predictor, warmed up (first calls allocate and tune)."""
    from paddle_lane.inference.backends import export_predictor
    predictor = export_predictor(settings.model, settings.backend, threads=settings.threads or None)
    import numpy as np
    predictor.predict_batch([np.zeros((1, 3, size[1], size[0]), np.float32) for size, _, _ in predictor.input_keys])
    return predictor


def rows_cut_from_deploy(info: dict) -> Callable[[int], int]:
    """rows cut from an image of a given height, from deploy.yml (Redis web processes load no model)."""
    from paddle_lane.core.resize import crop_rows
    offset, frame_height = info["input"]["crop_offset"], info["input"]["frame_height"]
    return lambda height: crop_rows(offset, frame_height, height)


def _record_batch(n: int, seconds: float) -> None:
    metrics.BATCH_SIZE.observe(n)
    metrics.BATCH_SECONDS.observe(seconds)


@dataclass
class SegmentService:
    settings: ServeSettings
    ready: bool = False
    identity: dict = field(default_factory=dict)  # what /v1/model answers
    predictor: object | None = None               # local mode: the export's predictor
    batcher: MicroBatcher | None = None           # local mode: requests grouped into forward passes
    queue: RedisQueue | None = None               # Redis mode: requests go to the workers
    rows_cut: Callable[[int], int] = lambda height: 0
    in_flight: int = 0                            # requests past admission whose work has not ended

    @property
    def mode(self) -> str:
        return "redis" if self.settings.redis else "local"

    async def start(self) -> None:
        from paddle_lane.inference.backends import model_identity
        from paddle_lane.inference.export_folder import read_deploy
        info = read_deploy(self.settings.model)
        self.identity = await run_in_threadpool(model_identity, self.settings.model, info)
        if self.settings.redis:
            from paddle_lane.serve.queue import RedisQueue
            s = self.settings
            self.queue = RedisQueue(s.redis, s.max_queue, s.result_ttl_s, s.timeout_s)
            self.rows_cut = rows_cut_from_deploy(info)
        else:
            import_runtime_keeping_signals()
            predictor = await run_in_threadpool(load_local_model, self.settings)
            self.batcher = MicroBatcher(predictor.predict_batch, self.settings.batch_for(predictor.device),
                                        self.settings.max_wait_ms, self.settings.max_queue, _record_batch)
            self.batcher.start()
            self.predictor, self.rows_cut = predictor, predictor.rows_cut
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self.batcher is not None:
            await self.batcher.stop()
        if self.queue is not None:
            await self.queue.close()

    async def not_ready_reason(self) -> str | None:
        if not self.ready:
            return "model loading"
        if self.queue is not None:
            if not await self.queue.ping():
                return "redis unreachable"
            if not await self.queue.live_workers():
                return "no live worker reads the queue"
        return None

    async def segment(self, request: Request, fmt: str) -> Response:
        """Admit the request, then answer it by its deadline: the work is not cancelled at the deadline
        (a decode in a thread cannot be); it stops at its next stage boundary and holds its in-flight
        place until then."""
        if not self.ready:
            return retry_later("model loading", "not_ready")
        try:
            check_format(fmt)
        except BadInput as exc:
            return error(exc.status, exc.message, f"http_{exc.status}")
        limit = self.settings.max_queue
        if self.in_flight >= limit:
            return retry_later(f"overloaded: {self.in_flight} requests in flight (limit {limit}); retry later",
                               "overloaded")
        deadline = time.time() + self.settings.timeout_s  # for the whole request, from here
        self.in_flight += 1
        progress = {"uploaded": False}
        work = asyncio.ensure_future(self._answer(request, fmt, deadline, progress))
        work.add_done_callback(self._release)  # when its last stage ends
        try:
            return await asyncio.wait_for(asyncio.shield(work), max(0.0, deadline - time.time()))
        except asyncio.TimeoutError:
            if not progress["uploaded"]:  # the client's fault, not the service's
                return error(408, f"the upload did not arrive within {self.settings.timeout_s} s", "http_408")
            return error(504, f"no answer within {self.settings.timeout_s} s", "timeout")

    def _release(self, _work) -> None:
        self.in_flight -= 1

    async def _answer(self, request: Request, fmt: str, deadline: float, progress: dict) -> Response:
        max_bytes = int(self.settings.max_upload_mb * 2**20)
        try:
            data = await read_upload(request, max_bytes, deadline)
            progress["uploaded"] = True
            full_size = inspect_upload(data, max_bytes, self.settings.max_pixels, self.rows_cut)
            if self.queue is not None:
                return await self._via_redis(data, fmt, deadline)
            return await self._local(data, full_size, fmt, deadline)
        except BadInput as exc:
            return error(exc.status, exc.message, f"http_{exc.status}")
        except Overloaded as exc:
            return retry_later(f"overloaded: {exc}; retry later", "overloaded")
        except PastDeadline:
            return error(504, f"no answer within {self.settings.timeout_s} s", "timeout")
        except ClientDisconnect:
            print(f"client {request.client.host if request.client else '?'} disconnected during its upload",
                  flush=True)
            return error(400, "client disconnected during the upload", "disconnected")

    async def _local(self, data: bytes, full_size: tuple[int, int], fmt: str, deadline: float) -> Response:
        t0 = time.perf_counter()
        inputs = await run_in_threadpool(model_inputs, self.predictor, data, full_size)
        _check_time(deadline)
        t1, timing = time.perf_counter(), {}
        try:
            probs = await asyncio.wait_for(self.batcher.submit(inputs, timing), max(0.0, deadline - time.time()))
        except asyncio.TimeoutError:
            raise PastDeadline() from None
        _check_time(deadline)
        t2 = time.perf_counter()
        body = await run_in_threadpool(render_answer, self.predictor, probs, data, full_size, fmt)
        t3 = time.perf_counter()
        # where the time went (W3C Server-Timing, ms): decode, waiting for the model, the forward pass, render
        stages = {"decode": t1 - t0, "queue": timing.get("infer_start", t1) - t1,
                  "infer": timing.get("infer_end", t2) - timing.get("infer_start", t1), "encode": t3 - t2}
        return Response(body, media_type=FORMATS[fmt],
                        headers={"Server-Timing": ", ".join(f"{k};dur={1000 * v:.1f}" for k, v in stages.items())})

    async def _via_redis(self, data: bytes, fmt: str, deadline: float) -> Response:
        try:
            metrics.QUEUE_DEPTH.set(await self.queue.depth())
            got = await self.queue.submit(data, fmt, deadline)
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise Overloaded(f"the request queue is unreachable ({type(exc).__name__})") from None
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):  # RedisError and its kinds: the queue, not the input
                raise Overloaded(f"the request queue failed ({type(exc).__name__})") from None
            raise
        if got is None:
            return error(504, f"no worker answered within {self.settings.timeout_s} s", "timeout")
        status, content_type, body = got
        if status != 200:
            metrics.ERRORS.labels(f"http_{status}").inc()
        return Response(body, status_code=status, media_type=content_type)


def _check_time(deadline: float) -> None:
    if time.time() >= deadline:
        raise PastDeadline()
