"""Sample loading and augmentation, numpy/cv2 only. Training, validation and inference
all go through `load_frame` + `normalize`, so the geometry and colour handling at
inference is exactly the training one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from paddle_lane.core.label_io import read_image, read_label
from paddle_lane.core.labels import IGNORE_INDEX, Scheme, load_scheme
from paddle_lane.core.resize import FULL_SIZE, crop_rows
from paddle_lane.prepare.cache import cache_dir, cached_paths, load_resized



@dataclass
class FrameSource:
    """How to get a frame at one stage size: from prepare's cache if present, else full size."""
    scheme: Scheme
    train_lut: np.ndarray
    offset: int
    size: tuple[int, int]
    label_resize: str
    cache_folder: Path | None = None
    frame_height: int = FULL_SIZE[1]  # the frame height `offset` is measured in

    @classmethod
    def from_config(cls, cfg, size: tuple[int, int]) -> "FrameSource":
        scheme = load_scheme(cfg.data.scheme)
        folder = None
        if cfg.data.use_cache:
            folder = cache_dir(cfg.data.lists_dir, cfg.data.crop_offset, size, scheme,
                               cfg.data.ignore_policy, cfg.data.label_resize)
            folder = folder if folder.is_dir() else None
        return cls(scheme, scheme.train_lut(cfg.data.ignore_policy), cfg.data.crop_offset, size,
                   cfg.data.label_resize, folder, cfg.data.frame_height)

    def load(self, key: str, image: str, label: str | None, full_size=FULL_SIZE):
        """(rgb uint8 HxWx3, train ids uint8 HxW or None) at this stage size."""
        if self.cache_folder is not None:
            img_path, lab_path = cached_paths(self.cache_folder, key)
            if img_path.exists() and (label is None or lab_path.exists()):
                rgb = read_image(img_path)
                return rgb, (read_label(lab_path) if label else None)
        return load_resized(image, label or None, self.train_lut,
                            crop_rows(self.offset, self.frame_height, full_size[1]), self.size,
                            self.label_resize, full_size)


def normalize(rgb: np.ndarray, mean, std) -> np.ndarray:
    """uint8 HxWx3 -> float32 3xHxW, (x/255 - mean) / std."""
    # transpose the uint8 first (4x less memory traffic), then one fused scale and shift
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32)
    scale = (1.0 / (255.0 * np.asarray(std, np.float32))).reshape(3, 1, 1)
    shift = (np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(3, 1, 1)
    x *= scale
    x -= shift
    return x


def denormalize(chw: np.ndarray, mean, std) -> np.ndarray:
    """Inverse of normalize, for visualisation."""
    x = chw.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- augmentation
def random_scale_crop(rgb, lab, scale_range, rng) -> tuple[np.ndarray, np.ndarray]:
    """Rescale by a random factor, then crop (or pad with ignore) back to the input size."""
    lo, hi = scale_range
    if lo == hi == 1.0:
        return rgb, lab
    h, w = lab.shape
    s = float(rng.uniform(lo, hi))
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    lab = cv2.resize(lab, (nw, nh), interpolation=cv2.INTER_NEAREST_EXACT)  # centre-aligned, as the image
    if nh < h or nw < w:
        ph, pw = max(0, h - nh), max(0, w - nw)
        rgb = cv2.copyMakeBorder(rgb, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        lab = cv2.copyMakeBorder(lab, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    y = int(rng.integers(0, rgb.shape[0] - h + 1))
    x = int(rng.integers(0, rgb.shape[1] - w + 1))
    return rgb[y:y + h, x:x + w], lab[y:y + h, x:x + w]


def color_jitter(rgb, strength, rng) -> np.ndarray:
    """Random brightness, contrast and saturation, each by up to +-strength."""
    b, c, s = 1.0 + rng.uniform(-strength, strength, size=3)
    x = rgb.astype(np.float32)
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * s                       # saturation
    x = (x - x.mean()) * c + x.mean()               # contrast
    x = x * b                                       # brightness
    return np.clip(x, 0, 255).astype(np.uint8)


def cutout(rgb, lab, rng, max_frac: float = 0.25):
    """Blank one random box; its label becomes ignore (nothing there to learn from)."""
    h, w = lab.shape
    bh, bw = int(rng.integers(1, max(2, int(h * max_frac)))), int(rng.integers(1, max(2, int(w * max_frac))))
    y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    rgb, lab = rgb.copy(), lab.copy()
    rgb[y:y + bh, x:x + bw] = 0
    lab[y:y + bh, x:x + bw] = IGNORE_INDEX
    return rgb, lab


def augment(rgb: np.ndarray, lab: np.ndarray, aug, rng: np.random.Generator):
    """Apply the config's augmentations in a fixed order with the given generator."""
    rgb, lab = random_scale_crop(rgb, lab, aug.scale, rng)
    if aug.hflip > 0 and rng.random() < aug.hflip:
        rgb, lab = rgb[:, ::-1], lab[:, ::-1]
    if aug.color_jitter > 0:
        rgb = color_jitter(rgb, aug.color_jitter, rng)
    if aug.blur > 0 and rng.random() < aug.blur:
        k = int(rng.choice([3, 5]))
        rgb = cv2.GaussianBlur(np.ascontiguousarray(rgb), (k, k), 0)
    if aug.noise > 0:
        noise = rng.normal(0.0, aug.noise * 255.0, size=rgb.shape).astype(np.float32)
        rgb = np.clip(rgb.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if aug.cutout > 0 and rng.random() < aug.cutout:
        rgb, lab = cutout(rgb, lab, rng)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(lab)
