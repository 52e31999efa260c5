"""The images a verb runs on: a folder of frames or a prepare list CSV, as (key, path) pairs."""
from __future__ import annotations

from collections.abc import Sequence

from paddle_lane.data.dataset import read_list
from paddle_lane.inference.submission import list_images


def images_from(images_dir: str | None, list_csv: str | None, exclude: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(key, image path) from a folder (recursive *.jpg/*.png, labels and `exclude` skipped) or a
    prepare list CSV."""
    if bool(images_dir) == bool(list_csv):
        raise ValueError("give exactly one of an images folder or a list CSV")
    if images_dir:
        return list_images(images_dir, exclude)
    df = read_list(list_csv, need_labels=False)
    return list(zip(df["key"].astype(str), df["image"].astype(str)))
