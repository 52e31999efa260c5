"""paddle.io datasets over prepare's lists, and a seeded, resumable, rank-aware sampler."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import paddle

from paddle_lane.core.procs import loader_worker
from paddle_lane.core.resize import FULL_SIZE
from paddle_lane.data.transforms import FrameSource, augment, normalize


def loader_worker_init(worker_id: int) -> None:
    """Loader workers die with the trainer and leave SIGTERM/SIGINT to it. OpenCV is not touched
    here: its thread count (1) is inherited from the parent (paddle_lane/core/__init__.py), and resizing
    the inherited pool in a forked child is what deadlocked."""
    loader_worker(worker_id)


def read_list(path: str | Path, need_labels: bool = True, allow_empty: bool = False) -> pd.DataFrame:
    """A prepare list as a DataFrame; clear errors when missing or (unless allowed) empty."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"list not found: {path} (run `./run.sh prepare` first)")
    try:
        df = pd.read_csv(path, keep_default_na=False)
    except pd.errors.EmptyDataError:
        df = pd.DataFrame()
    if df.empty:
        if allow_empty:
            return df
        raise ValueError(f"list is empty: {path}")
    cols = ["image", "key"] + (["label"] if need_labels else [])
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return df


class LaneDataset(paddle.io.Dataset):
    """Frames of a list at one stage size; `train=True` applies the augmentations.

    Items are addressed by global sample id `epoch * len + index` (see StageBatchSampler);
    augmentation randomness comes from (seed, epoch, index) alone, so a resumed run and a
    run with a different number of loader workers draw identical samples.
    """

    def __init__(self, df: pd.DataFrame, source: FrameSource, mean, std, augment_cfg=None,
                 seed: int = 0, with_labels: bool = True):
        super().__init__()
        self.rows = df[[c for c in ("key", "image", "label", "width", "height") if c in df.columns]].to_dict("records")
        self.source, self.mean, self.std = source, mean, std
        self.augment_cfg, self.seed = augment_cfg, seed
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, gid: int):
        """uint8 image and label at the stage size, augmented when training."""
        epoch, idx = divmod(int(gid), len(self.rows))
        row = self.rows[idx]
        full = (int(row.get("width") or FULL_SIZE[0]), int(row.get("height") or FULL_SIZE[1]))
        rgb, lab = self.source.load(row["key"], row["image"], row.get("label") if self.with_labels else None, full)
        if self.augment_cfg is not None and lab is not None:
            rng = np.random.default_rng([self.seed, epoch, idx])
            rgb, lab = augment(rgb, lab, self.augment_cfg, rng)
        return rgb, lab

    def __getitem__(self, idx: int):
        """Normalised float32 CHW image (numpy in the worker beats Paddle's CPU ops in the main
        process) and a uint8 label (8x less data across processes than int64; cast on use)."""
        rgb, lab = self.load(idx)
        image = normalize(rgb, self.mean, self.std)
        if lab is None:
            return image, np.int64(idx)
        return image, lab


class StageBatchSampler(paddle.io.BatchSampler):
    """Exactly `total_batches` batches for one rank over as many epochs as needed.

    Each epoch is a seeded permutation (or a weighted draw, for oversampling) split across
    ranks like DistributedBatchSampler. Items are global sample ids `epoch * n + index`,
    so the dataset knows the epoch without being told (workers stay persistent), and a
    resumed run starts at `start_batch` with exactly the batches the full run would draw.
    """

    def __init__(self, num_samples: int, batch_size: int, total_batches: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 weights: np.ndarray | None = None, start_batch: int = 0):
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.batch_size, self.total, self.start = num_samples, batch_size, total_batches, start_batch
        self.rank, self.world, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.weights = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of one epoch, as global sample ids."""
        rng = np.random.default_rng([self.seed, epoch])
        if not self.shuffle:
            order = np.arange(self.n)
        elif self.weights is not None:
            order = rng.choice(self.n, size=self.n, replace=True, p=self.weights)
        else:
            order = rng.permutation(self.n)
        per_rank = math.ceil(len(order) / self.world)
        if per_rank * self.world > len(order):  # pad by wrapping so every rank gets the same count
            order = np.resize(order, per_rank * self.world)
        mine = (order[self.rank::self.world] + epoch * self.n).tolist()
        if len(mine) >= self.batch_size:  # drop the ragged tail: every step sees a full batch
            mine = mine[: len(mine) // self.batch_size * self.batch_size]
        return [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]

    def __iter__(self):
        produced, epoch = 0, 0
        while produced < self.total:
            for batch in self.epoch_batches(epoch):
                if produced >= self.start:
                    yield batch
                produced += 1
                if produced >= self.total:
                    return
            epoch += 1

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def rare_class_weights(df: pd.DataFrame, class_names: list[str], boost: float) -> np.ndarray | None:
    """Sampling weight 1 + boost for frames holding a rare lane class (below the median
    frequency of lane classes), else 1."""
    if boost <= 0:
        return None
    cols = [f"px_{n}" for n in class_names[1:] if f"px_{n}" in df.columns]
    if not cols:
        return None
    totals = df[cols].sum()
    present = totals[totals > 0]
    rare = present[present < present.median()].index.tolist() if len(present) > 1 else []
    has_rare = (df[rare] > 0).any(axis=1).to_numpy() if rare else np.zeros(len(df), bool)
    return 1.0 + boost * has_rare
