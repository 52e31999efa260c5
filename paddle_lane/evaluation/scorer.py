"""The competition's leaderboard evaluation, on a folder of predictions against a folder of labels.

Both folders hold Apollo-id PNGs. Ground truth goes through the scheme's eval_lut
(ignoreInEval ids excluded), predictions through pred_lut (any id of a category counts),
and one confusion matrix is accumulated over the whole set, as the leaderboard did.
Nothing is dropped silently: missing, extra, mis-sized, unreadable files and unknown
ids all end up in the report's problem list. A missing, unreadable or wrong-size prediction
is scored as all background, so a broken file never scores better than no file.
"""
from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from paddle_lane.core.errors import UserError
from paddle_lane.core.io_utils import atomic_write_json, atomic_write_text
from paddle_lane.core.label_io import UnknownColorError, UnreadableFileError, read_label
from paddle_lane.core.labels import IGNORE_INDEX, Scheme, apply_lut, known_id_mask, load_scheme
from paddle_lane.core.metrics import (PACKED_MAX_CLASSES, SegMetric, metric_to_jsonable, packed_confusion,
                                  pair_code_lut)

MAX_PROBLEMS_SHOWN = 20
UNREADABLE = (UnreadableFileError, UnknownColorError)  # per-file failures: listed, never fatal
BLANK_ID = 0  # Apollo id of an all-background prediction (mapped through pred_lut like any other)


@dataclass(frozen=True)
class _Job:
    """One ground-truth frame and the prediction matched to it (None = missing)."""
    gt_path: str
    pred_path: str | None


@dataclass
class _FrameResult:
    status: str  # scored | missing | bad_pred | mismatched | bad_gt
    confusion: np.ndarray | None
    problems: list[dict] = field(default_factory=list)


@dataclass
class ScoreReport:
    """Metric results, confusion matrix, problem list and file counts of one scoring run."""
    results: dict
    confusion: np.ndarray
    problems: list[dict]
    counts: dict
    class_names: list[str]
    scheme: str
    pred_dir: str
    gt_dir: str
    ignore_index: int = IGNORE_INDEX
    # per ground-truth frame, in file order: {"gt", "pred", "status", "confusion"} (confusion None for
    # an unreadable ground truth); what report and compare work from, not written to scores.json
    frames: list[dict] = field(default_factory=list)

    @property
    def miou(self) -> float:
        return self.results["miou"]

    @property
    def miou_lanes(self) -> float:
        return self.results["miou_lanes"]

    def prediction_gaps(self) -> dict[str, int]:
        """How many predictions were scored as background, by kind (missing / unreadable / wrong size)."""
        c = self.counts
        return {"missing": c["missing"], "unreadable": c["unreadable_pred"], "wrong size": c["mismatched"]}

    def _metric(self) -> SegMetric:
        metric = SegMetric(len(self.class_names), self.class_names, self.ignore_index,
                           lane_classes=self.results["lane_classes"])
        metric.merge(self.confusion)
        return metric

    def table(self) -> str:
        """Per-class table, means and policy, then the file counts and problems."""
        c = self.counts
        lines = [self._metric().table(self.results), "",
                 f"files: {c['gt_files']} ground truth, {c['scored']} scored "
                 f"({c['missing']} missing, {c['unreadable_pred']} unreadable and {c['mismatched']} wrong-size "
                 f"predictions scored as background), {c['unreadable_gt']} unreadable ground truth skipped, "
                 f"{c['extra']} extra predictions ignored, {c['unknown_ids']} files with unknown ids"]
        lines.append("mapping: ground-truth ids marked ignoreInEval (and 249 noise, 255 ego hood) are excluded; "
                     "a predicted id counts for its category (e.g. 200 or 204 = dividing)")
        for p in self.problems[:MAX_PROBLEMS_SHOWN]:
            lines.append(f"  {p['file']}: {p['reason']}")
        if len(self.problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  ... and {len(self.problems) - MAX_PROBLEMS_SHOWN} more problems (see scores.json)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "pred_dir": self.pred_dir, "gt_dir": self.gt_dir,
                "counts": self.counts, "results": self.results, "class_names": self.class_names,
                "confusion": self.confusion.tolist(), "problems": self.problems}

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write scores.csv (per-class rows) and scores.json (everything), each atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "scores.csv", "json": out / "scores.json"}
        atomic_write_text(paths["csv"], pd.DataFrame(self.results["per_class"]).to_csv(index=False, na_rep="NaN"))
        atomic_write_json(paths["json"], metric_to_jsonable(self.to_dict()))
        return paths


def _check_dirs(pred_dir: Path, gt_dir: Path) -> list[Path]:
    """The ground-truth PNGs, or a one-line UserError about the folders."""
    for what, d in (("prediction", pred_dir), ("ground-truth", gt_dir)):
        if not d.is_dir():
            raise UserError(f"{what} folder not found: {d}")
    gt_files = sorted(p for p in gt_dir.rglob("*.png") if not p.name.startswith("."))  # temp files are hidden
    if not gt_files:
        raise UserError(f"no *.png ground truth under {gt_dir}")
    return gt_files


def _index_by_name(files: list[Path]) -> dict[str, list[Path]]:
    """File name -> every path with that name (more than one = a duplicate to report)."""
    index: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        index[f.name].append(f)
    return index


def _duplicate_problems(index: dict[str, list[Path]], what: str) -> list[dict]:
    return [{"file": str(paths[0]), "reason": f"duplicate {what} name, also at "
             + ", ".join(str(p) for p in paths[1:]) + "; the first is used"}
            for paths in index.values() if len(paths) > 1]


def _pair_files(pred_dir: Path, gt_files: list[Path], pred_suffix: str) -> tuple[list[_Job], list[dict], list[dict]]:
    """Match each ground truth to the prediction named <gt stem><pred_suffix>.png anywhere under pred_dir.

    Returns the jobs, the extra-prediction problems and the duplicate-name problems.
    """
    preds = _index_by_name(sorted(p for p in pred_dir.rglob("*.png") if not p.name.startswith(".")))
    gts = _index_by_name(gt_files)
    wanted = {f"{Path(name).stem}{pred_suffix}.png" for name in gts}
    jobs = []
    for name, paths in gts.items():
        match = preds.get(f"{Path(name).stem}{pred_suffix}.png")
        jobs.append(_Job(str(paths[0]), str(match[0]) if match else None))
    extra = [{"file": str(p), "reason": "extra prediction: no ground truth with this name; ignored"}
             for name, paths in preds.items() if name not in wanted for p in paths]
    dups = _duplicate_problems(gts, "ground-truth") + [
        p for p in _duplicate_problems(preds, "prediction") if Path(p["file"]).name in wanted]
    return jobs, extra, dups


def _unknown_ids(ids: np.ndarray) -> list[int]:
    """Values of ids that are not in the Apollo label table (one 256-bin histogram, ~3 ms)."""
    hist = cv2.calcHist([ids], [0], None, [256], [0, 256]).ravel()
    return np.flatnonzero((hist > 0) & ~known_id_mask()).tolist()


def frame_confusion(pred_train: np.ndarray, gt_ids: np.ndarray, gt_lut: np.ndarray, n: int) -> np.ndarray:
    """int64 [n, n] confusion (rows ground truth) of one frame, ignore excluded: the packed
    one-byte histogram up to PACKED_MAX_CLASSES classes, a plain bincount beyond."""
    if n > PACKED_MAX_CLASSES:
        metric = SegMetric(n, ignore_index=IGNORE_INDEX)
        metric.update(pred_train, apply_lut(gt_ids, gt_lut))
        return metric.confusion
    return packed_confusion(pred_train, apply_lut(gt_ids, pair_code_lut(gt_lut, n)), n)


def _unknown_problem(path: str, ids: np.ndarray, what: str) -> list[dict]:
    values = _unknown_ids(ids)
    if not values:
        return []
    return [{"file": path, "reason": f"unknown id(s) {values} in {what} (not in the Apollo table); "
             "pixels still mapped through the scheme's lookup table"}]


def _size(shape: tuple[int, ...]) -> str:
    """'WxH' of an image shape (rows, cols, ...)."""
    return f"{shape[1]}x{shape[0]}"


def _read_prediction(job: _Job, shape: tuple[int, ...]) -> tuple[str, np.ndarray, list[dict]]:
    """Raw prediction ids, or all background (with a problem) when missing, unreadable or
    of another size than the ground truth."""
    blank = np.full(shape, BLANK_ID, np.uint8)
    if job.pred_path is None:
        return "missing", blank, [{"file": job.gt_path, "reason": "missing prediction; scored as all background"}]
    try:
        ids = read_label(job.pred_path)
    except UNREADABLE as exc:
        return "bad_pred", blank, [
            {"file": job.pred_path, "reason": f"unreadable prediction, scored as all background: {exc}"}]
    problems = _unknown_problem(job.pred_path, ids, "prediction")
    if ids.shape != shape:
        # skipping the frame would drop its ground truth from the metric and flatter the score
        problems.append({"file": job.pred_path, "reason": f"wrong size: prediction {Path(job.pred_path).name} is "
                         f"{_size(ids.shape)} but ground truth {Path(job.gt_path).name} is {_size(shape)} (WxH); "
                         "scored as all background"})
        return "mismatched", blank, problems
    return "scored", ids, problems


def _score_frame(job: _Job, gt_lut: np.ndarray, pred_lut: np.ndarray, num_classes: int) -> _FrameResult:
    """Read one pair, map it to train ids and return its confusion matrix plus any problems."""
    try:
        gt_ids = read_label(job.gt_path)
    except UNREADABLE as exc:
        return _FrameResult("bad_gt", None, [{"file": job.gt_path, "reason": f"unreadable ground truth, skipped: {exc}"}])
    problems = _unknown_problem(job.gt_path, gt_ids, "ground truth")
    status, pred_ids, pred_problems = _read_prediction(job, gt_ids.shape)
    problems += pred_problems
    return _FrameResult(status, frame_confusion(apply_lut(pred_ids, pred_lut), gt_ids, gt_lut, num_classes), problems)


def _run_frames(jobs: list[_Job], frame_fn, workers: int, progress: bool) -> list[_FrameResult]:
    """frame_fn over all jobs, inline for workers == 1, else in a thread pool; in job order.

    Threads, not processes: PNG decoding, the lookup tables and the histogram all release
    the GIL, and threads cost nothing to start (a spawned process pool took ~1 s)."""
    bar = tqdm(total=len(jobs), desc="scoring", unit="img", disable=not progress)
    with bar:
        if workers == 1:
            return [_tick(bar, frame_fn(job)) for job in jobs]
        with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            futures = {pool.submit(frame_fn, job): i for i, job in enumerate(jobs)}
            results: list[_FrameResult | None] = [None] * len(jobs)
            for fut in as_completed(futures):
                results[futures[fut]] = _tick(bar, fut.result())
    return results


def _tick(bar: tqdm, result: _FrameResult) -> _FrameResult:
    bar.update(1)
    return result


def _counts(gt_files: int, results: list[_FrameResult], extra: int) -> dict:
    """File counts; 'scored' is every frame in the metric, including those scored as background."""
    n = defaultdict(int)
    for r in results:
        n[r.status] += 1
    unknown = len({p["file"] for r in results for p in r.problems if p["reason"].startswith("unknown id")})
    return {"gt_files": gt_files, "scored": n["scored"] + n["missing"] + n["bad_pred"] + n["mismatched"],
            "missing": n["missing"], "extra": extra, "mismatched": n["mismatched"],
            "unreadable_gt": n["bad_gt"], "unreadable_pred": n["bad_pred"], "unknown_ids": unknown}


def score_folders(pred_dir: str | Path, gt_dir: str | Path, scheme: Scheme | str, *, workers: int = 2,
                  pred_suffix: str = "", out_dir: str | Path | None = None, progress: bool = True) -> ScoreReport:
    """Score the Apollo-id PNGs under pred_dir against every *.png under gt_dir (recursive).

    A prediction matches a ground truth by file name: <gt stem><pred_suffix>.png, in any sub-folder.
    """
    if workers < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    scheme = load_scheme(scheme) if isinstance(scheme, str) else scheme
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gt_files = _check_dirs(pred_dir, gt_dir)
    jobs, extra, duplicates = _pair_files(pred_dir, gt_files, pred_suffix)
    frame_fn = partial(_score_frame, gt_lut=scheme.eval_lut(), pred_lut=scheme.pred_lut(),
                       num_classes=scheme.num_classes)
    results = _run_frames(jobs, frame_fn, workers, progress)
    metric = SegMetric(scheme.num_classes, scheme.class_names, IGNORE_INDEX)
    for r in results:
        if r.confusion is not None:
            metric.merge(r.confusion)
    problems = duplicates + [p for r in results for p in r.problems] + extra
    report = ScoreReport(results=metric.compute(), confusion=metric.confusion, problems=problems,
                         counts=_counts(len(gt_files), results, len(extra)), class_names=scheme.class_names,
                         scheme=scheme.name, pred_dir=str(pred_dir), gt_dir=str(gt_dir),
                         frames=[{"gt": j.gt_path, "pred": j.pred_path, "status": r.status, "confusion": r.confusion}
                                 for j, r in zip(jobs, results)])
    if out_dir is not None:
        report.write(out_dir)
    return report
