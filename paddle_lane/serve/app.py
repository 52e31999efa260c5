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

Layout: routes.py (the handlers), service.py (state and the path of a request), uploads.py (reading
the body), frames.py (decode and render), refusals.py (the JSON errors).
"""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from paddle_lane.serve.refusals import error
from paddle_lane.serve.routes import router
from paddle_lane.serve.service import SegmentService
from paddle_lane.serve.settings import ServeSettings


async def http_error(_request, exc: StarletteHTTPException):  # 404, 405: JSON like every refusal
    return error(exc.status_code, str(exc.detail), f"http_{exc.status_code}", getattr(exc, "headers", None))


async def invalid_request(_request, exc: RequestValidationError):
    where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()[:3])
    return error(422, f"invalid request ({where})", "http_422")


def create_app(settings: ServeSettings) -> FastAPI:
    """The API for one process: its SegmentService starts with the app (model or Redis) and stops with it."""
    service = SegmentService(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="paddle-lane", summary="ApolloScape lane segmentation", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """For gunicorn run directly: settings from PADDLE_LANE_* variables (see settings.py)."""
    return create_app(ServeSettings.from_env())
