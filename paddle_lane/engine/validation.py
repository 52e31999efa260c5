"""Validation that measures what the leaderboard measures.

Each validation frame goes the way of `infer` then `evaluate`: the predictor's input
preparation from the original image, softmax, full-size bilinear upsampling and argmax
(probs_to_train_ids), decode to Apollo ids; scored against the original label through the
scheme's evaluation table (ignoreInEval ids, noise and the ego hood excluded), one confusion
matrix over the set in the same SegMetric. So the checkpoint chosen as "best" is the best by
the leaderboard's number, not by a stage-size proxy of it.
"""
from __future__ import annotations

import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from paddle_lane.core.label_io import read_label
from paddle_lane.core.labels import IGNORE_INDEX, Scheme, apply_lut
from paddle_lane.core.metrics import SegMetric
from paddle_lane.core.resize import crop_top
from paddle_lane.evaluation.scorer import UNREADABLE, frame_confusion

POST_WORKERS = 2  # threads that upsample and score while the model runs (cv2 releases the GIL)


def sample_val_rows(df: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """At most `limit` rows spread over records and cameras: rows are shuffled within each
    (road, record, camera) group and the groups are taken in turns, seeded. The list is sorted
    by time, so its first rows would be one or two records."""
    if limit <= 0 or len(df) <= limit:
        return df.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    cols = [c for c in ("road", "record", "camera") if c in df.columns]
    groups = [g.index.to_numpy() for _, g in df.groupby(cols, sort=True)] if cols else [df.index.to_numpy()]
    groups = [rng.permutation(g) for g in groups]
    order = rng.permutation(len(groups))
    picked: list[int] = []
    depth = 0
    while len(picked) < limit:
        for gi in order:
            if depth < len(groups[gi]):
                picked.append(int(groups[gi][depth]))
                if len(picked) == limit:
                    break
        depth += 1
    return df.loc[sorted(picked)].reset_index(drop=True)


@dataclass
class ValidationResult:
    metric: SegMetric
    frames: int
    unreadable: list[str]
    shown: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (rgb, gt, pred) at the stage size


def score_frame(probs: np.ndarray, full_size: tuple[int, int], label_path: str, predictor, scheme: Scheme,
                keep: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Confusion of one frame exactly as `infer` + `evaluate` would count it; with `keep`,
    also the full-size train ids of prediction and ground truth (for the image grid)."""
    gt_ids = read_label(label_path)
    pred_train = predictor.to_train_ids(probs, full_size)
    # decode to Apollo ids and back through pred_lut, as evaluate reads a submission PNG
    pred_eval = apply_lut(scheme.decode(pred_train), scheme.pred_lut())
    conf = frame_confusion(pred_eval, gt_ids, scheme.eval_lut(), scheme.num_classes)
    if not keep:
        return conf, None, None
    return conf, pred_eval, apply_lut(gt_ids, scheme.eval_lut())


def _small(train_ids: np.ndarray, offset: int, size: tuple[int, int]) -> np.ndarray:
    """Full-size ids -> the cropped area at the stage size, for display."""
    return cv2.resize(np.ascontiguousarray(crop_top(train_ids, offset)), size, interpolation=cv2.INTER_NEAREST_EXACT)


def validate_frames(predictor, rows: pd.DataFrame, scheme: Scheme, num_workers: int, vis_images: int = 0,
                    what: str = "validation") -> ValidationResult:
    """Score the model of `predictor` on the rows (image, label) like the leaderboard.

    An unreadable image is scored as an all-background prediction (a missing file in a
    submission counts that way) and named; an unreadable label leaves the frame out, as
    evaluate does."""
    from paddle_lane.inference.geometry import inputs_from_file
    metric = SegMetric(scheme.num_classes, scheme.class_names, IGNORE_INDEX)
    images, labels = rows["image"].astype(str).tolist(), rows["label"].astype(str).tolist()
    unreadable: list[str] = []
    shown = []
    size = predictor.base_size
    pending: deque[tuple[Future, int]] = deque()

    def collect(fut: Future, i: int) -> None:
        try:
            conf, pred, gt = fut.result()
        except UNREADABLE as exc:
            unreadable.append(f"{labels[i]}: {exc}")
            return
        metric.merge(conf)
        if pred is not None:
            offset = predictor.rows_cut(gt.shape[0])
            rgb = inputs_from_file(images[i], [size], offset, (gt.shape[1], gt.shape[0]))[0]
            shown.append((rgb, _small(gt, offset, size), _small(pred, offset, size)))

    with ThreadPoolExecutor(max_workers=POST_WORKERS) as pool:
        for res in predictor.predict_files(images, batch_size=1, num_workers=num_workers, progress=False, what=what):
            i = res.index
            if res.error is not None:
                unreadable.append(f"{images[i]}: {res.error}")
                try:
                    gt_ids = read_label(labels[i])
                except UNREADABLE:
                    continue
                blank = np.zeros(gt_ids.shape, np.uint8)  # scored as all background
                metric.merge(frame_confusion(blank, gt_ids, scheme.eval_lut(), scheme.num_classes))
                continue
            pending.append((pool.submit(score_frame, res.probs, res.full_size, labels[i], predictor, scheme,
                                        i < vis_images), i))
            while len(pending) > 2 * POST_WORKERS:  # a few frames in flight bound the memory
                collect(*pending.popleft())
        while pending:
            collect(*pending.popleft())
    if unreadable:
        print(f"warning: validation: {len(unreadable)} frame(s) could not be read: {unreadable[0]}"
              + (" ..." if len(unreadable) > 1 else ""), file=sys.stderr)
    return ValidationResult(metric, len(images), unreadable, shown)
