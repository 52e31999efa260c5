"""Prometheus metrics of the service. Under gunicorn every worker process writes its own
samples to PROMETHEUS_MULTIPROC_DIR (set by `paddle-lane serve` before the workers start) and
/metrics sums them, so the numbers are the service's, not one worker's."""
from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

REQUESTS = Counter("paddle_lane_requests", "Segmentation requests answered, by format and HTTP status",
                   ["format", "status"])
ERRORS = Counter("paddle_lane_errors", "Requests answered with an error, by reason", ["reason"])
LATENCY = Histogram("paddle_lane_request_seconds", "Time from upload received to answer sent",
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
BATCH_SIZE = Histogram("paddle_lane_batch_size", "Requests per forward pass", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32))
BATCH_SECONDS = Histogram("paddle_lane_batch_seconds", "Forward pass time per batch",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
QUEUE_DEPTH = Gauge("paddle_lane_queue_depth", "Requests waiting for the model (Redis: stream length)",
                    **({"multiprocess_mode": "livesum"} if MULTIPROC else {}))


def render_metrics() -> tuple[bytes, str]:
    """The exposition text of this process, or of every worker in multiprocess mode."""
    if MULTIPROC:
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
