"""Submission folder: one full-size Apollo-id PNG per test image, named as its label would
be, written atomically and resumable; optional overlays; a zip at the end; a validator
that checks a folder against the test list before it is uploaded."""
from __future__ import annotations

import os
import time
import zipfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from paddle_lane.core.apollo_files import LABEL_NAME_SUFFIX, is_image_name, is_label_file
from paddle_lane.core.io_utils import atomic_path, atomic_write_jpeg, atomic_write_png
from paddle_lane.core.label_io import UnreadableFileError, image_size, read_image
from paddle_lane.core.labels import Scheme, known_id_mask, load_scheme
from paddle_lane.core.resize import FULL_SIZE
from paddle_lane.core.visual import overlay as overlay_image

OVERLAY_DIR = "overlay"
MAX_NAMES_SHOWN = 5


# ----------------------------------------------------------------------------- names
def output_name(image_path: str, name_suffix: str = LABEL_NAME_SUFFIX) -> str:
    """<image stem><suffix>: the name the label of that image would have."""
    return Path(image_path).stem + name_suffix


def zip_path_for(out_dir: str | Path) -> Path:
    """The zip written beside the submission folder: <out_dir>.zip."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.zip"


def _check_unique(names: list[str], images: Sequence[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for name, (_, path) in zip(names, images):
        if name in seen:
            raise ValueError(f"two input images map to the same output {name}: {seen[name]} and {path}")
        seen[name] = path


# ----------------------------------------------------------------------------- resume
def is_finished(out_path: Path, expected_size: tuple[int, int]) -> bool:
    """True when out_path is a complete gray PNG of the expected (w, h)."""
    if not out_path.is_file():
        return False
    try:
        with Image.open(out_path) as im:
            im.load()
            return im.mode == "L" and im.size == tuple(expected_size)
    except (OSError, SyntaxError):
        return False


def _already_done(image_path: str, out_path: Path, overlay_path: Path | None) -> bool:
    try:
        size = image_size(image_path)
    except UnreadableFileError:
        return False  # predicted (and reported) again
    return is_finished(out_path, size) and (overlay_path is None or overlay_path.is_file())


# ----------------------------------------------------------------------------- writing
def _write_outputs(probs: np.ndarray, full_size: tuple[int, int], predictor, out_path: Path,
                   image_path: str, overlay_path: Path | None) -> None:
    """Full-size ids (bilinear up, argmax, decode) written atomically; the overlay if asked."""
    train_ids = predictor.to_train_ids(probs, full_size)
    atomic_write_png(out_path, predictor.scheme.decode(train_ids))
    if overlay_path is not None:
        rgb = read_image(image_path)
        atomic_write_jpeg(overlay_path, overlay_image(rgb, train_ids, predictor.scheme.palette()), 90)


def write_zip(files: Sequence[Path], zip_path: Path) -> Path:
    """Zip the files flat (stored: PNGs are already compressed), temp file then rename."""
    with atomic_path(zip_path, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for f in files:
                zf.write(f, arcname=f.name)
    return zip_path


def write_submission(predictor, images: Sequence[tuple[str, str]], out_dir: str | Path,
                     name_suffix: str = LABEL_NAME_SUFFIX, overlay: bool = False, zip_output: bool = True,
                     workers: int = 2, batch_size: int | None = None, num_workers: int | None = None,
                     progress: bool = True) -> dict:
    """Predict every (key, image_path) into out_dir; skip outputs already complete.

    The model runs in this thread while up-sampling, PNG encoding and writing run in
    `workers` threads (OpenCV and numpy release the GIL), so the model rarely waits.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob(".*.png.*"), *out_dir.glob(f"{OVERLAY_DIR}/.*.jpg.*")]:
        stale.unlink(missing_ok=True)  # temp files of a killed run (atomic writes: never a final name)
    names = [output_name(path, name_suffix) for _, path in images]
    _check_unique(names, images)
    outs = [out_dir / n for n in names]
    overlays = [out_dir / OVERLAY_DIR / (Path(n).stem + ".jpg") if overlay else None for n in names]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = list(pool.map(lambda i: _already_done(images[i][1], outs[i], overlays[i]), range(len(images))))
    todo = [i for i in range(len(images)) if not done[i]]
    failed = _predict_and_write(predictor, images, todo, outs, overlays, workers, batch_size, num_workers, progress)
    failed_idx = {i for i, _ in failed}
    summary = {
        "out_dir": str(out_dir), "images": len(images), "skipped": sum(done),
        "written": len(todo) - len(failed), "failed": [{"key": images[i][0], "image": images[i][1], "error": e}
                                                       for i, e in failed],
        "zip": None, "seconds": 0.0,
    }
    if zip_output:
        present = [o for i, o in enumerate(outs) if i not in failed_idx and o.is_file()]
        summary["zip"] = str(write_zip(present, zip_path_for(out_dir)))
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def _predict_and_write(predictor, images, todo, outs, overlays, workers, batch_size, num_workers,
                       progress) -> list[tuple[int, str]]:
    """Run the predictor over the images still to do; returns (index, error) of unreadable ones."""
    failed: list[tuple[int, str]] = []
    if not todo:
        return failed
    paths = [images[i][1] for i in todo]
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for res in predictor.predict_files(paths, batch_size, num_workers, progress):
            i = todo[res.index]
            if res.error is not None:
                failed.append((i, res.error))
                continue
            pending.append(pool.submit(_write_outputs, res.probs, res.full_size, predictor, outs[i],
                                       images[i][1], overlays[i]))
            while len(pending) > 2 * max(1, workers):  # bound memory: a few frames in flight
                pending.popleft().result()
        for fut in pending:
            fut.result()
    return failed


# ----------------------------------------------------------------------------- validation
def _expected_entry(item: str, name_suffix: str) -> tuple[str, tuple[int, int]]:
    """(output name, expected (w, h)) for an image path or a key."""
    p = Path(str(item))
    if is_image_name(p) or p.is_file():
        try:
            size = image_size(p) if p.is_file() else FULL_SIZE
        except UnreadableFileError:
            size = FULL_SIZE
        return p.stem + name_suffix, size
    return str(item) + name_suffix, FULL_SIZE


def check_png(path: Path, size: tuple[int, int], allowed: np.ndarray, hint: str = "") -> list[str]:
    """Problems of one output PNG: format, size, mode/dtype, ids outside the label table."""
    try:
        with Image.open(path) as im:
            im.load()
            fmt, mode, got = im.format, im.mode, im.size
            arr = np.asarray(im) if mode == "L" else None
    except (OSError, SyntaxError) as exc:
        return [f"{path.name}: unreadable PNG ({exc})"]
    problems = []
    if fmt != "PNG":
        problems.append(f"{path.name}: file format {fmt}, expected PNG")
    if got != tuple(size):
        problems.append(f"{path.name}: size {got[0]}x{got[1]}, expected {size[0]}x{size[1]}")
    if mode != "L":
        problems.append(f"{path.name}: image mode {mode}, expected 'L' (one uint8 Apollo id per pixel)")
    else:
        counts = np.bincount(arr.ravel(), minlength=256)
        bad = np.flatnonzero((counts > 0) & ~allowed)
        if bad.size:
            problems.append(f"{path.name}: id(s) {bad.tolist()} not in the Apollo label table{hint}")
    return problems


def _names_line(kind: str, names: list[str], what: str) -> str:
    shown = ", ".join(names[:MAX_NAMES_SHOWN]) + (f", ... ({len(names) - MAX_NAMES_SHOWN} more)"
                                                  if len(names) > MAX_NAMES_SHOWN else "")
    return f"{kind}: {len(names)} {what}: {shown}"


def validate_submission(out_dir: str | Path, expected: Sequence[str], name_suffix: str = LABEL_NAME_SUFFIX,
                        scheme: Scheme | str = "apollo8", workers: int = 2) -> list[str]:
    """Problems of a submission folder against the test list (image paths or keys); [] = ready."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return [f"submission folder not found: {out_dir}"]
    scheme = load_scheme(scheme) if isinstance(scheme, str) else scheme
    hint = f" (scheme {scheme.name} writes {sorted({c.submit_id for c in scheme.classes})})"
    wanted = dict(_expected_entry(item, name_suffix) for item in expected)
    present = {p.name: p for p in out_dir.glob("*.png") if not p.name.startswith(".")}
    problems = []
    if len(present) != len(wanted):
        problems.append(f"count: {len(present)} PNG(s) in {out_dir}, {len(wanted)} expected")
    missing = sorted(set(wanted) - set(present))
    extra = sorted(set(present) - set(wanted))
    if missing:
        problems.append(_names_line("missing", missing, "expected file(s) absent"))
    if extra:
        problems.append(_names_line("extra", extra, "file(s) not in the test list"))
    allowed = known_id_mask()
    checks = sorted(set(wanted) & set(present))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for found in pool.map(lambda n: check_png(present[n], wanted[n], allowed, hint), checks):
            problems.extend(found)
    return problems


def list_images(folder: str | Path, exclude: Sequence[str | Path] = ()) -> list[tuple[str, str]]:
    """(key, path) for every *.jpg/*.jpeg/*.png under folder (recursive), sorted by path; label
    files and the `exclude` folders (the command's own output) are left out, and said so."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    excluded = [Path(e).resolve() for e in exclude]
    files, labels, own = [], 0, 0
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or not is_image_name(p) or p.name.startswith("."):
            continue
        if any(p.resolve().is_relative_to(e) for e in excluded):
            own += 1
        elif is_label_file(p, folder):
            labels += 1
        else:
            files.append(p)
    if labels or own:
        print(f"{folder}: {len(files)} images; skipped {labels} label file(s) (Label folders, *_bin.png)"
              + (f" and {own} file(s) in the output folder" if own else ""))
    if not files:
        raise ValueError(f"no *.jpg or *.png images under {folder}"
                         + (f" (only {labels} label files)" if labels else ""))
    return [(p.stem, str(p)) for p in files]


def format_summary(summary: dict) -> str:
    """A few lines for the console."""
    n_done = summary["written"] + summary["skipped"]
    rate = summary["written"] / summary["seconds"] if summary["seconds"] > 0 else 0.0
    lines = [f"submission: {n_done}/{summary['images']} images in {summary['out_dir']} "
             f"({summary['written']} written, {summary['skipped']} already done, {len(summary['failed'])} failed) "
             f"in {summary['seconds']:.1f} s ({rate:.2f} img/s)"]
    for f in summary["failed"]:
        lines.append(f"  failed: {f['key']}: {f['error']}")
    if summary.get("zip"):
        lines.append(f"zip: {summary['zip']} ({os.path.getsize(summary['zip']) / 1e6:.1f} MB)")
    return "\n".join(lines)
