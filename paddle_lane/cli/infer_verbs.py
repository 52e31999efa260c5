"""Verbs that use a model: infer, check-submission, video, export."""
from __future__ import annotations

import os

from paddle_lane.cli.args import add_config_args, add_device_args, tta_flip
from paddle_lane.cli.launch import check_gpus, launch_distributed, parse_gpus
from paddle_lane.config import load_config
from paddle_lane.core.errors import UserError
from paddle_lane.inference.export_folder import BACKENDS


def _add_infer(sub) -> None:
    p = sub.add_parser("infer", help="predict full-size submission PNGs (TTA, ensembles)")
    add_config_args(p)
    p.add_argument("--model", "--checkpoint", dest="model", required=True,
                   help="checkpoint folder(s) or .pdparams, comma-separated for an ensemble; or an export folder "
                        "(paddle-lane export), which needs no --config")
    p.add_argument("--backend", choices=BACKENDS,
                   help="an export folder's default: onnxruntime on CPU, paddle-inference on GPU; checkpoints: dygraph, "
                        "or onnxruntime / paddle-inference through an export made once and cached")
    add_device_args(p, "card id(s); several (e.g. 0,1) shard the images over one process per card",
                    "processes sharing the images (CPU), via paddle.distributed.launch")
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
    p.set_defaults(func=cmd_infer)


def _add_check_submission(sub) -> None:
    p = sub.add_parser("check-submission", aliases=["validate"],
                       help="check a submission folder (count, names, size, dtype, ids)")
    p.add_argument("--out", required=True, help="submission folder")
    p.add_argument("--images", help="folder of the test images the submission answers")
    p.add_argument("--list", help="or a list CSV of them")
    add_config_args(p)
    p.set_defaults(func=cmd_check_submission)


def _add_video(sub) -> None:
    p = sub.add_parser("video", help="overlay predictions on a road video, frame by frame")
    add_config_args(p)
    p.add_argument("--model", "--checkpoint", dest="model", required=True, help="checkpoint(s), or an export folder")
    p.add_argument("--backend", choices=BACKENDS, help="for an export folder")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", choices=["cpu", "gpu"])
    p.set_defaults(func=cmd_video)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="checkpoint(s) -> a self-checked export folder (ONNX and/or Paddle static graph)")
    add_config_args(p, required=True)
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


def cmd_infer(args, argv) -> int:
    from paddle_lane.cli.commands import finish_sharded, run_infer
    if not args.images and not args.list:
        raise UserError("infer needs --images DIR or --list CSV")
    gpus = parse_gpus(args.gpus)
    if gpus:
        check_gpus(gpus, args.device)
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
        rc = launch_distributed(args, argv, log_dir=str(Path(args.out).parent / f".{Path(args.out).name}.launch_logs"))
        return finish_sharded(args.config, args.opts, args.model, args.images, args.list, args.out,
                              args.no_zip, rc)
    shard = None
    if sharded:
        import paddle.distributed as dist
        shard = (dist.ParallelEnv().rank, dist.ParallelEnv().world_size)
    device = f"gpu:{gpus[0]}" if len(gpus) == 1 else ("gpu" if gpus else args.device)
    return run_infer(args.config, args.opts, checkpoints=args.model, weights=args.weights,
                     images_dir=args.images, list_csv=args.list, out=args.out, tta_flip=tta_flip(args),
                     scales=args.scales, overlay=args.overlay, no_zip=args.no_zip, device=device,
                     overwrite=args.overwrite, member_configs=args.member_configs, backend=args.backend,
                     shard=shard)


def cmd_check_submission(args, argv) -> int:
    from paddle_lane.cli.commands import run_check_submission
    return run_check_submission(args.out, args.images or args.list, args.config, args.opts)


def cmd_video(args, argv) -> int:
    from paddle_lane.cli.commands import run_video
    return run_video(args.config, args.opts, args.model, args.input, args.out, args.device, backend=args.backend)


def cmd_export(args, argv) -> int:
    from paddle_lane.cli.commands import parse_floats, split_list
    from paddle_lane.deploy.export import export_model, format_export
    cfg = load_config(args.config, args.opts)
    configs = split_list(args.member_configs) or None
    info = export_model(cfg, split_list(args.model), parse_floats(args.weights, "weights"), flip=tta_flip(args),
                        formats=args.format, out=args.out, member_configs=configs, samples=split_list(args.sample),
                        force=args.force, quantize=args.quantize, calib=args.calib, calib_frames=args.calib_frames,
                        calib_method=args.calib_method, max_drop=args.max_drop)
    print(format_export(info, args.out))
    return 0


# the verbs' parsers, in the order of `paddle-lane --help`
PARSERS = (_add_infer, _add_check_submission, _add_video, _add_export)
