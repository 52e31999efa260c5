"""`paddle-lane report`: one self-contained HTML file (figures embedded as data URIs, opens
offline) that tells a competitor what to fix next, built from the same scorer as `evaluate`:
confusion heat map, per-class IoU / precision / recall, IoU against class frequency, the
distribution of per-frame mIoU, breakdowns by road / record / camera, the k worst frames as
image | ground truth | prediction | error map, and with a run folder the training curves with
the train/val gap."""
from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from paddle_lane.core.apollo_files import frame_key, is_image_name, is_label_file
from paddle_lane.core.errors import UserError
from paddle_lane.core.io_utils import atomic_write_text
from paddle_lane.core.label_io import UnreadableFileError, read_image, read_label
from paddle_lane.core.labels import IGNORE_INDEX, apply_lut, load_scheme
from paddle_lane.core.visual import colorize
from paddle_lane.evaluation import figures
from paddle_lane.evaluation.analysis import error_kind, group_scores, per_frame_miou, stack
from paddle_lane.evaluation.scorer import score_folders

PANEL_WIDTH = 846  # worst-frame panels are shown at a quarter of the competition width


def _img(data: bytes, alt: str, mime: str = "image/png") -> str:
    return (f'<img class="fig" alt="{html.escape(alt)}" '
            f'src="data:{mime};base64,{base64.b64encode(data).decode()}">')


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    return out


def image_index(folder: str | None) -> dict[str, Path]:
    """stem -> image path for every *.jpg / *.png under folder (label files left out)."""
    if not folder:
        return {}
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--images: folder not found: {folder}")
    return {p.stem: p for p in sorted(root.rglob("*")) if is_image_name(p) and not is_label_file(p, root)}


def error_map(base: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The image dimmed, with missed lane pixels red, false ones blue, confused ones yellow."""
    out = (base.astype(np.float32) * 0.45).astype(np.uint8)
    valid = gt != IGNORE_INDEX
    kinds = {"missed": valid & (gt > 0) & (pred == 0), "false": valid & (gt == 0) & (pred > 0),
             "confused": valid & (gt > 0) & (pred > 0) & (gt != pred)}
    for kind, mask in kinds.items():
        out[mask] = figures.ERROR_COLOURS[kind]
    return out


def _small(arr: np.ndarray, nearest: bool) -> np.ndarray:
    h, w = arr.shape[:2]
    if w <= PANEL_WIDTH:
        return arr
    size = (PANEL_WIDTH, max(1, round(h * PANEL_WIDTH / w)))
    return cv2.resize(arr, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def worst_frames(frames, miou, k, scheme, images: dict[str, Path]) -> list[str]:
    """Figures (as <img> tags) of the k frames with the lowest per-frame mIoU."""
    order = [i for i in np.argsort(np.where(np.isnan(miou), np.inf, miou)) if not np.isnan(miou[i])][:k]
    gt_lut, pred_lut, palette = scheme.eval_lut(), scheme.pred_lut(), scheme.palette()
    out = []
    for i in order:
        f = frames[i]
        try:
            gt = apply_lut(read_label(f["gt"]), gt_lut)
            pred = apply_lut(read_label(f["pred"]), pred_lut) if f["pred"] and f["status"] == "scored" \
                else np.zeros_like(gt)
        except UnreadableFileError:
            continue
        stem = frame_key(f["gt"])
        try:
            image = read_image(images[stem]) if stem in images else np.full((*gt.shape, 3), 96, np.uint8)
        except UnreadableFileError:
            image = np.full((*gt.shape, 3), 96, np.uint8)
        if image.shape[:2] != gt.shape:
            image = cv2.resize(image, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_AREA)
        gt_s, pred_s, img_s = _small(gt, True), _small(pred, True), _small(image, False)
        title = (f"{Path(f['gt']).name}: frame mIoU {miou[i]:.3f} ({f['status']})"
                 + ("" if stem in images else " (no image found under --images)"))
        out.append(_img(figures.worst_frame(title, img_s, colorize(gt_s, palette), colorize(pred_s, palette),
                                            error_map(img_s, gt_s, pred_s)), f"worst frame {Path(f['gt']).name}"))
    return out


def advice(results: dict, names: list[str], conf: np.ndarray, val_log: list[dict]) -> list[str]:
    """A few sentences from the numbers: the weakest classes and what they are mistaken for,
    misses vs false alarms, rare classes, and bias vs variance when the run logged both."""
    notes = []
    per = results["per_class"]
    scored = [(r["iou"], c) for c, r in enumerate(per) if r["iou"] is not None and np.isfinite(r["iou"])]
    for iou, c in sorted(scored)[:3]:
        row = conf[c].astype(np.float64)
        row[c] = 0
        other = int(np.argmax(row)) if row.sum() > 0 else None
        notes.append(f"{names[c]}: IoU {iou:.3f}, mostly {error_kind(conf, c)}"
                     + (f"; its pixels are most often predicted as {names[other]}" if other is not None else ""))
    if val_log and "train_miou" in val_log[-1]:
        tr, va = val_log[-1]["train_miou"], val_log[-1]["miou"]
        gap = tr - va
        if gap > 0.1:
            notes.append(f"train mIoU {tr:.3f} vs val {va:.3f} (gap {gap:.3f}): variance; more data or augmentation, "
                         "regularisation, or an ensemble")
        else:
            notes.append(f"train mIoU {tr:.3f} vs val {va:.3f} (gap {gap:.3f}): bias; a larger model, a higher "
                         "resolution stage or longer training")
    elif val_log:
        notes.append("the run logged no training-set scores (train.train_eval_images: 0): the train/val gap is unknown")
    return notes


def _table(rows: list[dict], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img.fig'));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-figures', ok + '/' + imgs.length);
  document.getElementById('figure-check').textContent = ok + ' of ' + imgs.length + ' figures loaded';
});
</script>"""

STYLE = """<style>
body { font-family: sans-serif; margin: 2em auto; max-width: 1500px; color: #222; }
img.fig { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } h2 { border-bottom: 1px solid #ddd; margin-top: 2em; }
</style>"""


def build_report(pred: str, gt: str, out: str, images: str | None = None, run: str | None = None,
                 scheme_name: str = "apollo8", k: int = 6, workers: int = 2) -> dict:
    """Score pred against gt and write the HTML report to out; returns a summary."""
    if k < 0:
        raise UserError(f"--worst must be >= 0, got {k}")
    if run and not Path(run).is_dir():
        raise UserError(f"--run: run folder not found: {run}")
    scheme = load_scheme(scheme_name)
    index = image_index(images)
    report = score_folders(pred, gt, scheme, workers=workers)
    names, n = report.class_names, len(report.class_names)
    lanes = report.results["lane_classes"]
    frames, confs = stack(report.frames, n)
    if not frames:
        raise UserError(f"no readable ground truth under {gt}: nothing to report")
    frame_miou, _ = per_frame_miou(confs, lanes)
    val_log = _read_jsonl(Path(run) / "metrics.jsonl") if run else []
    train_log = _read_jsonl(Path(run) / "train_log.jsonl") if run else []
    groups = {key: group_scores(frames, confs, key, lanes) for key in ("road", "record", "camera")}
    r = report.results
    # every number on the page comes from the scorer's results, so the page and `evaluate` agree
    per_class = {key: np.array([c[key] for c in r["per_class"]], np.float64)
                 for key in ("iou", "precision", "recall", "gt_pixels")}
    sections = [
        f"<h1>paddle-lane report</h1><p>{html.escape(str(pred))} against {html.escape(str(gt))}, scheme {scheme.name}, "
        f"{len(frames)} frames; made {datetime.now(timezone.utc).isoformat(timespec='seconds')}.</p>",
        _table([{"mIoU (all classes)": r["miou"], "mIoU (lanes)": r["miou_lanes"],
                 "pixel accuracy": r["pixel_accuracy"], "frames scored": report.counts["scored"],
                 "missing": report.counts["missing"], "problems": len(report.problems)}],
               ["mIoU (all classes)", "mIoU (lanes)", "pixel accuracy", "frames scored", "missing", "problems"]),
        "<h2>What to fix next</h2><ul>" + "".join(f"<li>{html.escape(a)}</li>"
                                                 for a in advice(r, names, report.confusion, val_log)) + "</ul>",
        "<h2>Per class</h2>",
        _table([{"class": x["name"], "IoU": x["iou"], "precision": x["precision"], "recall": x["recall"],
                 "gt pixels": x["gt_pixels"], "pred pixels": x["pred_pixels"]} for x in r["per_class"]],
               ["class", "IoU", "precision", "recall", "gt pixels", "pred pixels"]),
        _img(figures.class_bars(names, per_class["iou"], per_class["precision"], per_class["recall"]), "per-class bars"),
        _img(figures.confusion_heatmap(report.confusion, names), "confusion matrix"),
        _img(figures.iou_vs_frequency(names, per_class["iou"], per_class["gt_pixels"]), "IoU against frequency"),
        "<h2>Frames</h2>",
        _img(figures.miou_histogram(frame_miou, r["miou"]), "per-frame mIoU"),
        _img(figures.breakdown(groups), "breakdown by road, record, camera"),
        *(_table(rows, [key, "frames", "miou", "miou_lanes"]) for key, rows in groups.items()),
        f"<h2>The {min(k, len(frames))} worst frames</h2>",
        *worst_frames(frames, frame_miou, k, scheme, index),
    ]
    if run:
        sections += ["<h2>Training</h2>", _img(figures.training_curves(train_log, val_log, names), "training curves"),
                     f"<p>{len(train_log)} training log lines, {len(val_log)} validations from {html.escape(str(run))}.</p>"]
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>paddle-lane report</title>" + STYLE
            + "</head><body>" + "\n".join(sections)
            + "<p id='figure-check'>figures not checked (JavaScript off)</p>" + CHECK_SCRIPT + "</body></html>")
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, page)
    return {"out": str(out_path), "frames": len(frames), "figures": page.count('class="fig"'), "miou": r["miou"],
            "bytes": out_path.stat().st_size}
