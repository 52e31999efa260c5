"""`paddle-lane [--debug] VERB ...`: the command line behind run.sh. Each verb is a small
function that parses its arguments and calls one module. User errors (ValueError, including
ConfigError and UserError, and OSError such as a missing file) print one line and exit 2;
any other exception is an internal error: traceback, one summary line, exit 1.
--debug (or PADDLE_LANE_DEBUG=1) shows the traceback of user errors too."""
from __future__ import annotations

import signal
import sys

# SIGTERM is held from the first moment: the threads that later imports start (OpenBLAS, OpenCV,
# Paddle) inherit the block, so only the main thread takes a SIGTERM, and only once a Python
# handler is in place (Paddle installs a C-level one when imported). main() releases it.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

import argparse
import os
import time
import traceback
import warnings

# Paddle warns at import that ccache is missing; it only matters when compiling extensions.
warnings.filterwarnings("ignore", message="No ccache found")
# Paddle's executor logs an INFO line per static graph it runs; warnings and errors still show
os.environ.setdefault("GLOG_minloglevel", "2")

from paddle_lane.config import load_config
from paddle_lane.core.errors import UserError
from paddle_lane.inference.export_folder import BACKENDS

EPILOG = "Run `paddle-lane VERB --help` for a verb's options."


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", required=required, help="YAML config (with _base_ inheritance)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.seed=1 stages.0.batch_size=4")


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    """The scoring verbs take no config, so the scheme is a flag here (data.scheme elsewhere)."""
    p.add_argument("--scheme", default="apollo8", help="label scheme (data.scheme of the verbs that take a config)")
    p.add_argument("--threads", "--workers", dest="threads", type=int, default=2,
                   help="threads reading and scoring PNGs (--workers always counts processes)")


# Old spellings that still work, each with a one-line note: verb -> {old flag: new flag}, old verb -> new verb.
RENAMED_FLAGS = {
    **dict.fromkeys(("infer", "video", "export"), {"--checkpoint": "--model"}),
    **dict.fromkeys(("evaluate", "report", "compare"), {"--workers": "--threads"}),
}
RENAMED_VERBS = {"validate": "check-submission"}


def renamed_notes(argv: list[str]) -> list[str]:
    """One note per old verb or flag spelling the command line uses."""
    words = [w.split("=", 1)[0] for w in argv]
    verb = next((w for w in words if not w.startswith("-")), "")
    notes = [f"note: `{verb}` is now `{RENAMED_VERBS[verb]}` (the old name still works)"] if verb in RENAMED_VERBS else []
    renamed = RENAMED_FLAGS.get(verb, {})
    notes += [f"note: {w} is now {renamed[w]} (the old name still works)" for w in dict.fromkeys(words) if w in renamed]
    return notes


def cmd_prepare(args, argv) -> int:
    from paddle_lane.core.folder_lock import hold_folder
    from paddle_lane.prepare.pipeline import prepare, summary_table
    cfg = load_config(args.config, args.opts)
    hold_folder(args.out, "prepare")
    if args.cache:
        cfg.prepare.cache = True
    res = prepare(args.data_root, args.out, cfg, workers=args.workers, test_dir=args.test_dir)
    print(summary_table(res))
    return 0


LAUNCH_STOP_GRACE_S = 600  # after a stop signal, how long the ranks may take to checkpoint


def _launch_distributed(args, argv: list[str], log_dir: str | None = None, resume_hint: str | None = None,
                        run_dir: str | None = None) -> int:
    """Re-run this command under paddle.distributed.launch (one process per card/CPU slot).

    The launcher runs in its own session and its ranks in theirs (Paddle's choice), so a signal
    to this process group (SLURM, systemd, Ctrl-C) reaches this process only: it passes SIGTERM
    or SIGINT on to every rank, which agree on the iteration, checkpoint and exit, and then
    prints the one line to continue. Paddle's launcher is not signalled (a second signal makes
    it kill the ranks after 10 s). The launcher dies with this process, and each rank with the
    launcher (PR_SET_PDEATHSIG), so nothing outlives a kill -9."""
    import subprocess
    from pathlib import Path
    import psutil
    from paddle_lane.core.procs import die_with_parent, stop_child
    training = run_dir is not None  # a training run: its folder holds the logs and the stop line's checkpoint
    out = Path(run_dir) if training else None
    if log_dir is None:
        log_dir = str(out / "launch_logs")
    ips = getattr(args, "ips", None)
    launch = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", log_dir]
    if args.gpus:
        launch += ["--devices", args.gpus]
    else:
        launch += ["--nproc_per_node", str(args.nproc)]
    if ips:
        launch += ["--ips", ips]
    inner = [a for a in argv if a not in ("--gpus", "--nproc", "--ips") and a not in (args.gpus, str(args.nproc), ips)]
    cmd = launch + [str(Path(__file__).resolve())] + inner
    env = dict(os.environ, PADDLE_LANE_LAUNCHED="1")
    if resume_hint:
        env["PADDLE_LANE_RESUME_CMD"] = resume_hint
    received: list[int] = []
    first_at: list[float] = []  # when the first stop signal came

    def ranks() -> list:
        try:
            return psutil.Process(proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def pass_on(signum, _frame):
        received.append(signum)
        first_at[:] = first_at or [time.monotonic()]
        for rank in ranks():
            try:
                rank.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent, start_new_session=True)
    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        while True:
            try:
                rc = proc.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                pass
            if first_at and time.monotonic() - first_at[0] > LAUNCH_STOP_GRACE_S:
                print(f"error: the ranks did not stop within {LAUNCH_STOP_GRACE_S} s of "
                      f"{signal.Signals(received[0]).name}; killed", file=sys.stderr)
                proc.kill()
                rc = proc.wait()
                break
    finally:
        stop_child(proc, grace=10)
    if received and training:
        from paddle_lane.runs.run_dir import stopped_line
        print(stopped_line(out, signal.Signals(received[0]).name, resume_hint or ""), file=sys.stderr)
    return 128 + received[0] if received else rc


def resume_command(argv: list[str]) -> str:
    """The command that continues this training run: the user's own, with --resume."""
    import shlex
    prog = os.environ.get("PADDLE_LANE_PROG", "paddle-lane")
    rest = argv[argv.index("train") + 1:] if "train" in argv else argv
    return shlex.join([prog, "train", "--resume", *[a for a in rest if a not in ("--resume", "--force")]])


def parse_gpus(text: str | None) -> list[int]:
    """'3' -> [3], '0,1,2,3' -> [0, 1, 2, 3], None -> []; anything else is a UserError."""
    if text is None:
        return []
    parts = [t.strip() for t in text.split(",")]
    if not all(t.isdigit() for t in parts):
        raise UserError(f"--gpus: expected card ids like 3 or 0,1,2,3, got {text!r}")
    ids = [int(t) for t in parts]
    if len(set(ids)) != len(ids):
        raise UserError(f"--gpus: card id repeated in {text!r}")
    return ids


def _check_gpus(gpus: list[int], device: str | None) -> None:
    """--gpus needs a CUDA build that sees every requested card, and no --device cpu beside it."""
    from paddle_lane.device import require_cuda
    text = ",".join(map(str, gpus))
    if device == "cpu":
        raise UserError(f"--gpus {text} contradicts --device cpu; give one of them")
    count = require_cuda(f"--gpus {text}")
    missing = [i for i in gpus if i >= count]
    if missing:
        raise UserError(f"--gpus {text}: no card {missing}, only {count} CUDA device(s) visible (ids 0-{count - 1})")


def cmd_train(args, argv: list[str]) -> int:
    received: list[int] = []  # a SIGTERM before the trainer takes over is noted, then honoured

    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        cfg = load_config(args.config, args.opts)  # fail on config errors before Paddle is imported
        gpus = parse_gpus(args.gpus)
        if gpus:
            _check_gpus(gpus, args.device)
        launched = bool(os.environ.get("PADDLE_LANE_LAUNCHED"))
        resume_hint = os.environ.get("PADDLE_LANE_RESUME_CMD") or resume_command(argv)
        if not launched:  # every input is checked before the run folder is claimed
            from paddle_lane.core.folder_lock import hold_folder
            from paddle_lane.models.download import fetch_weights
            for key in ("backbone_pretrained", "pretrained"):
                if getattr(cfg.model, key):
                    fetch_weights(getattr(cfg.model, key), f"model.{key}")
            if os.environ.get("PADDLE_TRAINER_ID", "0") == "0":  # under another launcher: rank 0 holds it
                hold_folder(cfg.train.output_dir, "train")  # one run per folder; our ranks run under this lock
        multi = len(gpus) > 1 or (args.nproc or 1) > 1 or args.ips
        if multi and not launched:
            return _launch_distributed(args, argv, resume_hint=resume_hint, run_dir=cfg.train.output_dir)
        # one card id selects that card; without --gpus the device follows --device / the launcher
        device = f"gpu:{gpus[0]}" if len(gpus) == 1 else args.device
        return _train_and_report(cfg, args, device, received, resume_hint)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train_and_report(cfg, args, device, received: list[int], resume_hint: str) -> int:
    """Run the trainer; map its ends to exit codes and print one line per stage."""
    from paddle_lane.engine.trainer import Trainer, TrainingInterrupted, TrainingStopped
    # importing Paddle installed its own C-level SIGTERM handler: put ours back, then let a held
    # SIGTERM through to it
    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGTERM))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        if received:
            raise TrainingInterrupted(f"stopped by {signal.Signals(received[0]).name} before training began; "
                                      "start again with the same command", received[0])
        trainer = Trainer(cfg, resume=args.resume, device=device, force=args.force,
                          allow_config_change=args.allow_config_change, resume_hint=resume_hint)
        if received:  # arrived while the trainer was being built: it stops before its first step
            trainer.request_stop(received[0])
        results = trainer.run()
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum  # 143 for SIGTERM, as a shell reports a process it terminated
    except TrainingStopped as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except MemoryError:
        print("error: out of memory: lower stages.N.batch_size or the stage size", file=sys.stderr)
        return 3
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower() or "ResourceExhausted" in str(exc):
            print("error: out of memory: lower stages.N.batch_size or the stage size", file=sys.stderr)
            return 3
        raise
    import paddle.distributed as dist
    if dist.get_rank() == 0:
        for r in results:
            if not r.validated:
                print(f"stage {r.stage}: not validated; best = last iteration {r.last_iter} -> {r.best_dir}")
                continue
            print(f"stage {r.stage}: best mIoU {r.best_miou:.4f} (leaderboard scoring) at iter {r.best_iter} "
                  f"(ran {r.last_iter}{', stopped early' if r.stopped_early else ''}) -> {r.best_dir}")
    return 0


def cmd_visualdl(args, argv) -> int:
    from pathlib import Path
    from paddle_lane.core.procs import run_server
    exe = Path(sys.executable).with_name("visualdl")  # the console script installed beside this Python
    if not exe.exists():
        raise FileNotFoundError(f"visualdl not found beside {sys.executable}; run ./run.sh setup")
    print(f"VisualDL on http://{args.host}:{args.port} (logs: {args.logdir})", flush=True)
    # --language: VisualDL 2.5.3 fails (500) on clients that send no Accept-Language unless set;
    # --disable-telemetry: nothing leaves this machine
    try:
        return run_server([str(exe), "--logdir", args.logdir, "--host", args.host, "--port", str(args.port),
                           "--language", args.language, "--disable-telemetry"], "VisualDL", args.host, args.port)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_demo(args, argv) -> int:
    from paddle_lane.cli.demo import DEMO_CONFIG, run_demo
    return run_demo(args.out, args.config or DEMO_CONFIG, args.opts)


TTA_CHOICES = ("flip", "none")


def _tta_flip(args):
    """--tta flip | none (default: infer.flip of the config); anything else is an error."""
    if args.tta is None:
        return None
    given = [t.strip() for t in args.tta.split(",") if t.strip()]
    bad = [t for t in given if t not in TTA_CHOICES]
    if bad or not given:
        raise UserError(f"--tta {args.tta!r}: unknown value {bad[0] if bad else ''!r}; choose from {list(TTA_CHOICES)}")
    return "flip" in given


def cmd_infer(args, argv) -> int:
    from paddle_lane.cli.commands import finish_sharded, run_infer
    if not args.images and not args.list:
        raise UserError("infer needs --images DIR or --list CSV")
    gpus = parse_gpus(args.gpus)
    if gpus:
        _check_gpus(gpus, args.device)
    if args.nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {args.nproc}")
    sharded = len(gpus) > 1 or args.nproc > 1
    if not os.environ.get("PADDLE_LANE_LAUNCHED"):  # shards run under their launcher's lock
        from paddle_lane.core.folder_lock import hold_folder
        hold_folder(args.out, "infer")
    if sharded and not os.environ.get("PADDLE_LANE_LAUNCHED"):
        # one process per card (or CPU slot), each predicting its share of the images into the same
        # folder (resumable as one run); the zip and the validation follow once all are done
        from pathlib import Path
        Path(args.out).mkdir(parents=True, exist_ok=True)
        rc = _launch_distributed(args, argv, log_dir=str(Path(args.out).parent / f".{Path(args.out).name}.launch_logs"))
        return finish_sharded(args.config, args.opts, args.model, args.images, args.list, args.out,
                              args.no_zip, rc)
    shard = None
    if sharded:
        import paddle.distributed as dist
        shard = (dist.ParallelEnv().rank, dist.ParallelEnv().world_size)
    device = f"gpu:{gpus[0]}" if len(gpus) == 1 else ("gpu" if gpus else args.device)
    return run_infer(args.config, args.opts, checkpoints=args.model, weights=args.weights,
                     images_dir=args.images, list_csv=args.list, out=args.out, tta_flip=_tta_flip(args),
                     scales=args.scales, overlay=args.overlay, no_zip=args.no_zip, device=device,
                     overwrite=args.overwrite, member_configs=args.member_configs, backend=args.backend,
                     shard=shard)


def cmd_export(args, argv) -> int:
    from paddle_lane.cli.commands import parse_floats, split_list
    from paddle_lane.deploy.export import export_model, format_export
    cfg = load_config(args.config, args.opts)
    configs = split_list(args.member_configs) or None
    info = export_model(cfg, split_list(args.model), parse_floats(args.weights, "weights"), flip=_tta_flip(args),
                        formats=args.format, out=args.out, member_configs=configs, samples=split_list(args.sample),
                        force=args.force, quantize=args.quantize, calib=args.calib, calib_frames=args.calib_frames,
                        calib_method=args.calib_method, max_drop=args.max_drop)
    print(format_export(info, args.out))
    return 0


def _serve_settings(args):
    from paddle_lane.serve.settings import ServeSettings
    return ServeSettings(model=args.model, backend=args.backend, redis=getattr(args, "redis", None),
                         max_batch=args.max_batch, max_wait_ms=getattr(args, "max_wait_ms", 5.0),
                         max_queue=getattr(args, "max_queue", 64), timeout_s=getattr(args, "timeout_s", 30.0),
                         max_upload_mb=getattr(args, "max_upload_mb", 20.0), threads=args.threads,
                         claim_idle_ms=getattr(args, "claim_idle_ms", 15000))


def cmd_report(args, argv) -> int:
    from paddle_lane.evaluation.report import build_report
    res = build_report(args.pred, args.gt, args.out, images=args.images, run=args.run, scheme_name=args.scheme,
                       k=args.worst, workers=args.threads)
    print(f"report: {res['out']} ({res['frames']} frames, {res['figures']} figures, {res['bytes'] / 1e6:.1f} MB; "
          f"mIoU {res['miou']:.4f})")
    return 0


def cmd_compare(args, argv) -> int:
    from paddle_lane.evaluation.compare import bootstrap, format_comparison, paired_frames
    from paddle_lane.evaluation.scorer import score_folders
    if len(args.pred) != 2:
        raise UserError(f"compare needs exactly two --pred folders (A then B), got {len(args.pred)}")
    reports = [score_folders(p, args.gt, args.scheme, workers=args.threads) for p in args.pred]
    conf_a, conf_b, _ = paired_frames(*reports)
    res = bootstrap(conf_a, conf_b, args.n, args.seed, reports[0].results["lane_classes"])
    print(format_comparison(res, reports[0].class_names, args.pred[0], args.pred[1]))
    if args.json:
        from paddle_lane.core.io_utils import atomic_write_json
        atomic_write_json(args.json, res)
    return 0


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


def cmd_check_submission(args, argv) -> int:
    from paddle_lane.cli.commands import run_check_submission
    return run_check_submission(args.out, args.images or args.list, args.config, args.opts)


def cmd_video(args, argv) -> int:
    from paddle_lane.cli.commands import run_video
    return run_video(args.config, args.opts, args.model, args.input, args.out, args.device, backend=args.backend)


def cmd_evaluate(args, argv) -> int:
    from paddle_lane.cli.commands import run_evaluate
    return run_evaluate(args.pred, args.gt, args.scheme, args.threads, args.report, allow_partial=args.allow_partial)


def cmd_doctor(args, argv) -> int:
    from paddle_lane.cli.doctor import run_doctor
    return run_doctor(args.scheme)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paddle-lane", description=__doc__, epilog=EPILOG)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of every error (also PADDLE_LANE_DEBUG=1)")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("prepare", help="scan, validate, measure, clean and split a raw Apollo tree")
    p.add_argument("--data-root", required=True, help="root of the raw dataset (Road0X/..., Gray_Label/...)")
    p.add_argument("--out", required=True, help="folder for train.csv, val.csv, stats.json, problems.csv")
    p.add_argument("--test-dir", help="folder of unlabeled test images (written to test.csv)")
    p.add_argument("--workers", type=int, help="worker processes (default: prepare.workers)")
    p.add_argument("--cache", action="store_true", help="also write the resized cache for every stage size")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="staged training (all stages of the config)")
    _add_config_args(p, required=True)
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint of the run")
    p.add_argument("--force", action="store_true",
                   help="train.output_dir holds a run: move it aside (<dir>.old-<time>) and start afresh")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept plan changes (more iterations, new stages, validation/checkpoint cadence)")
    p.add_argument("--gpus", help="GPU card id(s): one id (e.g. 3) trains on that card, "
                   "several (e.g. 0,1,2,3) launch multi-card training")
    p.add_argument("--nproc", type=int, default=1, help="processes per machine (CPU multi-process)")
    p.add_argument("--ips", help="comma-separated machine IPs for multi-machine training")
    p.add_argument("--device", choices=["cpu", "gpu"], help="force a device (default: GPU if available)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="synthetic data -> prepare -> train -> infer -> evaluate (CPU, minutes)")
    p.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    _add_config_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("infer", help="predict full-size submission PNGs (TTA, ensembles)")
    _add_config_args(p)
    p.add_argument("--model", "--checkpoint", dest="model", required=True,
                   help="checkpoint folder(s) or .pdparams, comma-separated for an ensemble; or an export folder "
                        "(paddle-lane export), which needs no --config")
    p.add_argument("--backend", choices=BACKENDS,
                   help="an export folder's default: onnxruntime on CPU, paddle-inference on GPU; checkpoints: dygraph, "
                        "or onnxruntime / paddle-inference through an export made once and cached")
    p.add_argument("--gpus", help="card id(s); several (e.g. 0,1) shard the images over one process per card")
    p.add_argument("--nproc", type=int, default=1, help="processes sharing the images (CPU), via paddle.distributed.launch")
    p.add_argument("--weights", help="ensemble weights, comma-separated (default: equal)")
    p.add_argument("--member-configs", help="config per checkpoint, comma-separated (default: each run's config.yml)")
    p.add_argument("--images", help="folder of test images (searched recursively)")
    p.add_argument("--list", help="a prepare list CSV (test.csv / val.csv) instead of --images")
    p.add_argument("--out", required=True, help="submission folder, e.g. submissions/NAME")
    p.add_argument("--tta", help="test-time augmentation: 'flip' or 'none' (default: infer.flip of the config)")
    p.add_argument("--scales", help="TTA scales, e.g. 0.75,1,1.25 (default: infer.scales)")
    p.add_argument("--overlay", action="store_true", help="also write coloured overlays for inspection")
    p.add_argument("--no-zip", action="store_true", help="do not write the zip")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds another model's submission: move it aside and start over")
    p.add_argument("--device", choices=["cpu", "gpu"])
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("check-submission", aliases=["validate"],
                       help="check a submission folder (count, names, size, dtype, ids)")
    p.add_argument("--out", required=True, help="submission folder")
    p.add_argument("--images", help="folder of the test images the submission answers")
    p.add_argument("--list", help="or a list CSV of them")
    _add_config_args(p)
    p.set_defaults(func=cmd_check_submission)

    p = sub.add_parser("video", help="overlay predictions on a road video, frame by frame")
    _add_config_args(p)
    p.add_argument("--model", "--checkpoint", dest="model", required=True, help="checkpoint(s), or an export folder")
    p.add_argument("--backend", choices=BACKENDS, help="for an export folder")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", choices=["cpu", "gpu"])
    p.set_defaults(func=cmd_video)

    p = sub.add_parser("evaluate", help="leaderboard scoring of a prediction folder against ground truth")
    p.add_argument("--pred", required=True, help="folder of predicted id PNGs")
    p.add_argument("--gt", required=True, help="folder of ground-truth label PNGs, or a list CSV with a label column")
    _add_scoring_args(p)
    p.add_argument("--report", help="folder for scores.csv / scores.json (default: the --pred folder)")
    p.add_argument("--allow-partial", action="store_true",
                   help="exit 0 even when predictions are missing, unreadable or the wrong size "
                        "(they are scored as all background either way)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="checkpoint(s) -> a self-checked export folder (ONNX and/or Paddle static graph)")
    _add_config_args(p, required=True)
    p.add_argument("--model", "--checkpoint", dest="model", required=True,
                   help="checkpoint(s), comma-separated for an ensemble")
    p.add_argument("--weights", help="ensemble weights, comma-separated (default: equal)")
    p.add_argument("--member-configs", help="config per checkpoint, comma-separated (default: each run's config.yml)")
    p.add_argument("--tta", help="'flip' or 'none': recorded in deploy.yml as the served default")
    p.add_argument("--format", default="both", choices=["onnx", "paddle", "both"])
    p.add_argument("--sample", help="image(s) the self-check predicts, comma-separated (default: a synthetic frame)")
    p.add_argument("--out", required=True, help="export folder")
    p.add_argument("--force", action="store_true", help="--out is not empty: move it aside and export afresh")
    p.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx per member (CPU serving: "
                   "--backend onnxruntime-int8), calibrated on real frames and checked against the labels")
    p.add_argument("--calib", help="calibration frames: a prepare list with labels, or a dataset folder "
                   "(default: data.lists_dir/val.csv)")
    p.add_argument("--calib-frames", type=int, default=8, help="frames to calibrate on (as many again are held out)")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="refuse an INT8 graph whose mIoU (8 classes) is lower than dygraph's by more than this")
    p.set_defaults(func=cmd_export)

    def serving_args(p, batch_default):
        p.add_argument("--model", required=True, help="export folder (paddle-lane export)")
        p.add_argument("--backend", choices=BACKENDS, help="default: onnxruntime on CPU, paddle-inference on GPU")
        p.add_argument("--max-batch", type=int, default=batch_default,
                       help="requests per forward pass (0: 4 on a GPU, 1 on a CPU, where batching measured slower)")
        p.add_argument("--threads", type=int, default=0, help="backend threads per process (0: its default)")

    p = sub.add_parser("serve", help="HTTP API for an export (gunicorn + uvicorn workers; Redis scale-out)")
    serving_args(p, 0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each a model replica, unless --redis)")
    p.add_argument("--redis", help="redis://HOST:PORT/DB: queue requests for `paddle-lane worker` processes")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503 (Redis: stream length)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="answer time before 504")
    p.add_argument("--max-upload-mb", type=float, default=20.0)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="model worker for `serve --redis` (run any number, on any machine)")
    serving_args(p, 0)
    p.add_argument("--redis", required=True, help="redis://HOST:PORT/DB")
    p.add_argument("--claim-idle-ms", type=int, default=15000,
                   help="take over requests pending this long on a worker that stopped answering")
    p.set_defaults(func=cmd_worker)

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
    _add_config_args(p)
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("report", help="error analysis of a submission: one self-contained HTML file")
    p.add_argument("--pred", required=True, help="folder of predicted id PNGs")
    p.add_argument("--gt", required=True, help="folder of ground-truth label PNGs")
    p.add_argument("--images", help="folder of the input images (for the worst-frame panels)")
    p.add_argument("--run", help="training run folder (metrics.jsonl, train_log.jsonl) for the curves")
    p.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    p.add_argument("--worst", type=int, default=6, help="how many worst frames to show")
    _add_scoring_args(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="paired bootstrap: is B's gain over A real?")
    p.add_argument("--pred", action="append", required=True, help="prediction folder; give it twice (A, then B)")
    p.add_argument("--gt", required=True, help="folder of ground-truth label PNGs")
    p.add_argument("--n", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    _add_scoring_args(p)
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("visualdl", help="serve the VisualDL UI for a run")
    p.add_argument("--logdir", default="runs", help="folder with VisualDL logs (a run's vdl/ or a parent)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8040)
    p.add_argument("--language", default="en", choices=["en", "zh"])
    p.set_defaults(func=cmd_visualdl)

    p = sub.add_parser("doctor", help="check this installation: backends import, package data, one forward pass each")
    p.add_argument("--scheme", default="apollo8", help="label scheme to load")
    p.set_defaults(func=cmd_doctor)
    return parser


def debug_requested(args) -> bool:
    """--debug on the command line, or PADDLE_LANE_DEBUG set to anything but '' / '0'."""
    return args.debug or os.environ.get("PADDLE_LANE_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("PADDLE_LANE_LAUNCHED") and os.environ.get("PADDLE_TRAINER_ID") is not None:
        from paddle_lane.core.procs import die_with_parent
        die_with_parent()  # a rank dies with paddle.distributed.launch, however that ends
    args = build_parser().parse_args(argv)
    for note in renamed_notes(argv):
        print(note, file=sys.stderr)
    debug = debug_requested(args)
    if args.verb != "train":  # only training turns SIGTERM into a checkpoint; elsewhere it ends the process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        return args.func(args, argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        # user mistakes: config values (ConfigError), UserError, the plain ValueErrors the modules
        # raise on bad input, and files that are missing or cannot be written
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: the traceback is what a report needs
        traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc} (please report it with the traceback above; "
              "--debug also shows tracebacks for one-line errors)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
