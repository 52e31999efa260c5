"""Verbs that make a model: prepare, train, demo, visualdl."""
from __future__ import annotations

import os
import signal
import sys

from paddle_lane.cli.args import add_config_args, add_device_args
from paddle_lane.cli.launch import check_gpus, launch_distributed, parse_gpus
from paddle_lane.config import load_config


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="scan, validate, measure, clean and split a raw Apollo tree")
    p.add_argument("--data-root", required=True, help="root of the raw dataset (Road0X/..., Gray_Label/...)")
    p.add_argument("--out", required=True, help="folder for train.csv, val.csv, stats.json, problems.csv")
    p.add_argument("--test-dir", help="folder of unlabeled test images (written to test.csv)")
    p.add_argument("--workers", type=int, help="worker processes (default: prepare.workers)")
    p.add_argument("--cache", action="store_true", help="also write the resized cache for every stage size")
    add_config_args(p)
    p.set_defaults(func=cmd_prepare)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="staged training (all stages of the config)")
    add_config_args(p, required=True)
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint of the run")
    p.add_argument("--force", action="store_true",
                   help="train.output_dir holds a run: move it aside (<dir>.old-<time>) and start afresh")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept plan changes (more iterations, new stages, validation/checkpoint cadence)")
    add_device_args(p, "GPU card id(s): one id (e.g. 3) trains on that card, "
                       "several (e.g. 0,1,2,3) launch multi-card training",
                    "processes per machine (CPU multi-process)")
    p.add_argument("--ips", help="comma-separated machine IPs for multi-machine training")
    p.set_defaults(func=cmd_train)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthetic data -> prepare -> train -> infer -> evaluate (CPU, minutes)")
    p.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    add_config_args(p)
    p.set_defaults(func=cmd_demo)


def _add_visualdl(sub) -> None:
    p = sub.add_parser("visualdl", help="serve the VisualDL UI for a run")
    p.add_argument("--logdir", default="runs", help="folder with VisualDL logs (a run's vdl/ or a parent)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8040)
    p.add_argument("--language", default="en", choices=["en", "zh"])
    p.set_defaults(func=cmd_visualdl)


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


def resume_command(argv: list[str]) -> str:
    """The command that continues this training run: the user's own, with --resume."""
    import shlex
    prog = os.environ.get("PADDLE_LANE_PROG", "paddle-lane")
    rest = argv[argv.index("train") + 1:] if "train" in argv else argv
    return shlex.join([prog, "train", "--resume", *[a for a in rest if a not in ("--resume", "--force")]])


def cmd_train(args, argv: list[str]) -> int:
    received: list[int] = []  # a SIGTERM before the trainer takes over is noted, then honoured

    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        cfg = load_config(args.config, args.opts)  # fail on config errors before Paddle is imported
        gpus = parse_gpus(args.gpus)
        if gpus:
            check_gpus(gpus, args.device)
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
            return launch_distributed(args, argv, resume_hint=resume_hint, run_dir=cfg.train.output_dir)
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


# the verbs' parsers, in the order of `paddle-lane --help`
PARSERS = (_add_prepare, _add_train, _add_demo, _add_visualdl)
