"""Which rule should resize training labels? Measured on the real frames, all rules in one run:

- `cv2-nearest` (the baseline: plain cv2.INTER_NEAREST, the old default, top-left sampling),
- `nearest` (cv2.INTER_NEAREST_EXACT, the source pixel under each target pixel's centre),
- `vote` (largest area share of each target pixel's source block).

For each stage size: the label ceiling (a model that reproduces its training labels exactly,
sent through the shipped full-size post-processing and scored like the leaderboard) with its
best x/y shift; thin-lane survival (share of full-size lane markings, i.e. connected components
of one lane class, that keep at least one pixel of their class at the stage size); class
frequency bias (stage-size share of each lane class over its full-size share, 1 = unbiased);
and the time per frame of each rule.

    .venv/bin/python bench/bench_label_resize.py [--frames 30] [--sizes 768x256,1024x384,1536x512]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = ROOT.parent / "shared" / "apollo_dev"

from paddle_lane.core.label_io import read_label  # noqa: E402
from paddle_lane.core.labels import apply_lut, load_scheme  # noqa: E402
from paddle_lane.core.resize import LABEL_RESIZE_RULES, crop_top, resize_label  # noqa: E402
from paddle_lane.inference.alignment import labels_to_ids, score_shifts  # noqa: E402

OFFSET = 690


def cv2_nearest(train_ids: np.ndarray, size) -> np.ndarray:
    """The baseline: the old default (cv2.INTER_NEAREST samples each block's top-left)."""
    return cv2.resize(train_ids, size, interpolation=cv2.INTER_NEAREST)


def rules() -> dict:
    out = {"cv2-nearest": cv2_nearest}
    out.update({r: (lambda t, s, r=r: resize_label(t, s, r)) for r in LABEL_RESIZE_RULES})
    return out


def survival(crop: np.ndarray, small: np.ndarray, classes: range) -> tuple[int, int]:
    """(markings kept, markings) over the lane classes of one frame."""
    up = cv2.resize(small, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    kept = total = 0
    for c in classes:
        mask = (crop == c).astype(np.uint8)
        n, comp = cv2.connectedComponents(mask, connectivity=8)
        if n <= 1:
            continue
        hit = np.bincount(comp[(up == c) & (mask > 0)], minlength=n)[1:]
        kept += int((hit > 0).sum())
        total += n - 1
    return kept, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--sizes", default="768x256,1024x384,1536x512")
    args = ap.parse_args()
    if not (REAL / "pairs.csv").exists():
        sys.exit(f"real data not found at {REAL}: this benchmark needs the real frames")
    labels = [str(REAL / p) for p in pd.read_csv(REAL / "pairs.csv")["label"]][: args.frames]
    scheme = load_scheme("apollo8")
    lut = scheme.train_lut("background")
    frames = [(ids, np.ascontiguousarray(crop_top(apply_lut(ids, lut), OFFSET)))
              for ids in map(read_label, labels)]
    lanes = range(1, scheme.num_classes)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows = []
    for size in sizes:
        for name, fn in rules().items():
            smalls, seconds = [], 0.0
            for _, crop in frames:
                t = time.perf_counter()
                smalls.append(fn(crop, size))
                seconds += time.perf_counter() - t
            full_size = (frames[0][0].shape[1], frames[0][0].shape[0])
            ceil = score_shifts(((labels_to_ids(s, OFFSET, full_size, scheme), ids)
                                 for s, (ids, _) in zip(smalls, frames)), scheme, range(-3, 4))
            kept = total = 0
            full_px = np.zeros(scheme.num_classes)
            small_px = np.zeros(scheme.num_classes)
            for s, (_, crop) in zip(smalls, frames):
                k, t_ = survival(crop, s, lanes)
                kept, total = kept + k, total + t_
                full_px += np.bincount(crop.ravel(), minlength=256)[: scheme.num_classes]
                small_px += np.bincount(s.ravel(), minlength=256)[: scheme.num_classes]
            bias = (small_px / small_px.sum()) / np.maximum(full_px / full_px.sum(), 1e-12)
            rows.append({"size": f"{size[0]}x{size[1]}", "rule": name, "miou": ceil["miou"],
                         "miou_lanes": ceil["miou_lanes"], "best_dx": ceil["best_dx"], "best_dy": ceil["best_dy"],
                         "survival": kept / max(total, 1), "markings": total,
                         "freq_bias_min": float(bias[1:][full_px[1:] > 0].min()),
                         "freq_bias_max": float(bias[1:][full_px[1:] > 0].max()),
                         "ms_per_frame": 1000 * seconds / len(frames)})
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for size in df["size"].unique():
        part = df[df["size"] == size].set_index("rule")
        base = part.loc["cv2-nearest"]
        for r in LABEL_RESIZE_RULES:
            print(f"RESULT {size} {r}: ceiling {part.loc[r, 'miou']:.4f} vs baseline {base['miou']:.4f} "
                  f"({part.loc[r, 'miou'] - base['miou']:+.4f}), best shift ({part.loc[r, 'best_dx']},"
                  f"{part.loc[r, 'best_dy']}) vs ({base['best_dx']},{base['best_dy']}), "
                  f"time {part.loc[r, 'ms_per_frame'] / base['ms_per_frame']:.1f}x baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
