"""The report's figures, drawn with matplotlib (the plotting library every Python user can read
and re-run; Agg backend, no display) and returned as PNG bytes for embedding."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ERROR_COLOURS = {"missed": (230, 40, 40), "false": (40, 110, 240), "confused": (250, 210, 0)}


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def confusion_heatmap(conf: np.ndarray, names: list[str]) -> bytes:
    """Row-normalised confusion (rows = ground truth), each cell with its share and pixel count."""
    conf = np.asarray(conf, np.float64)
    rows = conf.sum(axis=1, keepdims=True)
    share = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.3 * n + 2, 1.1 * n + 1.5))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{share[i, j]:.2f}\n{int(conf[i, j]):,}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), names, rotation=40, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (row-normalised; pixel counts below)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    return png(fig)


def class_bars(names, iou, precision, recall) -> bytes:
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(names)), 4))
    for k, (label, values) in enumerate((("IoU", iou), ("precision", precision), ("recall", recall))):
        ax.bar(x + (k - 1) * 0.27, np.nan_to_num(values), width=0.27, label=label)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("Per class: IoU, precision, recall (low precision = false alarms, low recall = misses)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def iou_vs_frequency(names, iou, gt_pixels) -> bytes:
    freq = np.asarray(gt_pixels, np.float64) / max(float(np.sum(gt_pixels)), 1.0)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = (freq > 0) & ~np.isnan(iou)
    ax.scatter(freq[ok], np.asarray(iou)[ok], s=40)
    for name, f, v in zip(np.asarray(names)[ok], freq[ok], np.asarray(iou)[ok]):
        ax.annotate(name, (f, v), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("share of ground-truth pixels (log)")
    ax.set_ylabel("IoU")
    ax.set_title("IoU against class frequency (rare and low: weight or sample those classes)")
    ax.grid(alpha=0.3)
    return png(fig)


def miou_histogram(values: np.ndarray, overall: float) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    v = values[~np.isnan(values)]
    ax.hist(v, bins=min(30, max(5, len(v) // 3)), range=(0, 1), color="#4c72b0", edgecolor="white")
    ax.axvline(overall, color="crimson", label=f"set-level mIoU {overall:.4f}")
    ax.set_xlabel("mIoU of the frame alone")
    ax.set_ylabel("frames")
    ax.set_title(f"Distribution of per-frame mIoU ({len(v)} frames)")
    ax.legend()
    return png(fig)


def breakdown(groups: dict[str, list[dict]]) -> bytes:
    """One bar chart per key (road, record, camera): set-level mIoU of each group, frames on top."""
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    for ax, (key, rows) in zip(axes[0], groups.items()):
        names = [r[key] for r in rows]
        ax.bar(range(len(rows)), [r["miou"] for r in rows], color="#55a868")
        for i, r in enumerate(rows):
            ax.text(i, r["miou"] + 0.01 if np.isfinite(r["miou"]) else 0.01, f"{r['frames']}", ha="center", fontsize=7)
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"mIoU by {key} (frames on top)")
    return png(fig)


def worst_frame(title: str, image: np.ndarray, gt_rgb: np.ndarray, pred_rgb: np.ndarray, errors: np.ndarray) -> bytes:
    """image | ground truth | prediction | error map, with the error colours' legend."""
    from matplotlib.patches import Patch
    fig, axes = plt.subplots(1, 4, figsize=(20, 3.2))
    for ax, pic, label in zip(axes, (image, gt_rgb, pred_rgb, errors), ("image", "ground truth", "prediction",
                                                                         "errors")):
        ax.imshow(pic)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    handles = [Patch(color=np.array(c) / 255, label=k) for k, c in ERROR_COLOURS.items()]
    axes[3].legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.8)
    fig.suptitle(title, fontsize=10)
    return png(fig)


def training_curves(train_log: list[dict], val_log: list[dict], names: list[str]) -> bytes:
    """Loss (and its terms), LR, val vs train mIoU (the gap), per-class val IoU; x = global iteration."""
    fig, axes = plt.subplots(2, 2, figsize=(14, 8))
    ax = axes[0, 0]
    if train_log:
        x = [r["global_iter"] for r in train_log]
        ax.plot(x, [r["loss"] for r in train_log], label="loss", color="black")
        for term in train_log[-1].get("terms", {}):
            ax.plot(x, [r["terms"].get(term, np.nan) for r in train_log], label=term, alpha=0.7)
        ax.legend(fontsize=8)
    ax.set_title("training loss (mean per log interval)" if train_log else "training loss: no train_log.jsonl")
    ax.set_xlabel("iteration")
    ax = axes[0, 1]
    if train_log:
        ax.plot([r["global_iter"] for r in train_log], [r["lr"] for r in train_log], color="#8172b2")
    ax.set_title("learning rate")
    ax.set_xlabel("iteration")
    ax = axes[1, 0]
    if val_log:
        x = [r["global_iter"] for r in val_log]
        ax.plot(x, [r["miou"] for r in val_log], "o-", label="val mIoU")
        if any("train_miou" in r for r in val_log):
            ax.plot(x, [r.get("train_miou", np.nan) for r in val_log], "s--", label="train mIoU (same scoring)")
        ax.legend(fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("train vs val mIoU: a wide gap = variance, both low = bias")
    ax.set_xlabel("iteration")
    ax = axes[1, 1]
    if val_log:
        x = [r["global_iter"] for r in val_log]
        for c, name in enumerate(names):
            ax.plot(x, [r["per_class"][c]["iou"] if c < len(r["per_class"]) else np.nan for r in val_log],
                    label=name, alpha=0.8)
        ax.legend(fontsize=7, ncol=2)
    ax.set_ylim(0, 1)
    ax.set_title("val IoU per class")
    ax.set_xlabel("iteration")
    fig.tight_layout()
    return png(fig)
