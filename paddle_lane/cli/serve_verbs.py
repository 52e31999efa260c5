"""Verbs that serve a model: serve, worker, client, doctor."""
from __future__ import annotations

from paddle_lane.cli.args import add_config_args
from paddle_lane.inference.export_folder import BACKENDS


def _add_serving_args(p, batch_default: int) -> None:
    p.add_argument("--model", required=True, help="export folder (paddle-lane export)")
    p.add_argument("--backend", choices=BACKENDS, help="default: onnxruntime on CPU, paddle-inference on GPU")
    p.add_argument("--max-batch", type=int, default=batch_default,
                   help="requests per forward pass (0: 4 on a GPU, 1 on a CPU, where batching measured slower)")
    p.add_argument("--threads", type=int, default=0, help="backend threads per process (0: its default)")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API for an export (gunicorn + uvicorn workers; Redis scale-out)")
    _add_serving_args(p, 0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each a model replica, unless --redis)")
    p.add_argument("--redis", help="redis://HOST:PORT/DB: queue requests for `paddle-lane worker` processes")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503 (Redis: stream length)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="answer time before 504")
    p.add_argument("--max-upload-mb", type=float, default=20.0)
    p.set_defaults(func=cmd_serve)


def _add_worker(sub) -> None:
    p = sub.add_parser("worker", help="model worker for `serve --redis` (run any number, on any machine)")
    _add_serving_args(p, 0)
    p.add_argument("--redis", required=True, help="redis://HOST:PORT/DB")
    p.add_argument("--claim-idle-ms", type=int, default=15000,
                   help="take over requests pending this long on a worker that stopped answering")
    p.set_defaults(func=cmd_worker)


def _add_client(sub) -> None:
    p = sub.add_parser("client", help="a submission folder from a served model (concurrent uploads, retries)")
    p.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    p.add_argument("--images", help="folder of test images (searched recursively)")
    p.add_argument("--list", help="a prepare list CSV instead of --images")
    p.add_argument("--out", required=True, help="submission folder")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--retries", type=int, default=5, help="attempts per image on 503/504/connection errors")
    p.add_argument("--timeout-s", type=float, default=120.0, help="per request")
    p.add_argument("--no-zip", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds another model's submission: move it aside and start over")
    add_config_args(p)
    p.set_defaults(func=cmd_client)


def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="check this installation: backends import, package data, one forward pass each")
    p.add_argument("--scheme", default="apollo8", help="label scheme to load")
    p.set_defaults(func=cmd_doctor)


def _serve_settings(args):
    from paddle_lane.serve.settings import ServeSettings
    return ServeSettings(model=args.model, backend=args.backend, redis=getattr(args, "redis", None),
                         max_batch=args.max_batch, max_wait_ms=getattr(args, "max_wait_ms", 5.0),
                         max_queue=getattr(args, "max_queue", 64), timeout_s=getattr(args, "timeout_s", 30.0),
                         max_upload_mb=getattr(args, "max_upload_mb", 20.0), threads=args.threads,
                         claim_idle_ms=getattr(args, "claim_idle_ms", 15000))


def cmd_serve(args, argv) -> int:
    from paddle_lane.serve.server import serve
    return serve(_serve_settings(args), args.host, args.port, args.workers)


def cmd_worker(args, argv) -> int:
    from paddle_lane.serve.queue import run_worker
    return run_worker(_serve_settings(args))


def cmd_client(args, argv) -> int:
    from paddle_lane.core.folder_lock import hold_folder
    from paddle_lane.serve.client import run_client
    hold_folder(args.out, "client")  # two clients on one folder would race (infer and prepare lock theirs)
    return run_client(args.url, args.images, args.list, args.out, concurrency=args.concurrency,
                      retries=args.retries, timeout_s=args.timeout_s, config=args.config, opts=args.opts,
                      no_zip=args.no_zip, overwrite=args.overwrite)


def cmd_doctor(args, argv) -> int:
    from paddle_lane.cli.doctor import run_doctor
    return run_doctor(args.scheme)


# the verbs' parsers, in the order of `paddle-lane --help`
PARSERS = (_add_serve, _add_worker, _add_client, _add_doctor)
