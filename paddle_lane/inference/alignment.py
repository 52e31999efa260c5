"""Resolution ceiling and alignment check: the score a perfect model would get after the
round trip through a stage size, and whether shifting the output would help.

A perfect model's probabilities are the one-hot ground truth of the cropped area,
area-averaged down to the stage size. They go back to full size through exactly the
post-processing inference uses (probs_to_ids: bilinear up, argmax, decode), and are
scored like a submission. If the geometry is right, the best shift is 0 (no 4-pixel hack).

The label half: a model that reproduces its stage-size training labels exactly (as the
cache or the on-the-fly loader makes them with `data.label_resize`) sent through the same
post-processing. Labels resized off-centre show up here as a best shift other than 0.

    python -m paddle_lane.inference.alignment --data ../shared/apollo_dev --frames 30
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from paddle_lane.core.label_io import read_label
from paddle_lane.core.labels import Scheme, apply_lut, load_scheme
from paddle_lane.core.metrics import SegMetric, packed_confusion, pair_code_lut
from paddle_lane.core.resize import CROP_OFFSET, LABEL_RESIZE_RULES, crop_top, resize_label
from paddle_lane.inference.geometry import probs_to_ids

MODES = ("area", "nearest") + tuple(f"label-{rule}" for rule in LABEL_RESIZE_RULES)


def perfect_probs(train_crop: np.ndarray, size: tuple[int, int], num_classes: int) -> np.ndarray:
    """CxHxW float32: each class's one-hot plane area-averaged to size (w, h)."""
    planes = [cv2.resize((train_crop == c).astype(np.float32), size, interpolation=cv2.INTER_AREA)
              for c in range(num_classes)]
    return np.stack(planes)


def one_hot(train_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """CxHxW float32 one-hot planes of a train-id map (ignore values get no plane)."""
    return np.stack([(train_ids == c).astype(np.float32) for c in range(num_classes)])


def labels_to_ids(stage_labels: np.ndarray, offset: int, full_size: tuple[int, int], scheme: Scheme) -> np.ndarray:
    """Full-size Apollo ids of a model that outputs exactly these stage-size training labels."""
    return probs_to_ids(one_hot(stage_labels, scheme.num_classes), offset, full_size, scheme)


def round_trip(train_full: np.ndarray, size: tuple[int, int], offset: int, scheme: Scheme, mode: str) -> np.ndarray:
    """Full-size Apollo ids a perfect model yields at `size`.

    'area': area-averaged probabilities back through inference's probs_to_ids.
    'nearest': nearest-neighbour down and up (the winners' pipeline).
    'label-<rule>': the stage-size training label made by resize_label(rule), one-hot, back
    through probs_to_ids (what a model that learned its training labels exactly yields).
    """
    full_size = (train_full.shape[1], train_full.shape[0])
    crop = crop_top(train_full, offset)
    if mode == "area":
        return probs_to_ids(perfect_probs(crop, size, scheme.num_classes), offset, full_size, scheme)
    if mode.startswith("label-") and mode[len("label-"):] in LABEL_RESIZE_RULES:
        return labels_to_ids(resize_label(crop, size, mode[len("label-"):]), offset, full_size, scheme)
    if mode == "nearest":
        small = cv2.resize(crop, size, interpolation=cv2.INTER_NEAREST)
        out = np.zeros_like(train_full)
        out[offset:] = cv2.resize(small, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_NEAREST)
        return scheme.decode(out)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def shifted(pred: np.ndarray, dx: int, dy: int, margin: int) -> np.ndarray:
    """Interior [margin:-margin] of pred moved right by dx and down by dy."""
    h, w = pred.shape
    return pred[margin - dy:h - margin - dy, margin - dx:w - margin - dx]


def _interior(a: np.ndarray, margin: int) -> np.ndarray:
    return a[margin:a.shape[0] - margin, margin:a.shape[1] - margin] if margin else a


def _scores(metric: SegMetric) -> dict:
    r = metric.compute()
    return {"miou": r["miou"], "miou_lanes": r["miou_lanes"]}


def score_shifts(frames: Iterable[tuple[np.ndarray, np.ndarray]], scheme: Scheme,
                 shifts: Iterable[int] = range(-4, 5)) -> dict:
    """Score (full-size predicted Apollo ids, ground-truth Apollo ids) pairs like the leaderboard
    (one confusion over all frames), and the same with the prediction shifted horizontally (dx)
    and vertically (dy) by each shift.

    Shift scores are computed on the interior (a margin of max |shift| pixels) so every shift sees
    the same pixels. Best shifts are chosen by mIoU (8 classes); ties go to the smaller shift."""
    shifts = sorted(set(int(s) for s in shifts) | {0})
    margin = max(abs(s) for s in shifts)
    n, names = scheme.num_classes, scheme.class_names
    total = SegMetric(n, names)
    by_dx = {s: SegMetric(n, names) for s in shifts}
    by_dy = {s: SegMetric(n, names) for s in shifts}
    gt_lut, pred_lut = scheme.eval_lut(), scheme.pred_lut()
    count = 0
    for pred_ids, ids in frames:
        pred = apply_lut(pred_ids, pred_lut)
        gt = apply_lut(ids, gt_lut)
        total.update(pred, gt)
        # packed confusion: 17 shifted scorings a frame need the fast path
        codes = apply_lut(_interior(gt, margin), pair_code_lut(np.arange(256), n))
        for s in shifts:
            by_dx[s].merge(packed_confusion(shifted(pred, s, 0, margin), codes, n))
            if s != 0:
                by_dy[s].merge(packed_confusion(shifted(pred, 0, s, margin), codes, n))
        count += 1
    by_dy[0] = by_dx[0]
    res = total.compute()
    shift_x = {s: _scores(m) for s, m in by_dx.items()}
    shift_y = {s: _scores(m) for s, m in by_dy.items()}
    return {"frames": count, "miou": res["miou"], "miou_lanes": res["miou_lanes"], "per_class": res["per_class"],
            "shift_x": shift_x, "shift_y": shift_y,
            "best_dx": max(shifts, key=lambda s: (shift_x[s]["miou"], -abs(s))),
            "best_dy": max(shifts, key=lambda s: (shift_y[s]["miou"], -abs(s)))}


def resolution_ceiling(label_paths: Sequence[str | Path], size: tuple[int, int], offset: int = CROP_OFFSET,
                       shifts: Iterable[int] = range(-4, 5), mode: str = "area",
                       scheme: Scheme | str = "apollo8") -> dict:
    """mIoU of a perfect model at a stage size over these labels, with its shift curves
    (see round_trip for the modes and score_shifts for the scoring)."""
    scheme = load_scheme(scheme) if isinstance(scheme, str) else scheme
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    train_lut = scheme.train_lut("background")

    def frames():
        for path in label_paths:
            ids = read_label(path)
            yield round_trip(apply_lut(ids, train_lut), size, offset, scheme, mode), ids

    return {"size": list(size), "mode": mode, "offset": offset, **score_shifts(frames(), scheme, shifts)}


# ----------------------------------------------------------------------------- report
def format_table(results: list[dict]) -> str:
    """One line per (size, mode): ceilings and best shifts; then the shift curves."""
    lines = [f"{'size':>10} {'mode':>14} {'mIoU(8)':>8} {'mIoU(1-7)':>9} {'best dx':>7} {'best dy':>7}"]
    for r in results:
        lines.append(f"{r['size'][0]:>5}x{r['size'][1]:<4} {r['mode']:>14} {r['miou']:>8.4f} {r['miou_lanes']:>9.4f} "
                     f"{r['best_dx']:>7d} {r['best_dy']:>7d}")
    lines.append("")
    lines.append("mIoU (8 classes) of the interior by shift (px):")
    for r in results:
        shifts = sorted(r["shift_x"])
        lines.append(f"{r['size'][0]}x{r['size'][1]} {r['mode']:>14} dx: "
                     + " ".join(f"{s:+d}:{r['shift_x'][s]['miou']:.4f}" for s in shifts))
        lines.append(f"{r['size'][0]}x{r['size'][1]} {r['mode']:>14} dy: "
                     + " ".join(f"{s:+d}:{r['shift_y'][s]['miou']:.4f}" for s in shifts))
    return "\n".join(lines)


def _parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main(argv=None) -> int:
    """Print the ceiling/shift table for the labels of an Apollo folder with pairs.csv."""
    import pandas as pd
    ap = argparse.ArgumentParser(prog="python -m paddle_lane.inference.alignment", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder with pairs.csv (label paths relative to it)")
    ap.add_argument("--sizes", default="768x256,1024x384,1536x512")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--offset", type=int, default=CROP_OFFSET)
    ap.add_argument("--frames", type=int, default=0, help="first N frames (0 = all)")
    args = ap.parse_args(argv)
    data = Path(args.data)
    df = pd.read_csv(data / "pairs.csv")
    labels = [str(data / p) for p in df["label"]][: args.frames or None]
    results = [resolution_ceiling(labels, _parse_size(s), args.offset, mode=m)
               for s in args.sizes.split(",") for m in args.modes.split(",")]
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
