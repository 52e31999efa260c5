"""Gunicorn settings for serving paddle-lane without the CLI:

    gunicorn -c deploy/gunicorn.conf.py "paddle_lane.serve.app:app_from_env()"

The app reads PADDLE_LANE_MODEL (export dir), PADDLE_LANE_REDIS, PADDLE_LANE_BACKEND, PADDLE_LANE_MAX_BATCH,
PADDLE_LANE_MAX_WAIT_MS, PADDLE_LANE_MAX_QUEUE, PADDLE_LANE_TIMEOUT_S and PADDLE_LANE_MAX_UPLOAD_MB;
this file reads PADDLE_LANE_BIND, PADDLE_LANE_WORKERS, PADDLE_LANE_LOG_LEVEL and PADDLE_LANE_FORWARDED_ALLOW_IPS.
"""
import os

from paddle_lane.serve import settings as _serve_settings

# Loopback unless told otherwise; a container sets PADDLE_LANE_BIND=0.0.0.0:8000.
bind = os.environ.get("PADDLE_LANE_BIND", "127.0.0.1:8000")
# Each worker holds a whole model replica in memory: size by RAM and cores, not by 2*cores+1.
workers = int(os.environ.get("PADDLE_LANE_WORKERS", "2"))
# FastAPI is ASGI; uvicorn's gunicorn worker now lives in the uvicorn-worker package.
worker_class = "uvicorn_worker.UvicornWorker"
# No preload: each worker loads its own model after the fork (inference sessions and their thread pools
# do not survive a fork, and a copy-on-write model would be duplicated on first touch anyway).
preload_app = False

# A worker silent this long is killed and restarted; it covers model loading and warm-up at start.
timeout = 120
# On SIGTERM, in-flight requests get this long to finish: above the API's 30 s request timeout.
graceful_timeout = 35
# Idle keep-alive above the proxy's (nginx upstream keepalive_timeout 60s), so the proxy closes first
# and never sends on a connection the server is closing. One value, shared with `paddle-lane serve`.
keepalive = _serve_settings.KEEPALIVE_S
# No control socket: gunicorn 23+ creates ~/.gunicorn/gunicorn.ctl, shared by every instance of the user, and
# an instance that exits deletes the socket of another still running.
control_socket_disable = True
# Never recycle workers by request count: each restart reloads the model.
max_requests = 0
# The heartbeat file on tmpfs, where a slow or read-only disk cannot stall it.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# Logs to stdout/stderr, for the container runtime to collect.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("PADDLE_LANE_LOG_LEVEL", "info")
# Trust X-Forwarded-* only from these proxies (set to the proxy's address or "*" behind nginx).
forwarded_allow_ips = os.environ.get("PADDLE_LANE_FORWARDED_ALLOW_IPS", "127.0.0.1")
