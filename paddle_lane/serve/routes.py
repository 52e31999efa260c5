"""The API's routes: thin handlers over the process's SegmentService (app.state.service)."""
from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from paddle_lane.serve import metrics
from paddle_lane.serve.frames import FORMATS
from paddle_lane.serve.service import SegmentService

router = APIRouter()


def current_service(request: Request) -> SegmentService:
    return request.app.state.service


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(service: SegmentService = Depends(current_service)):
    reason = await service.not_ready_reason()
    if reason is not None:
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)
    return {"ready": True, "mode": service.mode,
            "backend": None if service.predictor is None else service.predictor.backend}


@router.get("/v1/model")
async def model_info(service: SegmentService = Depends(current_service)):
    return service.identity


@router.get("/metrics")
async def prometheus(service: SegmentService = Depends(current_service)):
    if service.batcher is not None:
        metrics.QUEUE_DEPTH.set(service.batcher.depth)
    body, content_type = metrics.render_metrics()
    return Response(body, media_type=content_type)


@router.post("/v1/segment")
async def segment(request: Request, format: str = "png", service: SegmentService = Depends(current_service)):
    t0 = time.perf_counter()
    response = await service.segment(request, format)
    metrics.REQUESTS.labels(format if format in FORMATS else "invalid", str(response.status_code)).inc()
    metrics.LATENCY.observe(time.perf_counter() - t0)
    return response
