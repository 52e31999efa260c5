"""`paddle-lane compare`: is B's gain over A real? A paired bootstrap over frames: each resample
draws F frames with replacement (the same frames for both sides), sums each side's per-frame
confusion matrices into a set-level matrix, and scores it as the leaderboard does. Reported: the
observed difference, the resamples' mean difference, its 95 % percentile interval, and the share
of resamples in which B beats A, for mIoU (all classes and lanes) and per class.

Vectorised: per-frame confusions are computed once by the scorer; a resample is a vector of
frame multiplicities (multinomial), so all resamples' matrices are one matrix product."""
from __future__ import annotations

import numpy as np

from paddle_lane.core.errors import UserError
from paddle_lane.core.metrics import iou_parts, mean_iou
from paddle_lane.evaluation.analysis import stack

CHUNK = 500  # resamples per matrix product (bounds memory at n_boot x n*n floats per side)


def paired_frames(report_a, report_b) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(F x n x n, F x n x n, ground-truth paths) over the frames both reports scored."""
    n = len(report_a.class_names)
    if report_b.class_names != report_a.class_names:
        raise UserError("the two sides were scored with different class lists")
    fa, ca = stack(report_a.frames, n)
    fb, cb = stack(report_b.frames, n)
    index_b = {f["gt"]: i for i, f in enumerate(fb)}
    common = [i for i, f in enumerate(fa) if f["gt"] in index_b]
    if not common:
        raise UserError("no ground-truth frame was scored for both predictions")
    return ca[common], cb[[index_b[fa[i]["gt"]] for i in common]], [fa[i]["gt"] for i in common]


def resampled_iou(confs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """R x n IoU of the set-level matrices sum_f weights[r, f] * confs[f]."""
    f, n, _ = confs.shape
    sums = weights @ confs.reshape(f, n * n).astype(np.float64)
    return iou_parts(sums.reshape(-1, n, n))["iou"]


def bootstrap(conf_a: np.ndarray, conf_b: np.ndarray, n_boot: int = 2000, seed: int = 0,
              lane_classes=None) -> dict:
    """Paired bootstrap of B - A; conf_* are F x n x n per-frame confusions of the same frames."""
    if conf_a.shape != conf_b.shape or conf_a.ndim != 3:
        raise ValueError(f"paired confusions must have one shape F x n x n, got {conf_a.shape} and {conf_b.shape}")
    if n_boot < 1:
        raise UserError(f"--n must be >= 1, got {n_boot}")
    f, n, _ = conf_a.shape
    lanes = list(range(1, n)) if lane_classes is None else list(lane_classes)
    rng = np.random.default_rng(seed)
    iou_a, iou_b = [], []
    for start in range(0, n_boot, CHUNK):
        weights = rng.multinomial(f, np.full(f, 1.0 / f), size=min(CHUNK, n_boot - start)).astype(np.float64)
        iou_a.append(resampled_iou(conf_a, weights))
        iou_b.append(resampled_iou(conf_b, weights))
    iou_a, iou_b = np.concatenate(iou_a), np.concatenate(iou_b)
    full_a, full_b = iou_parts(conf_a.sum(axis=0))["iou"], iou_parts(conf_b.sum(axis=0))["iou"]

    def summary(a_samples, b_samples, a_full, b_full) -> dict:
        delta = b_samples - a_samples
        ok = ~np.isnan(delta)
        d = delta[ok]
        if not d.size:
            return {"a": float(a_full), "b": float(b_full), "delta": float("nan"), "mean_delta": float("nan"),
                    "ci95": [float("nan"), float("nan")], "p_b_better": float("nan")}
        return {"a": float(a_full), "b": float(b_full), "delta": float(b_full - a_full), "mean_delta": float(d.mean()),
                "ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))],
                "p_b_better": float((d > 0).mean())}

    return {
        "frames": f, "resamples": n_boot, "seed": seed,
        "miou": summary(mean_iou(iou_a), mean_iou(iou_b), mean_iou(full_a), mean_iou(full_b)),
        "miou_lanes": summary(mean_iou(iou_a, lanes), mean_iou(iou_b, lanes), mean_iou(full_a, lanes),
                              mean_iou(full_b, lanes)),
        "per_class": [summary(iou_a[:, c], iou_b[:, c], full_a[c], full_b[c]) for c in range(n)],
    }


def format_comparison(res: dict, class_names: list[str], name_a: str, name_b: str) -> str:
    lines = [f"paired bootstrap over {res['frames']} frames, {res['resamples']} resamples (seed {res['seed']}): "
             f"B = {name_b} vs A = {name_a}",
             f"{'':<28} {'A':>7} {'B':>7} {'B-A':>8} {'mean':>8} {'95% interval':>19} {'P(B>A)':>7}"]

    def row(label, s):
        lines.append(f"{label:<28} {s['a']:>7.4f} {s['b']:>7.4f} {s['delta']:>+8.4f} {s['mean_delta']:>+8.4f} "
                     f"[{s['ci95'][0]:>+8.4f}, {s['ci95'][1]:>+8.4f}] {s['p_b_better']:>7.3f}")
    row("mIoU (all classes)", res["miou"])
    row("mIoU (lanes)", res["miou_lanes"])
    for name, s in zip(class_names, res["per_class"]):
        row(f"  {name}", s)
    lo, hi = res["miou"]["ci95"]
    verdict = ("B is better: the interval is above 0" if lo > 0 else
               "A is better: the interval is below 0" if hi < 0 else
               "no clear difference: the interval contains 0")
    lines.append(f"verdict on mIoU: {verdict}")
    return "\n".join(lines)
