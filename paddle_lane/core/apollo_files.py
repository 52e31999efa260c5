"""How files of the Apollo layout are told apart by name: which are images, which are labels
(`<key>_bin.png`, or anything under a label folder), and the key that pairs an image with its label."""
from __future__ import annotations

from pathlib import Path

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
LABEL_SUFFIX = "_bin"                     # <ts>_Camera_N.jpg <-> <ts>_Camera_N_bin.png
LABEL_NAME_SUFFIX = LABEL_SUFFIX + ".png"


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def is_label_name(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(LABEL_NAME_SUFFIX)


def frame_key(path: str | Path) -> str:
    """The stem an image and its label share: the label's stem without its _bin suffix."""
    stem = Path(path).stem
    return stem[: -len(LABEL_SUFFIX)] if stem.lower().endswith(LABEL_SUFFIX) else stem


def is_label_file(path: Path, root: Path) -> bool:
    """A label of the Apollo tree: a *_bin.png, or anything under a folder named Label,
    Labels_roadNN, Gray_Label or Label_roadNN (a dataset root holds images and labels together)."""
    parts = [p.lower() for p in path.relative_to(root).parts[:-1]]
    return is_label_name(path) or any(
        p == "label" or p == "gray_label" or p.startswith(("labels_road", "label_road")) for p in parts)
