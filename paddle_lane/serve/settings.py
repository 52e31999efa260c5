"""Serving settings: one dataclass, filled from the command line (`paddle-lane serve`) or from
PADDLE_LANE_* environment variables (gunicorn run directly, containers), checked when built."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from paddle_lane.core.errors import UserError

ENV_PREFIX = "PADDLE_LANE_"
# gunicorn's idle keep-alive (s), for `paddle-lane serve` and deploy/gunicorn.conf.py alike: above the front
# proxy's upstream keepalive_timeout (deploy/nginx.conf, 60 s), so the proxy closes idle connections first and
# never sends a request on one the server is closing.
KEEPALIVE_S = 75


@dataclass(frozen=True)
class ServeSettings:
    model: str                       # export folder (deploy.yml)
    backend: str | None = None       # onnxruntime | paddle-inference | dygraph (None: the device's default)
    redis: str | None = None         # redis://host:port/db: scale-out mode (web processes queue, workers predict)
    max_batch: int = 0               # requests per forward pass; 0: 4 on a GPU, 1 on a CPU (see batch_for)
    max_wait_ms: float = 5.0         # how long the first request of a batch waits for company
    max_queue: int = 64              # waiting requests per process (Redis: stream length) before 503
    timeout_s: float = 30.0          # a request not answered by then gets 504
    max_upload_mb: float = 20.0      # bigger bodies get 413
    max_pixels: int = 40_000_000     # bigger images get 413 (a competition frame has 5.8 M)
    threads: int = 0                 # backend threads per process (0: the backend's default)
    claim_idle_ms: int = 15_000      # Redis: a request pending this long on a silent worker is taken over
    result_ttl_s: int = 60           # Redis: results expire when nobody collects them

    def __post_init__(self):
        checks = {"max_batch": self.max_batch >= 0, "max_wait_ms": self.max_wait_ms >= 0,
                  "max_queue": self.max_queue >= 1, "timeout_s": self.timeout_s > 0,
                  "max_upload_mb": self.max_upload_mb > 0, "max_pixels": self.max_pixels >= 1,
                  "threads": self.threads >= 0, "claim_idle_ms": self.claim_idle_ms >= 100,
                  "result_ttl_s": self.result_ttl_s >= 1}
        for name, ok in checks.items():
            if not ok:
                raise UserError(f"serve setting {name}={getattr(self, name)!r} is out of range")
        if not self.model:
            raise UserError("serve: no model (an export folder) given")

    def batch_for(self, device: str) -> int:
        """The batch limit in force: the setting, or by device when 0. On 2 CPU cores batching
        lowered served throughput (0.72x at concurrency 8, bench/bench_serve.py): the cores are
        busy anyway, and a batch only waits; on a GPU a batch fills the card."""
        return self.max_batch or (4 if str(device).startswith("gpu") else 1)

    @classmethod
    def from_env(cls, env=None) -> "ServeSettings":
        """PADDLE_LANE_MODEL, PADDLE_LANE_MAX_BATCH, ...: one variable per field, upper-case."""
        env = os.environ if env is None else env
        values = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            try:
                values[f.name] = int(raw) if kind == "int" else float(raw) if kind == "float" else raw
            except ValueError:
                raise UserError(f"{ENV_PREFIX + f.name.upper()}={raw!r}: expected {kind}") from None
        if "model" not in values:
            raise UserError(f"{ENV_PREFIX}MODEL is not set: the export folder to serve")
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}
