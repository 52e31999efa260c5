"""`paddle-lane VERB ...`: the command line behind run.sh. Each verb is a small function
that parses its arguments and calls one module; errors print one line and exit 2."""
from __future__ import annotations

import argparse
import sys

from paddle_lane.config import ConfigError, load_config

EPILOG = "Run `paddle-lane VERB --help` for a verb's options."


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", required=required, help="YAML config (with _base_ inheritance)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.seed=1 stages.0.batch_size=4")


def cmd_prepare(args) -> int:
    from data_prep.prepare import prepare, summary_table
    cfg = load_config(args.config, args.opts)
    if args.cache:
        cfg.prepare.cache = True
    res = prepare(args.data_root, args.out, cfg, workers=args.workers, test_dir=args.test_dir)
    print(summary_table(res))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paddle-lane", description=__doc__, epilog=EPILOG)
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("prepare", help="scan, validate, measure, clean and split a raw Apollo tree")
    p.add_argument("--data-root", required=True, help="root of the raw dataset (Road0X/..., Gray_Label/...)")
    p.add_argument("--out", required=True, help="folder for train.csv, val.csv, stats.json, problems.csv")
    p.add_argument("--test-dir", help="folder of unlabeled test images (written to test.csv)")
    p.add_argument("--workers", type=int, help="worker processes (default: prepare.workers)")
    p.add_argument("--cache", action="store_true", help="also write the resized cache for every stage size")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
