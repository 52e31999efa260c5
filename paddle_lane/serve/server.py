"""`paddle-lane serve`: this process becomes the gunicorn master; each worker process is a
uvicorn worker that builds the app and loads its own model replica (on CPU throughput comes from
replicas). Workers die with the master, whatever ends it (PR_SET_PDEATHSIG), and the master
stops them on SIGTERM/SIGINT. Prometheus samples of all workers go to a temp folder removed
on exit."""
from __future__ import annotations

import os
import shutil
import tempfile

from paddle_lane.core.procs import die_with_parent, port_in_use
from paddle_lane.inference.export_folder import read_deploy
from paddle_lane.serve.settings import KEEPALIVE_S, ServeSettings

WORKER_CLASS = "uvicorn_worker.UvicornWorker"


def gunicorn_options(host: str, port: int, workers: int, settings: ServeSettings) -> dict:
    # the model loads in each worker after the fork (no preload): loading can take longer than a request.
    # No control socket: gunicorn 23+ puts one at ~/.gunicorn/gunicorn.ctl, shared by every instance of a
    # user, and an instance that exits removes the socket of another still running.
    return {"bind": f"{host}:{port}", "workers": workers, "worker_class": WORKER_CLASS,
            "timeout": max(120, int(settings.timeout_s * 4)), "graceful_timeout": int(settings.timeout_s) + 5,
            "keepalive": KEEPALIVE_S, "accesslog": "-", "errorlog": "-", "loglevel": "info",
            "control_socket_disable": True,
            "post_fork": lambda server, worker: die_with_parent(), "worker_exit": _mark_dead}


def _mark_dead(server, worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> int:
    from gunicorn.app.base import BaseApplication
    info = read_deploy(settings.model)  # a wrong folder is one line here, not a worker crash loop
    if port_in_use(host, port):
        raise OSError(f"serve: port {port} on {host} is already in use; pick another with --port")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    metrics_dir = tempfile.mkdtemp(prefix="paddle_lane_metrics_")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    options = gunicorn_options(host, port, workers, settings)

    class Service(BaseApplication):
        def load_config(self):
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            from paddle_lane.serve.app import create_app
            return create_app(settings)

    batch = settings.max_batch or "4 on a GPU, 1 on a CPU"
    mode = f"Redis {settings.redis}" if settings.redis else f"local model, batches up to {batch}"
    print(f"serve: {settings.model} ({len(info['members'])} member(s)) on http://{host}:{port} with {workers} "
          f"worker(s); {mode}", flush=True)
    try:
        Service().run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
