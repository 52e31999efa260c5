"""`compare`'s paired bootstrap: the vectorised form (multinomial frame multiplicities, one matrix
product per chunk of resamples) against a plain loop that sums the drawn frames' confusions per
resample, in one run; prints both times and the ratio.

    .venv/bin/python bench/bench_compare.py [--frames 1000] [--resamples 2000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paddle_lane.core.metrics import iou_parts, mean_iou  # noqa: E402
from paddle_lane.evaluation.compare import bootstrap  # noqa: E402


def loop_bootstrap(conf_a, conf_b, n_boot, seed):
    """The baseline: draw frame indices, sum their matrices, score, once per resample."""
    rng = np.random.default_rng(seed)
    f = len(conf_a)
    deltas = []
    for _ in range(n_boot):
        idx = rng.integers(0, f, f)
        a = mean_iou(iou_parts(conf_a[idx].sum(axis=0))["iou"])
        b = mean_iou(iou_parts(conf_b[idx].sum(axis=0))["iou"])
        deltas.append(b - a)
    return np.percentile(deltas, [2.5, 97.5])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    n = 8
    conf_a = rng.integers(0, 2000, size=(args.frames, n, n))
    conf_a[:, np.arange(n), np.arange(n)] += rng.integers(5_000, 500_000, size=(args.frames, n))
    conf_b = conf_a.copy()
    conf_b[:, 1, 1] += 300
    t0 = time.perf_counter()
    res = bootstrap(conf_a, conf_b, args.resamples, seed=0)
    fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ci = loop_bootstrap(conf_a, conf_b, args.resamples, seed=0)
    slow = time.perf_counter() - t0
    print(f"{args.resamples} resamples over {args.frames} frames x {n} classes")
    print(f"vectorised bootstrap: {fast:.2f} s (mIoU delta 95 % interval {res['miou']['ci95'][0]:+.5f} .. "
          f"{res['miou']['ci95'][1]:+.5f})")
    print(f"loop over resamples:  {slow:.2f} s (interval {ci[0]:+.5f} .. {ci[1]:+.5f})")
    print(f"ratio: {slow / fast:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
