"""`prepare`: raw Apollo tree -> validated, cleaned, record-split lists + stats + cache.

Streams frames through worker processes (only per-frame numbers come back, never
pixels), so memory stays flat however many frames there are.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pandas as pd
from tqdm import tqdm

from paddle_lane.core.errors import UserError
from paddle_lane.core.io_utils import atomic_write_json, atomic_write_with
from paddle_lane.core.labels import load_scheme
from paddle_lane.core.procs import die_with_parent
from paddle_lane.core.resize import crop_rows
from paddle_lane.prepare.cache import build_entry, cache_dir, cached_paths, write_cache_key
from paddle_lane.prepare.frame_stats import measure_frame, measure_image
from paddle_lane.prepare.scan import Frame, scan
from paddle_lane.prepare.split import split_by_group
from paddle_lane.prepare.weights import FORMULAS, class_weights

LIST_COLUMNS = ["image", "label", "road", "record", "camera", "key", "group"]


@dataclass
class PrepareResult:
    out_dir: Path
    pairs_found: int = 0
    test_images: int = 0
    problems: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    train: int = 0
    val: int = 0
    class_names: list[str] = field(default_factory=list)
    class_frequencies: list[float] = field(default_factory=list)
    class_weights: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cache: dict = field(default_factory=dict)
    seconds: float = 0.0
    files: dict = field(default_factory=dict)


def parallel_map(fn: Callable, items: list, workers: int, desc: str, chunksize: int = 4) -> Iterator:
    """Ordered map over items in `workers` processes (inline when 1), with a progress bar."""
    bar = tqdm(total=len(items), desc=desc, unit="frame", leave=False, disable=None)
    try:
        if workers <= 1:
            for item in items:
                yield fn(item)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent) as pool:
                for res in pool.map(fn, items, chunksize=chunksize):
                    yield res
                    bar.update()
    finally:
        bar.close()


class _MeasurePair:
    """Picklable worker callable for one labelled frame."""

    def __init__(self, scheme_name, ignore_policy, offset, reduce):
        self.scheme_name, self.ignore_policy, self.offset, self.reduce = scheme_name, ignore_policy, offset, reduce

    def __call__(self, frame: Frame) -> dict:
        scheme = load_scheme(self.scheme_name)
        return measure_frame(frame.image, frame.label, scheme, scheme.train_lut(self.ignore_policy),
                             self.offset, self.reduce)


class _MeasureImage:
    def __init__(self, reduce):
        self.reduce = reduce

    def __call__(self, frame: Frame) -> dict:
        return measure_image(frame.image, self.reduce)


def _frame_rows(frames: list[Frame], results: Iterable[dict], class_names: list[str],
                problems: list[dict]) -> list[dict]:
    rows = []
    for frame, res in zip(frames, results):
        if "error" in res:
            problems.append({"file": res["file"], "reason": res["error"]})
            continue
        row = {"image": frame.image, "label": frame.label, "road": frame.road, "record": frame.record,
               "camera": frame.camera, "key": frame.key, "group": frame.group}
        counts = res.pop("counts", None)
        res.pop("ids_present", None)
        if counts is not None:
            row.update({f"px_{n}": c for n, c in zip(class_names, counts)})
        row.update(res)
        rows.append(row)
    return rows


def apply_cleaning(df: pd.DataFrame, max_overexposed: float | None, min_lane_pixels: int) -> tuple[pd.DataFrame, list[dict]]:
    """Drop frames by the config's rules; every dropped frame is listed with its rule."""
    drop = pd.Series("", index=df.index)
    if max_overexposed is not None:
        drop[df["overexposed"] > max_overexposed] = f"overexposed fraction > {max_overexposed}"
    if min_lane_pixels > 0:
        few = (df["lane_pixels"] < min_lane_pixels) & (drop == "")
        drop[few] = f"lane pixels < {min_lane_pixels}"
    dropped = [{"file": df.at[i, "image"], "rule": drop[i]} for i in df.index[drop != ""]]
    return df[drop == ""].reset_index(drop=True), dropped


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_with(path, lambda tmp: df.to_csv(tmp, index=False))


def _cache_jobs(df: pd.DataFrame, folder: Path, cfg, scheme, size: tuple[int, int]) -> list[tuple]:
    """build_entry's arguments for every frame of a list, at one stage size."""
    lut = scheme.train_lut(cfg.data.ignore_policy)
    return [(r.key, r.image, r.label, str(folder), scheme, lut,
             crop_rows(cfg.data.crop_offset, cfg.data.frame_height, int(r.height)), size,
             cfg.data.label_resize, (int(r.width), int(r.height))) for r in df.itertuples()]


def refresh_cache(df: pd.DataFrame, lists_dir: Path, cfg, scheme) -> dict[str, dict]:
    """Before training: in each stage cache that exists, rebuild the entries whose source files
    changed since they were made (size and mtime stamps; an edited label must not be trained on
    from its stale copy). An entry that cannot be rebuilt is removed, so training reads the
    source. Returns {size: counts} for the sizes where anything was rebuilt or removed."""
    summary = {}
    for stage in cfg.stages:
        size = (stage.width, stage.height)
        folder = cache_dir(lists_dir, cfg.data.crop_offset, size, scheme, cfg.data.ignore_policy,
                           cfg.data.label_resize)
        if not folder.is_dir():
            continue
        counts = {"written": 0, "reused": 0, "rebuilt": 0, "error": 0}
        for job in _cache_jobs(df, folder, cfg, scheme, size):
            res = build_entry(job)
            counts[res["status"]] += 1
            if res["status"] == "error":
                for path in cached_paths(folder, job[0]):
                    path.unlink(missing_ok=True)
        if counts["rebuilt"] or counts["written"] or counts["error"]:
            summary[f"{size[0]}x{size[1]}"] = counts
    return summary


def build_cache(df: pd.DataFrame, lists_dir: Path, cfg, scheme, workers: int, problems: list[dict]) -> dict:
    """Write (or reuse) the resized cache for every stage size of the config; each frame that
    could not be cached is added to problems with its reason (training then reads it full size)."""
    summary = {}
    for stage in cfg.stages:
        size = (stage.width, stage.height)
        folder = cache_dir(lists_dir, cfg.data.crop_offset, size, scheme, cfg.data.ignore_policy,
                           cfg.data.label_resize)
        folder.mkdir(parents=True, exist_ok=True)
        write_cache_key(folder, cfg.data.crop_offset, size, scheme, cfg.data.ignore_policy, cfg.data.label_resize)
        jobs = _cache_jobs(df, folder, cfg, scheme, size)
        counts = {"written": 0, "reused": 0, "rebuilt": 0, "error": 0}
        for res in parallel_map(build_entry, jobs, workers, f"cache {size[0]}x{size[1]}"):
            counts[res["status"]] += 1
            if res["status"] == "error":
                problems.append({"file": res["image"], "reason": f"cache {size[0]}x{size[1]} not written: {res['error']}"})
        summary[f"{size[0]}x{size[1]}"] = {"folder": str(folder), **counts}
    return summary


def _write_problems(res: PrepareResult, out: Path) -> None:
    """problems.csv: every skipped file and every frame dropped by a rule, with the reason."""
    problems_df = pd.DataFrame(res.problems + [{"file": d["file"], "reason": f"dropped by rule: {d['rule']}"}
                                               for d in res.dropped], columns=["file", "reason"])
    _write_csv(problems_df, out / "problems.csv")
    res.files["problems"] = str(out / "problems.csv")


def _stats_record(res: PrepareResult, data_root, scheme, cfg, counts, df: pd.DataFrame, train_df: pd.DataFrame,
                  val_df: pd.DataFrame) -> dict:
    """stats.json: what training reads (class weights, scheme, crop) and what the split was."""
    names = scheme.class_names
    return {
        "data_root": str(Path(data_root).resolve()), "scheme": scheme.name, "class_names": names,
        "ignore_policy": cfg.data.ignore_policy, "crop_offset": cfg.data.crop_offset,
        "counts_region": f"rows >= crop_offset ({cfg.data.crop_offset}) of training frames, ignore excluded",
        "class_pixels": [int(c) for c in counts], "class_frequencies": res.class_frequencies,
        "class_weight_method": cfg.prepare.class_weight, "class_weight_formula": FORMULAS[cfg.prepare.class_weight],
        "class_weights": res.class_weights,
        "frames": {"pairs_found": res.pairs_found, "problems": len(res.problems),
                   "dropped": len(res.dropped), "train": res.train, "val": res.val, "test": res.test_images},
        "groups": {"train": sorted(train_df["group"].unique().tolist()), "val": sorted(val_df["group"].unique().tolist())},
        "lane_pixels_above_crop": int(df["lane_pixels_above_crop"].sum()) if len(df) else 0,
        "warnings": res.warnings, "cache": res.cache, "seconds": res.seconds,
    }


def prepare(data_root: str | os.PathLike, out_dir: str | os.PathLike, cfg, workers: int | None = None,
            test_dir: str | os.PathLike | None = None) -> PrepareResult:
    """Scan, validate, measure, clean, split, weigh, write lists; optionally cache."""
    t0 = time.time()
    out = Path(out_dir)
    workers = workers or cfg.prepare.workers
    scheme = load_scheme(cfg.data.scheme)
    names = scheme.class_names
    found = scan(data_root, test_dir, exclude=(out,))  # fails on a missing root before anything is written
    if not found.pairs:
        kinds = sorted({p["reason"].split(":")[0] for p in found.problems})[:3]
        raise UserError(f"{data_root}: no image/label pair found ({len(found.problems)} problem(s)"
                        + (f": {', '.join(kinds)}" if kinds else "") + "); nothing to prepare")
    out.mkdir(parents=True, exist_ok=True)
    res = PrepareResult(out_dir=out, pairs_found=len(found.pairs), test_images=len(found.test_images),
                        problems=list(found.problems), class_names=names)

    measure = _MeasurePair(cfg.data.scheme, cfg.data.ignore_policy, cfg.data.crop_offset, cfg.prepare.stats_reduce)
    rows = _frame_rows(found.pairs, parallel_map(measure, found.pairs, workers, "validate+stats"), names, res.problems)
    px_cols = [f"px_{n}" for n in names]
    df = pd.DataFrame(rows, columns=LIST_COLUMNS + px_cols + ["width", "height", "lane_pixels",
                                                              "lane_pixels_above_crop", "lane_fraction",
                                                              "ignore_pixels", "brightness", "overexposed"])
    df, res.dropped = apply_cleaning(df, cfg.prepare.clean.max_overexposed_fraction, cfg.prepare.clean.min_lane_pixels)
    if df.empty:
        _write_problems(res, out)
        raise UserError(f"{data_root}: none of the {res.pairs_found} pairs is usable ({len(res.problems)} problem(s), "
                        f"{len(res.dropped)} dropped by rules); see {out / 'problems.csv'}")
    is_val, res.warnings = split_by_group(df, px_cols, cfg.prepare.val_fraction, cfg.prepare.seed)
    train_df, val_df = df[~is_val].reset_index(drop=True), df[is_val].reset_index(drop=True)
    res.train, res.val = len(train_df), len(val_df)

    counts = train_df[px_cols].sum().to_numpy() if len(train_df) else [0] * len(names)
    total = float(sum(counts)) or 1.0
    res.class_frequencies = [float(c) / total for c in counts]
    res.class_weights = class_weights(counts, cfg.prepare.class_weight)

    _write_csv(train_df, out / "train.csv")
    _write_csv(val_df, out / "val.csv")
    res.files = {"train": str(out / "train.csv"), "val": str(out / "val.csv")}
    if found.test_images:
        trows = _frame_rows(found.test_images, parallel_map(_MeasureImage(cfg.prepare.stats_reduce),
                                                            found.test_images, workers, "test images"),
                            names, res.problems)
        _write_csv(pd.DataFrame(trows), out / "test.csv")
        res.files["test"] = str(out / "test.csv")
    if cfg.prepare.cache and len(df):
        res.cache = build_cache(df, out, cfg, scheme, workers, res.problems)
    res.seconds = round(time.time() - t0, 2)
    _write_problems(res, out)
    stats = _stats_record(res, data_root, scheme, cfg, counts, df, train_df, val_df)
    atomic_write_json(out / "stats.json", stats)
    res.files["stats"] = str(out / "stats.json")
    return res


def summary_table(res: PrepareResult) -> str:
    """The console summary: counts, skipped with reasons, class table, split, files."""
    lines = [f"pairs found      : {res.pairs_found}", f"test images      : {res.test_images}",
             f"problems skipped : {len(res.problems)}", f"dropped by rules : {len(res.dropped)}"]
    reasons: dict[str, int] = {}
    for p in res.problems:
        kind = p["reason"].split(":")[0].split("(")[0].strip() if ":" in p["reason"] else p["reason"]
        reasons[kind] = reasons.get(kind, 0) + 1
    for d in res.dropped:
        reasons[f"rule: {d['rule']}"] = reasons.get(f"rule: {d['rule']}", 0) + 1
    lines += [f"  {n:4d}  {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])]
    lines.append(f"split            : train {res.train} frames, val {res.val} frames (by record)")
    lines.append("")
    lines.append(f"{'id':>3}  {'class':<28}{'frequency':>12}{'weight':>10}")
    for i, (n, f, w) in enumerate(zip(res.class_names, res.class_frequencies, res.class_weights)):
        lines.append(f"{i:>3}  {n:<28}{f:>12.6f}{w:>10.4f}")
    lines += ["", *[f"warning: {w}" for w in res.warnings]]
    for size, c in res.cache.items():
        lines.append(f"cache {size:<10}: {c['written']} written, {c['reused']} reused, {c['rebuilt']} rebuilt "
                     f"(source changed), {c['error']} errors -> {c['folder']}")
    lines += [f"{k:<8} -> {v}" for k, v in res.files.items()]
    lines.append(f"done in {res.seconds:.1f} s")
    return "\n".join(lines)
