"""Find image/label pairs in the competition's folder layouts.

Training layout (folder names contain spaces):
    Road0X/ColorImage_road0X/ColorImage/RecordNNN/Camera N/<ts>_Camera_N.jpg
    Gray_Label/Label_road0X/Label/RecordNNN/Camera N/<ts>_Camera_N_bin.png      (preferred)
    Road0X/Labels_road0X/Label/RecordNNN/Camera N/<ts>_Camera_N_bin.png         (older, often palette)
Images outside a ColorImage_road folder (e.g. a flat test folder) are test images.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from paddle_lane.core.apollo_files import frame_key, is_image_name, is_label_name

_ROAD_RE = re.compile(r"road[ _]?0*(\d+)", re.IGNORECASE)
_RECORD_RE = re.compile(r"^record\s*\d+$", re.IGNORECASE)
_CAMERA_RE = re.compile(r"^camera[ _]?\d+$", re.IGNORECASE)


@dataclass
class Frame:
    key: str
    image: str
    label: str = ""
    label_alt: str = ""
    road: str = ""
    record: str = ""
    camera: str = ""

    @property
    def group(self) -> str:
        """Split unit: frames of one record are near-duplicates and stay together."""
        return f"{self.road}/{self.record}"


@dataclass
class ScanResult:
    pairs: list[Frame] = field(default_factory=list)
    test_images: list[Frame] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)


def _parts_info(path: Path) -> dict:
    """road / record / camera parsed from the folder names of a path."""
    info = {"road": "", "record": "", "camera": ""}
    for part in path.parts[:-1]:
        low = part.lower()
        if not info["road"] and ("road" in low) and _ROAD_RE.search(part):
            info["road"] = f"road{int(_ROAD_RE.search(part).group(1)):02d}"
        if _RECORD_RE.match(part):
            info["record"] = part
        if _CAMERA_RE.match(part):
            info["camera"] = part
    return info


def _is_training_image(path: Path) -> bool:
    return any(p.lower().startswith("colorimage_road") for p in path.parts)


def _label_rank(path: Path) -> int:
    """Lower is preferred: Gray_Label first, then the older Labels_road tree."""
    return 0 if any(p.lower() == "gray_label" for p in path.parts) else 1


def _walk(root: Path, exclude: tuple[Path, ...] = ()):
    """Files under root, sorted; the `exclude` folders (a command's own output) and hidden
    entries (the project's temp files start with '.') are skipped."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and (Path(dirpath) / d).resolve() not in exclude)
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def scan(root: str | os.PathLike, test_dir: str | os.PathLike | None = None,
         exclude: tuple[str | os.PathLike, ...] = ()) -> ScanResult:
    """Pair images with labels by key (file stem), reporting what does not pair; the
    `exclude` folders (prepare's own output, when it lies inside the data root) are skipped."""
    exclude = tuple(Path(e).resolve() for e in exclude)
    root = Path(root).resolve()  # lists hold absolute paths: they work from any folder
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found or not a folder: {root}")
    result = ScanResult()
    images: dict[str, Path] = {}
    tests: list[Path] = []
    labels: dict[str, list[Path]] = {}
    for path in _walk(root, exclude):
        if test_dir is not None and Path(test_dir).resolve() in path.resolve().parents:
            continue
        rel = path.relative_to(root)  # folder names above the data root say nothing about a file
        if is_label_name(path):
            labels.setdefault(frame_key(path), []).append(path)
        elif is_image_name(path) and "label" not in str(rel.parent).lower():
            if _is_training_image(rel):
                if path.stem in images:
                    result.problems.append({"file": str(path), "reason": f"duplicate image key {path.stem} (kept {images[path.stem]})"})
                    continue
                images[path.stem] = path
            else:
                tests.append(path)
    if test_dir is not None:
        tdir = Path(test_dir).resolve()
        if not tdir.is_dir():
            raise FileNotFoundError(f"test folder not found: {tdir}")
        tests = [p for p in _walk(tdir, exclude) if is_image_name(p) and not is_label_name(p)]

    for key in sorted(images):
        img = images[key]
        cands = sorted(labels.pop(key, []), key=lambda p: (_label_rank(p), str(p)))
        info = _parts_info(img.relative_to(root))
        if not cands:
            result.problems.append({"file": str(img), "reason": "missing label (no *_bin.png with this key)"})
            continue
        result.pairs.append(Frame(key=key, image=str(img), label=str(cands[0]),
                                  label_alt=str(cands[1]) if len(cands) > 1 else "", **info))
    for key in sorted(labels):
        for lab in labels[key]:
            result.problems.append({"file": str(lab), "reason": "label without image"})
    test_root = Path(test_dir).resolve() if test_dir is not None else root
    for img in sorted(tests):
        result.test_images.append(Frame(key=img.stem, image=str(img), **_parts_info(img.relative_to(test_root))))
    return result
