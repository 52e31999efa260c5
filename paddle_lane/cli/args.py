"""Argument definitions and parsing that several verbs share."""
from __future__ import annotations

import argparse

from paddle_lane.core.errors import UserError

TTA_CHOICES = ("flip", "none")


def add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", required=required, help="YAML config (with _base_ inheritance)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.seed=1 stages.0.batch_size=4")


def add_scoring_args(p: argparse.ArgumentParser) -> None:
    """The scoring verbs take no config, so the scheme is a flag here (data.scheme elsewhere)."""
    p.add_argument("--scheme", default="apollo8", help="label scheme (data.scheme of the verbs that take a config)")
    p.add_argument("--threads", "--workers", dest="threads", type=int, default=2,
                   help="threads reading and scoring PNGs (--workers always counts processes)")


def add_device_args(p: argparse.ArgumentParser, gpus_help: str, nproc_help: str) -> None:
    p.add_argument("--gpus", help=gpus_help)
    p.add_argument("--nproc", type=int, default=1, help=nproc_help)
    p.add_argument("--device", choices=["cpu", "gpu"], help="force a device (default: GPU if available)")


def tta_flip(args) -> bool | None:
    """--tta flip | none (default: infer.flip of the config); anything else is an error."""
    if args.tta is None:
        return None
    given = [t.strip() for t in args.tta.split(",") if t.strip()]
    bad = [t for t in given if t not in TTA_CHOICES]
    if bad or not given:
        raise UserError(f"--tta {args.tta!r}: unknown value {bad[0] if bad else ''!r}; choose from {list(TTA_CHOICES)}")
    return "flip" in given
