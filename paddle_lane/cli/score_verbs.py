"""Verbs that score predictions: evaluate, report, compare."""
from __future__ import annotations

from paddle_lane.cli.args import add_scoring_args
from paddle_lane.core.errors import UserError


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="leaderboard scoring of a prediction folder against ground truth")
    p.add_argument("--pred", required=True, help="folder of predicted id PNGs")
    p.add_argument("--gt", required=True, help="folder of ground-truth label PNGs, or a list CSV with a label column")
    add_scoring_args(p)
    p.add_argument("--report", help="folder for scores.csv / scores.json (default: the --pred folder)")
    p.add_argument("--allow-partial", action="store_true",
                   help="exit 0 even when predictions are missing, unreadable or the wrong size "
                        "(they are scored as all background either way)")
    p.set_defaults(func=cmd_evaluate)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="error analysis of a submission: one self-contained HTML file")
    p.add_argument("--pred", required=True, help="folder of predicted id PNGs")
    p.add_argument("--gt", required=True, help="folder of ground-truth label PNGs")
    p.add_argument("--images", help="folder of the input images (for the worst-frame panels)")
    p.add_argument("--run", help="training run folder (metrics.jsonl, train_log.jsonl) for the curves")
    p.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    p.add_argument("--worst", type=int, default=6, help="how many worst frames to show")
    add_scoring_args(p)
    p.set_defaults(func=cmd_report)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="paired bootstrap: is B's gain over A real?")
    p.add_argument("--pred", action="append", required=True, help="prediction folder; give it twice (A, then B)")
    p.add_argument("--gt", required=True, help="folder of ground-truth label PNGs")
    p.add_argument("--n", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    add_scoring_args(p)
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.set_defaults(func=cmd_compare)


def cmd_evaluate(args, argv) -> int:
    from paddle_lane.cli.commands import run_evaluate
    return run_evaluate(args.pred, args.gt, args.scheme, args.threads, args.report, allow_partial=args.allow_partial)


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


# the verbs' parsers, in the order of `paddle-lane --help`
PARSERS = (_add_evaluate, _add_report, _add_compare)
