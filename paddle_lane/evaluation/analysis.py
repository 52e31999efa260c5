"""Numbers behind the report and compare, from the scorer's per-frame confusion matrices: IoU
and its parts per class, per-frame mIoU, set-level scores of groups of frames (road, record,
camera), and where each frame came from. Vectorised over frames: a stack of F x n x n counts."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from paddle_lane.core.metrics import iou_parts, mean_iou

ROAD = re.compile(r"road[_ ]?0*(\d+)", re.IGNORECASE)
RECORD = re.compile(r"record[_ ]?0*(\d+)", re.IGNORECASE)
CAMERA = re.compile(r"camera[_ ]?0*(\d+)", re.IGNORECASE)


def frame_origin(path: str) -> dict:
    """road / record / camera of an Apollo file from its folders and name ('?' when absent):
    .../Label_road02/Label/Record001/Camera 5/170927_063811892_Camera_5_bin.png."""
    parts = Path(path).parts
    found = {}
    for key, pattern, fmt in (("road", ROAD, "road{:02d}"), ("record", RECORD, "Record{:03d}"),
                              ("camera", CAMERA, "Camera {}")):
        hit = next((m for p in reversed(parts) for m in [pattern.search(p)] if m), None)
        found[key] = fmt.format(int(hit.group(1))) if hit else "?"
    return found


def error_kind(conf: np.ndarray, c: int) -> str:
    """Whether class c's errors are mostly misses or false alarms, judged on the pixel counts of
    a confusion (rows = truth): missed = its true pixels predicted as another class, false = other
    classes' pixels predicted as it. Precision and recall cannot say it: a class never predicted
    has precision NaN (it is all misses), and both are 0 when nothing is right."""
    conf = np.asarray(conf, np.int64)
    missed = int(conf[c].sum() - conf[c, c])
    false = int(conf[:, c].sum() - conf[c, c])
    kind = "misses" if missed >= false else "false alarms"
    return f"{kind} ({missed:,} of its pixels missed, {false:,} false pixels)"


def stack(frames: list[dict], n: int) -> tuple[list[dict], np.ndarray]:
    """(frames with a confusion, F x n x n int64) from the scorer's per-frame list."""
    kept = [f for f in frames if f.get("confusion") is not None]
    if not kept:
        return [], np.zeros((0, n, n), np.int64)
    return kept, np.stack([np.asarray(f["confusion"], np.int64) for f in kept])


def per_frame_miou(confs: np.ndarray, lane_classes) -> tuple[np.ndarray, np.ndarray]:
    """(mIoU over all classes, mIoU over the lanes) of each frame on its own."""
    iou = iou_parts(confs)["iou"]
    return mean_iou(iou), mean_iou(iou, lane_classes)


def group_scores(frames: list[dict], confs: np.ndarray, key: str, lane_classes) -> list[dict]:
    """Set-level mIoU of the frames of each road / record / camera (one confusion per group)."""
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault(frame_origin(f["gt"])[key], []).append(i)
    rows = []
    for name in sorted(groups):
        conf = confs[groups[name]].sum(axis=0)
        iou = iou_parts(conf)["iou"]
        rows.append({key: name, "frames": len(groups[name]), "miou": float(mean_iou(iou)),
                     "miou_lanes": float(mean_iou(iou, lane_classes))})
    return rows
