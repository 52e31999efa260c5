"""How the service says no: every refusal is JSON {"error": "..."} and counted by reason."""
from __future__ import annotations

from fastapi.responses import JSONResponse

from paddle_lane.serve import metrics

RETRY_AFTER_S = 1


class PastDeadline(Exception):
    """The request's deadline passed before its answer was ready (504)."""


def error(status: int, message: str, reason: str, headers: dict | None = None) -> JSONResponse:
    metrics.ERRORS.labels(reason).inc()
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def retry_later(message: str, reason: str) -> JSONResponse:
    """503 with Retry-After: the service is loading or full, not broken."""
    return error(503, message, reason, {"Retry-After": str(RETRY_AFTER_S)})
