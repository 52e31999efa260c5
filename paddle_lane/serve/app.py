"""The HTTP API (FastAPI, run by gunicorn with uvicorn workers: async handlers let many uploads
wait on one model thread, or on Redis, without a thread each).

    POST /v1/segment?format=png|json|overlay   an image (multipart field `image`, or the raw body
                                               as image/jpeg or image/png)
    GET  /healthz   the process answers          GET /readyz   model loaded and warmed up (503 before)
    GET  /v1/model  the model's identity (deploy.yml without the exporter's paths; hashes and sizes of the
                    served files)      GET /metrics  Prometheus

Every refusal is JSON {"error": "..."}: 400 empty/corrupt/bad format, 404/405 no such route,
408 the upload did not arrive in time, 413 too big (counted as the bytes arrive, whatever the
body's shape), 415 not a JPEG or PNG, 422 too small; 503 with Retry-After when max_queue
requests are already in flight, 504 when the answer is not ready within timeout_s. The deadline
covers the whole request (reading, decoding, inference, rendering) and the in-flight count holds
a request until its last stage has ended, even one already answered 504. No input gives a 500
or stops the service. There is no /docs page (FastAPI's loads its scripts from a public CDN,
blank on an offline host); the schema is at /openapi.json.
"""
from __future__ import annotations

import asyncio
import signal
import threading
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from paddle_lane.serve import metrics
from paddle_lane.serve.batcher import MicroBatcher, Overloaded
from paddle_lane.serve.frames import (FORMATS, IMAGE_TYPES, BadInput, check_format, inspect_upload, model_inputs,
                                     render_answer)
from paddle_lane.serve.settings import ServeSettings

RETRY_AFTER_S = 1
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and headers allowed on top of the image limit


class PastDeadline(Exception):
    """The request's deadline passed before its answer was ready (504)."""


def error(status: int, message: str, reason: str, headers: dict | None = None) -> JSONResponse:
    metrics.ERRORS.labels(reason).inc()
    return JSONResponse({"error": message}, status_code=status, headers=headers)


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


def create_app(settings: ServeSettings) -> FastAPI:
    state: dict = {"ready": False, "predictor": None, "batcher": None, "queue": None, "info": None}

    in_flight = [0]  # requests past admission whose work has not ended (this process)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from paddle_lane.inference.backends import model_identity
        from paddle_lane.inference.export_folder import read_deploy
        state["info"] = read_deploy(settings.model)
        state["identity"] = await run_in_threadpool(model_identity, settings.model, state["info"])
        if settings.redis:
            from paddle_lane.serve.queue import RedisQueue
            state["queue"] = RedisQueue(settings.redis, settings.max_queue, settings.result_ttl_s, settings.timeout_s)
            state["rows_cut"] = rows_cut_from_deploy(state["info"])
        else:
            import_runtime_keeping_signals()
            predictor = await run_in_threadpool(load_local_model, settings)

            def run_batch(stacked):
                return predictor.predict_batch(stacked)

            def on_batch(n, seconds):
                metrics.BATCH_SIZE.observe(n)
                metrics.BATCH_SECONDS.observe(seconds)
            batcher = MicroBatcher(run_batch, settings.batch_for(predictor.device), settings.max_wait_ms,
                                   settings.max_queue, on_batch)
            batcher.start()
            state.update(predictor=predictor, batcher=batcher, rows_cut=predictor.rows_cut)
        state["ready"] = True
        yield
        state["ready"] = False
        if state["batcher"] is not None:
            await state["batcher"].stop()
        if state["queue"] is not None:
            await state["queue"].close()

    app = FastAPI(title="paddle-lane", summary="ApolloScape lane segmentation", lifespan=lifespan,
                  docs_url=None, redoc_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):  # 404, 405: JSON like every refusal
        return error(exc.status_code, str(exc.detail), f"http_{exc.status_code}", getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, exc: RequestValidationError):
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()[:3])
        return error(422, f"invalid request ({where})", "http_422")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not state["ready"]:
            return JSONResponse({"ready": False, "reason": "model loading"}, status_code=503)
        if state["queue"] is not None:
            if not await state["queue"].ping():
                return JSONResponse({"ready": False, "reason": "redis unreachable"}, status_code=503)
            if not await state["queue"].live_workers():
                return JSONResponse({"ready": False, "reason": "no live worker reads the queue"}, status_code=503)
        return {"ready": True, "mode": "redis" if settings.redis else "local",
                "backend": None if settings.redis else state["predictor"].backend}

    @app.get("/v1/model")
    async def model_info():
        return state["identity"]

    @app.get("/metrics")
    async def prometheus():
        if state["batcher"] is not None:
            metrics.QUEUE_DEPTH.set(state["batcher"].depth)
        body, content_type = metrics.render_metrics()
        return Response(body, media_type=content_type)

    @app.post("/v1/segment")
    async def segment(request: Request, format: str = "png"):
        t0 = time.perf_counter()
        response = await _segment(request, format)
        metrics.REQUESTS.labels(format if format in FORMATS else "invalid", str(response.status_code)).inc()
        metrics.LATENCY.observe(time.perf_counter() - t0)
        return response

    async def _segment(request: Request, fmt: str) -> Response:
        if not state["ready"]:
            return error(503, "model loading", "not_ready", {"Retry-After": str(RETRY_AFTER_S)})
        try:
            check_format(fmt)
        except BadInput as exc:
            return error(exc.status, exc.message, f"http_{exc.status}")
        if in_flight[0] >= settings.max_queue:
            return error(503, f"overloaded: {in_flight[0]} requests in flight (limit {settings.max_queue}); retry later",
                         "overloaded", {"Retry-After": str(RETRY_AFTER_S)})
        deadline = time.time() + settings.timeout_s  # for the whole request, from here
        in_flight[0] += 1
        progress = {"uploaded": False}
        work = asyncio.ensure_future(_answer(request, fmt, deadline, progress))
        work.add_done_callback(lambda _: in_flight.__setitem__(0, in_flight[0] - 1))  # when its last stage ends
        try:
            # the work is not cancelled at the deadline (a decode in a thread cannot be): it stops at
            # its next stage boundary, and holds its in-flight place until then
            return await asyncio.wait_for(asyncio.shield(work), max(0.0, deadline - time.time()))
        except asyncio.TimeoutError:
            if not progress["uploaded"]:  # the client's fault, not the service's
                return error(408, f"the upload did not arrive within {settings.timeout_s} s", "http_408")
            return error(504, f"no answer within {settings.timeout_s} s", "timeout")

    async def _answer(request: Request, fmt: str, deadline: float, progress: dict) -> Response:
        max_bytes = int(settings.max_upload_mb * 2**20)
        try:
            data = await _read_upload(request, max_bytes, deadline)
            progress["uploaded"] = True
            full_size = inspect_upload(data, max_bytes, settings.max_pixels, state["rows_cut"])
            if state["queue"] is not None:
                try:
                    return await _via_redis(data, fmt, deadline)
                except (OSError, ConnectionError, TimeoutError) as exc:
                    raise Overloaded(f"the request queue is unreachable ({type(exc).__name__})") from None
                except Exception as exc:
                    if type(exc).__module__.startswith("redis"):  # RedisError and its kinds: the queue, not the input
                        raise Overloaded(f"the request queue failed ({type(exc).__name__})") from None
                    raise
            return await _local(data, full_size, fmt, deadline)
        except BadInput as exc:
            return error(exc.status, exc.message, f"http_{exc.status}")
        except Overloaded as exc:
            return error(503, f"overloaded: {exc}; retry later", "overloaded", {"Retry-After": str(RETRY_AFTER_S)})
        except PastDeadline:
            return error(504, f"no answer within {settings.timeout_s} s", "timeout")
        except ClientDisconnect:
            print(f"client {request.client.host if request.client else '?'} disconnected during its upload",
                  flush=True)
            return error(400, "client disconnected during the upload", "disconnected")

    def _check_time(deadline: float) -> None:
        if time.time() >= deadline:
            raise PastDeadline()

    async def _local(data: bytes, full_size: tuple[int, int], fmt: str, deadline: float) -> Response:
        predictor = state["predictor"]
        t0 = time.perf_counter()
        inputs = await run_in_threadpool(model_inputs, predictor, data, full_size)
        _check_time(deadline)
        t1, timing = time.perf_counter(), {}
        try:
            probs = await asyncio.wait_for(state["batcher"].submit(inputs, timing), max(0.0, deadline - time.time()))
        except asyncio.TimeoutError:
            raise PastDeadline() from None
        _check_time(deadline)
        t2 = time.perf_counter()
        body = await run_in_threadpool(render_answer, predictor, probs, data, full_size, fmt)
        t3 = time.perf_counter()
        # where the time went (W3C Server-Timing, ms): decode, waiting for the model, the forward pass, render
        stages = {"decode": t1 - t0, "queue": timing.get("infer_start", t1) - t1,
                  "infer": timing.get("infer_end", t2) - timing.get("infer_start", t1), "encode": t3 - t2}
        return Response(body, media_type=FORMATS[fmt],
                        headers={"Server-Timing": ", ".join(f"{k};dur={1000 * v:.1f}" for k, v in stages.items())})

    async def _via_redis(data: bytes, fmt: str, deadline: float) -> Response:
        queue = state["queue"]
        metrics.QUEUE_DEPTH.set(await queue.depth())
        got = await queue.submit(data, fmt, deadline)
        if got is None:
            return error(504, f"no worker answered within {settings.timeout_s} s", "timeout")
        status, content_type, body = got
        if status != 200:
            metrics.ERRORS.labels(f"http_{status}").inc()
        return Response(body, status_code=status, media_type=content_type)

    return app


async def _read_body(request: Request, limit: int, deadline: float) -> bytes:
    """The raw body, counted as it arrives: past `limit` bytes it is refused (413) without reading
    the rest, whatever the body's shape (declared length, chunked, multipart); not complete by
    `deadline` (a client that declares more than it sends) it is refused (408)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadInput(413, f"upload of {declared} bytes is over the limit of {limit}")
    chunks, received = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - time.time()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise BadInput(408, f"the upload did not arrive in time ({received} bytes received)") from None
        received += len(chunk)
        if received > limit:
            raise BadInput(413, f"upload over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_upload(request: Request, max_bytes: int, deadline: float) -> bytes:
    """The image bytes of a multipart form (field `image`) or of a raw image body; size-capped and
    timed as they arrive (_read_body); the form is parsed from the bytes already read."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        body = await _read_body(request, max_bytes + MULTIPART_OVERHEAD, deadline)
        sent = [False]

        async def replay():  # the body read above, once, for Starlette's form parser
            if sent[0]:
                return {"type": "http.disconnect"}
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
        except Exception as exc:  # malformed multipart
            raise BadInput(400, f"unreadable multipart body ({exc})") from None
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise BadInput(400, "multipart body without a file field named 'image'")
        data = await upload.read(max_bytes + 1)
        await form.close()
    elif content_type in IMAGE_TYPES.values():
        data = await _read_body(request, max_bytes, deadline)
    else:
        raise BadInput(415, f"content type {content_type or 'none'!r}: send multipart/form-data (field 'image'), "
                            "image/jpeg or image/png")
    if len(data) > max_bytes:
        raise BadInput(413, f"upload over the limit of {max_bytes} bytes")
    return data


def rows_cut_from_deploy(info: dict):
    """rows cut from an image of a given height, from deploy.yml (Redis web processes load no model)."""
    from paddle_lane.core.resize import crop_rows
    offset, frame_height = info["input"]["crop_offset"], info["input"]["frame_height"]
    return lambda height: crop_rows(offset, frame_height, height)


def app_from_env() -> FastAPI:
    """For gunicorn run directly: settings from PADDLE_LANE_* variables (see settings.py)."""
    return create_app(ServeSettings.from_env())
