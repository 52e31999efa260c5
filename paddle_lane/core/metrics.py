"""Segmentation metric from an accumulated confusion matrix (numpy and cv2, no Paddle).

One object serves training validation, `evaluate` and the serving self-check, so
every figure the project reports follows the same absent-class policy.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from paddle_lane.core.labels import IGNORE_INDEX

ABSENT = "absent"
PACKED_MAX_CLASSES = 15  # gt*n + pred fits one byte below 255 while n*n <= 255
FALSE_POSITIVES_ONLY = "false positives only"
PRESENT = "present"


def policy_text(ignore_index: int) -> str:
    """The absent-class and ignore policy, as printed under every table and stored in results."""
    return (f"Ground-truth pixels equal to {ignore_index} are excluded. "
            "A class with no ground-truth and no predicted pixels is absent: its IoU is NaN "
            "and it is excluded from both means. A class with predicted but no ground-truth "
            "pixels has IoU 0 and counts in the means. Precision, recall and F1 are NaN where "
            "their denominator is 0; if every class is absent, the means are NaN.")


def pair_code_lut(train_lut: np.ndarray, n: int) -> np.ndarray:
    """Compose a value -> train id table with the one-byte packing c -> c*n; anything that is
    not a class (ignore) -> 255, which a saturating add keeps past the n*n counted bins."""
    if n > PACKED_MAX_CLASSES:
        raise ValueError(f"packed confusion supports up to {PACKED_MAX_CLASSES} classes, got {n}")
    lut = np.asarray(train_lut).astype(np.int64)
    return np.where(lut < n, lut * n, np.iinfo(np.uint8).max).astype(np.uint8)


def _check_packed_pred(pred_train: np.ndarray, codes: np.ndarray, n: int) -> None:
    """Refuse predictions the packed add would misfile: a value p >= n lands in the bin of
    another (gt, pred) pair. One uint8 max, ~0.07 ms on a 3384x1020 frame."""
    if pred_train.dtype != np.uint8:
        raise TypeError(f"packed confusion needs uint8 train ids, got dtype {pred_train.dtype}")
    if pred_train.shape != codes.shape:
        raise ValueError(f"pred shape {pred_train.shape} != ground-truth shape {codes.shape}")
    if pred_train.size and pred_train.max() >= n:
        _raise_out_of_range(pred_train.ravel(), n, "pred")


def packed_confusion(pred_train: np.ndarray, codes: np.ndarray, n: int) -> np.ndarray:
    """int64 [n, n] confusion (rows ground truth) of train-id predictions against ground-truth
    codes from pair_code_lut: one saturating add and one 256-bin histogram, ~4x faster than a
    bincount over int64 codes. Predictions must be uint8 train ids below n."""
    _check_packed_pred(pred_train, codes, n)
    joint = cv2.add(np.ascontiguousarray(codes), np.ascontiguousarray(pred_train))
    if joint.size >= 1 << 24:  # calcHist counts in float32: exact only below 2**24
        return np.bincount(joint.ravel(), minlength=256)[: n * n].reshape(n, n).astype(np.int64)
    hist = cv2.calcHist([joint], [0], None, [256], [0, 256]).ravel()
    return np.rint(hist[: n * n]).astype(np.int64).reshape(n, n)


def _resolve_lanes(lane_classes: slice | Sequence[int] | None, n: int) -> list[int]:
    """Lane class indices as a sorted list; default 1..n-1 (everything but background)."""
    if lane_classes is None:
        lane_classes = slice(1, n)
    if isinstance(lane_classes, slice):
        return list(range(n)[lane_classes])
    idx = sorted({int(i) for i in lane_classes})
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ValueError(f"lane_classes {bad} outside [0, {n})")
    return idx


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0 (no warnings)."""
    out = np.full(np.shape(num), np.nan, np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def iou_parts(conf: np.ndarray) -> dict:
    """Per-class IoU, precision, recall and F1 (NaN where the denominator is 0) and the pixel
    counts of one n x n confusion (rows = truth), or of a stack ... x n x n (the last two axes).
    The one place these ratios are computed: compute(), the report and compare all call it."""
    conf = np.asarray(conf, np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    gt, pred = conf.sum(axis=-1), conf.sum(axis=-2)
    return {"iou": _safe_div(tp, gt + pred - tp),  # union 0 <=> absent -> NaN
            "precision": _safe_div(tp, pred), "recall": _safe_div(tp, gt),
            "f1": _safe_div(2 * tp, gt + pred),  # = harmonic mean of P and R when both exist
            "gt_pixels": gt, "pred_pixels": pred}


def mean_iou(iou: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """Mean over classes (last axis) of the defined IoUs; NaN (without a warning) when none is."""
    iou = np.asarray(iou, np.float64)
    iou = iou if classes is None else iou[..., list(classes)]
    valid = ~np.isnan(iou)
    return _safe_div(np.where(valid, iou, 0.0).sum(axis=-1), valid.sum(axis=-1))


def _range_label(idx: list[int]) -> str:
    """'1-7' for a contiguous run, else '1,3,5'."""
    if idx and idx == list(range(idx[0], idx[-1] + 1)) and len(idx) > 1:
        return f"{idx[0]}-{idx[-1]}"
    return ",".join(map(str, idx))


def _require_ints(arr: np.ndarray, what: str) -> None:
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise TypeError(f"{what} must hold integer train ids, got dtype {arr.dtype}")


def _raise_out_of_range(values: np.ndarray, n: int, what: str, ignore_index: int | None = None):
    """ValueError naming the values outside [0, n) (ignore_index already removed by the caller)."""
    values = np.unique(values[(values < 0) | (values >= n)])
    extra = "" if ignore_index is None else f" and != ignore_index {ignore_index}"
    raise ValueError(f"{what} holds value(s) {values[:10].tolist()} outside [0, {n}){extra}")


def _fmt(value: float | None, width: int = 1) -> str:
    """Four decimals, or 'n/a' for NaN/None, right-aligned in width."""
    return f"{'n/a':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.4f}"


class SegMetric:
    """Confusion matrix (rows = ground truth, cols = prediction) over train ids, and the scores from it."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
                 ignore_index: int = IGNORE_INDEX, lane_classes: slice | Sequence[int] | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class index")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        self.ignore_index = int(ignore_index)
        self.lane_classes = _resolve_lanes(lane_classes, self.num_classes)
        self._confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

    @property
    def confusion(self) -> np.ndarray:
        """A copy of the int64 [n, n] confusion matrix."""
        return self._confusion.copy()

    def reset(self) -> None:
        self._confusion[:] = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one batch of train ids (any equal shapes); ground truth == ignore_index is skipped."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
        _require_ints(pred, "pred")
        _require_ints(gt, "gt")
        if gt.size == 0:
            return
        if pred.min() < 0 or pred.max() >= self.num_classes:
            _raise_out_of_range(pred.ravel(), self.num_classes, "pred")
        pred = pred.astype(np.int64) if pred.dtype == np.uint64 else pred  # bincount refuses uint64
        self._confusion += self._joint_counts(pred.ravel(), gt.ravel())

    def _joint_counts(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """[n, n] counts of (gt, pred) pairs over pixels whose gt is not ignore_index; other gt values raise."""
        n = self.num_classes
        lo, hi = int(gt.min()), int(gt.max())
        if lo >= 0 and hi < (1 << 16) // n:
            # One bincount over every pixel, rows = gt value: ignored pixels land in rows >= n and
            # are cut off afterwards (~1.4x faster than a boolean gather on a full frame).
            rows = np.bincount(gt.astype(np.uint16) * np.uint16(n) + pred, minlength=n * max(n, hi + 1)).reshape(-1, n)
            stray = np.flatnonzero(rows[n:].any(axis=1)) + n
            if stray.size and stray.tolist() != [self.ignore_index]:
                _raise_out_of_range(stray[stray != self.ignore_index], n, "gt", self.ignore_index)
            return rows[:n]
        valid = gt != self.ignore_index
        gt_valid = gt[valid].astype(np.int64)
        if gt_valid.size and (gt_valid.min() < 0 or gt_valid.max() >= n):
            _raise_out_of_range(gt_valid, n, "gt", self.ignore_index)
        return np.bincount(n * gt_valid + pred[valid], minlength=n * n).reshape(n, n)

    def merge(self, other_confusion: np.ndarray) -> None:
        """Add a confusion matrix accumulated elsewhere (another rank, another worker)."""
        other = np.asarray(other_confusion)
        if other.shape != self._confusion.shape:
            raise ValueError(f"confusion shape {other.shape} != {self._confusion.shape}")
        if not np.issubdtype(other.dtype, np.integer):
            raise TypeError(f"confusion must be integer counts, got dtype {other.dtype}")
        if (other < 0).any():
            raise ValueError("confusion holds negative counts")
        self._confusion += other.astype(np.int64)

    def compute(self) -> dict:
        """Per-class IoU/precision/recall/F1 and the means, following policy_text()."""
        parts = iou_parts(self._confusion)
        iou, gt_pixels, pred_pixels = parts["iou"], parts["gt_pixels"], parts["pred_pixels"]
        status = np.where(gt_pixels > 0, PRESENT, np.where(pred_pixels > 0, FALSE_POSITIVES_ONLY, ABSENT))
        per_class = [
            {"name": name, "iou": float(iou[i]), "precision": float(parts["precision"][i]),
             "recall": float(parts["recall"][i]), "f1": float(parts["f1"][i]), "gt_pixels": int(gt_pixels[i]),
             "pred_pixels": int(pred_pixels[i]), "status": str(status[i])}
            for i, name in enumerate(self.class_names)]
        total = int(self._confusion.sum())
        return {
            "per_class": per_class,
            "miou": float(mean_iou(iou)),
            "miou_lanes": float(mean_iou(iou, self.lane_classes)),
            "pixel_accuracy": float(np.trace(self._confusion) / total) if total > 0 else math.nan,
            "absent_classes": [self.class_names[i] for i in np.flatnonzero(status == ABSENT)],
            "num_classes": self.num_classes,
            "lane_classes": list(self.lane_classes),
            "scored_pixels": total,
            "policy": policy_text(self.ignore_index),
        }

    def table(self, results: dict | None = None) -> str:
        """Console table of compute() (or of the given results), then the means and the policy."""
        r = self.compute() if results is None else results
        width = max(12, *(len(c["name"]) for c in r["per_class"]))
        head = (f"{'class':<{width}} {'IoU':>7} {'prec':>7} {'recall':>7} {'F1':>7} "
                f"{'GT pixels':>13} {'pred pixels':>13}  status")
        lines = [head, "-" * len(head)]
        for c in r["per_class"]:
            lines.append(f"{c['name']:<{width}} {_fmt(c['iou'], 7)} {_fmt(c['precision'], 7)} "
                         f"{_fmt(c['recall'], 7)} {_fmt(c['f1'], 7)} {c['gt_pixels']:>13,} "
                         f"{c['pred_pixels']:>13,}  {c['status']}")
        lines.append("-" * len(head))
        lines.append(f"mIoU ({r['num_classes']} classes): {_fmt(r['miou'])}")
        lines.append(f"mIoU (lanes {_range_label(r['lane_classes'])}): {_fmt(r['miou_lanes'])}")
        lines.append(f"pixel accuracy: {_fmt(r['pixel_accuracy'])}")
        lines.append(f"absent classes: {', '.join(r['absent_classes']) or 'none'}")
        lines.append(f"policy: {r['policy']}")
        return "\n".join(lines)


def metric_to_jsonable(obj):
    """A copy of compute()-style output that json.dumps accepts: NaN/inf -> None, numpy -> Python."""
    if isinstance(obj, dict):
        return {str(k): metric_to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [metric_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return metric_to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
