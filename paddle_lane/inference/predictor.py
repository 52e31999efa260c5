"""Predictor: one or more checkpoints, flip and multi-scale TTA, a weighted streaming
ensemble of softmax probabilities (kept in memory, never written to disk), and the
full-size post-processing shared with the alignment check.

Inputs are prepared exactly as in training: crop the top `data.crop_offset` rows, resize
with paddle_lane.core.resize (after the same reduced JPEG decode that paddle_lane.prepare.cache uses),
normalize with data.mean/std.

Each checkpoint is built from its own run's config.yml (model, input size, mean/std), so an
ensemble may mix architectures; the --config decides what members must share (scheme, crop)
and the TTA.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F
from tqdm import tqdm

from paddle_lane.config import CONFIG_FILE, ConfigError, load_config
from paddle_lane.core.label_io import UnreadableFileError, image_size
from paddle_lane.core.labels import load_scheme
from paddle_lane.core.procs import loader_worker, watched
from paddle_lane.core.resize import FULL_SIZE, crop_rows
from paddle_lane.device import select_device
from paddle_lane.models import build_model
from paddle_lane.runs.checkpoint import load_weights, read_state, resolve_weights

from paddle_lane.inference.geometry import (  # noqa: F401 (re-exported for callers of the predictor)
    InputKey, Size, inputs_from_array, inputs_from_bytes, inputs_from_file, normalize_weights, normalized_inputs,
    probs_to_ids, probs_to_train_ids, scale_weights, scaled_size, window_starts)


# ----------------------------------------------------------------------------- models
@dataclass
class Member:
    """One ensemble member: a network in eval mode (or an exported graph's runner: NCHW input
    tensor -> NCHW logits tensor), its inference size, weight and normalization."""
    model: Callable[[paddle.Tensor], paddle.Tensor]
    size: Size
    weight: float
    name: str
    mean: tuple
    std: tuple
    arch: str = ""              # the model section it was built from, for describe()
    config: str | None = None   # the config file it was built from (None: the --config, by fallback)
    origin: str = ""            # where its model, size and mean/std came from, in words
    sha256: str | None = None   # the checkpoint's content hash when known (exports record it)


def model_label(model_cfg) -> str:
    """'deeplabv3p ResNet50_vd os8', 'unet', 'lite width 16': a model section in a few words."""
    if model_cfg.name in ("deeplabv3p", "fcn"):
        return f"{model_cfg.name} {model_cfg.backbone} os{model_cfg.output_stride}"
    if model_cfg.name == "paddleseg":
        return f"paddleseg {model_cfg.type}"
    return f"lite width {model_cfg.width}" if model_cfg.name == "lite" else model_cfg.name


def run_config_path(checkpoint: str | Path) -> Path | None:
    """The config.yml a checkpoint was trained with: in its folder, beside it, or two levels up
    (RUN/config.yml for RUN/stageN/best or a .pdparams inside it); None when there is none."""
    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder / CONFIG_FILE, folder.parent / CONFIG_FILE, folder.parent.parent / CONFIG_FILE):
        if candidate.is_file():
            return candidate
    return None


def check_member_config(cfg, own, checkpoint: str, path: str) -> None:
    """Refuse a member config whose scheme or crop differs from the --config (one line)."""
    theirs, mine = load_scheme(own.data.scheme), load_scheme(cfg.data.scheme)
    if theirs != mine:
        raise ValueError(f"{checkpoint}: data.scheme is {own.data.scheme!r} ({theirs.num_classes} classes) in "
                         f"{path} but {cfg.data.scheme!r} ({mine.num_classes} classes) in {cfg.source}; "
                         f"ensemble members must share the scheme")
    a, b = (own.data.crop_offset, own.data.frame_height), (cfg.data.crop_offset, cfg.data.frame_height)
    if a[0] * b[1] != b[0] * a[1]:  # the same fraction of the frame is the same crop (345/855 = 690/1710)
        raise ValueError(f"{checkpoint}: data.crop_offset is {a[0]} of data.frame_height {a[1]} rows in {path} "
                         f"but {b[0]} of {b[1]} in {cfg.source}; ensemble members must share the crop")


def member_config(cfg, checkpoint: str, explicit: str | None = None):
    """(config, its path) a checkpoint is built from: `explicit`, else its run's config.yml, else
    (cfg, None). A config with another scheme or crop than cfg is refused."""
    path = explicit or run_config_path(checkpoint)
    if path is None:
        return cfg, None
    try:
        own = load_config(path)
    except ConfigError as exc:
        raise ConfigError(f"{checkpoint}: {exc}") from None
    check_member_config(cfg, own, checkpoint, str(path))
    return own, str(path)


def checkpoint_member(cfg, checkpoint: str, num_classes: int, explicit: str | None = None) -> Member:
    """A checkpoint as an ensemble member (weight 1 until the ensemble scales it)."""
    resolve_weights(checkpoint)  # a mistyped path is "not found", not a config found near it
    own, path = member_config(cfg, checkpoint, explicit)
    origin = f"config {path}" if path else \
        f"no {CONFIG_FILE} in, beside or two levels above it: model, size and mean/std of {cfg.source}"
    return Member(load_checkpoint_model(own, checkpoint, num_classes), checkpoint_size(own, checkpoint), 1.0,
                  str(checkpoint), _floats(own.data.mean), _floats(own.data.std), model_label(own.model), path, origin)


def _floats(values) -> tuple:
    return tuple(float(v) for v in values)


def checkpoint_size(cfg, checkpoint: str | Path) -> Size:
    """A checkpoint's inference size: state.json "size", else the size of cfg's stage infer.stage."""
    path = Path(checkpoint)
    state = read_state(path if path.is_dir() else path.parent)
    if state.get("size"):
        w, h = state["size"]
        return int(w), int(h)
    st = cfg.stages[cfg.infer.stage]
    return st.width, st.height


def load_checkpoint_model(cfg, checkpoint: str | Path, num_classes: int) -> paddle.nn.Layer:
    """cfg.model's network with the checkpoint's weights (pretrained files are not fetched)."""
    model_cfg = dataclasses.replace(cfg.model, pretrained=None, backbone_pretrained=None, sync_bn=False)
    model = build_model(model_cfg, num_classes)
    load_weights(model, checkpoint)
    model.eval()
    return model


def _in_eval_mode(model: paddle.nn.Layer) -> paddle.nn.Layer:
    model.eval()
    return model


# ----------------------------------------------------------------------------- predictor
class Predictor:
    """Weighted ensemble of checkpoints with flip/multi-scale TTA; probabilities averaged in memory."""

    def __init__(self, cfg, checkpoints: Sequence[str] = (), weights: Sequence[float] | None = None,
                 flip: bool | None = None, scales: Sequence[float] | None = None, device: str | None = None,
                 models: Sequence[tuple[paddle.nn.Layer, Size]] | None = None,
                 member_configs: Sequence[str | None] | None = None, members: Sequence[Member] | None = None):
        self.device = select_device(device)
        self.cfg = cfg
        self.scheme = load_scheme(cfg.data.scheme)
        self.offset, self.frame_height = cfg.data.crop_offset, cfg.data.frame_height
        self._warned_sizes: set = set()
        self.mean, self.std = cfg.data.mean, cfg.data.std
        self.flip = cfg.infer.flip if flip is None else bool(flip)
        self.scales = [float(s) for s in (cfg.infer.scales if scales is None else scales)]
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"TTA scales must be positive numbers, got {self.scales}")
        self.members = self._members(checkpoints, models, weights, member_configs, members)
        self.backend = "dygraph"    # an export's backend when built by deploy.runtime.export_predictor
        self.base_size = self.members[0].size
        # members with another mean/std need their own tensor even at a shared size
        self.input_keys: list[InputKey] = sorted({(scaled_size(m.size, s), m.mean, m.std)
                                                  for m in self.members for s in self.scales})
        self.input_sizes = sorted({size for size, _, _ in self.input_keys})  # the crops decoded
        self.window = tuple(cfg.infer.window) if cfg.infer.window else None
        self.stride = tuple(cfg.infer.window_stride) if cfg.infer.window_stride else \
            (tuple(max(1, v // 2) for v in self.window) if self.window else None)
        self.images_predicted = 0

    def _members(self, checkpoints, models, weights, member_configs, given) -> list[Member]:
        if given:
            ws = normalize_weights([m.weight for m in given] if weights is None else weights, len(given))
            return [dataclasses.replace(m, weight=w) for m, w in zip(given, ws)]
        configs = [None] * len(checkpoints) if member_configs is None else list(member_configs)
        if len(configs) != len(checkpoints):
            raise ValueError(f"member configs: {len(configs)} config(s) for {len(checkpoints)} checkpoint(s)")
        members = [checkpoint_member(self.cfg, str(c), self.scheme.num_classes, mc)
                   for c, mc in zip(checkpoints, configs)]
        mean, std = _floats(self.mean), _floats(self.std)
        members += [Member(_in_eval_mode(m), (int(s[0]), int(s[1])), 1.0, f"model{i}", mean, std,
                           type(m).__name__, None, f"given model, mean/std of {self.cfg.source}")
                    for i, (m, s) in enumerate(models or [])]
        if not members:
            raise ValueError("no model to predict with: give at least one checkpoint")
        ws = normalize_weights(weights, len(members))
        return [dataclasses.replace(m, weight=w) for m, w in zip(members, ws)]

    # ------------------------------------------------------------------ inputs
    def prepare_array(self, rgb_full: np.ndarray) -> list[np.ndarray]:
        """Normalized 3xHxW float32 inputs, one per entry of input_keys."""
        self.check_frame((rgb_full.shape[1], rgb_full.shape[0]), "<frame>")
        crops = inputs_from_array(rgb_full, self.input_sizes, self.rows_cut(rgb_full.shape[0]))
        return normalized_inputs(crops, self.input_sizes, self.input_keys)

    def prepare_bytes(self, data, full_size: Size, source: str = "upload") -> list[np.ndarray]:
        """As prepare_file, from an encoded image in memory (the same reduced decode)."""
        crops = inputs_from_bytes(data, self.input_sizes, self.rows_cut(full_size[1]), full_size, source)
        return normalized_inputs(crops, self.input_sizes, self.input_keys)

    def prepare_file(self, path: str, full_size: Size) -> list[np.ndarray]:
        """As prepare_array, from an image file with training's reduced decode."""
        crops = inputs_from_file(path, self.input_sizes, self.rows_cut(full_size[1]), full_size)
        return normalized_inputs(crops, self.input_sizes, self.input_keys)

    # ------------------------------------------------------------------ forward
    @paddle.no_grad()
    def predict_batch(self, inputs: Sequence) -> np.ndarray:
        """N x C x h x w float32 probabilities at base_size from batched inputs (one per input key)."""
        tensors = [x if isinstance(x, paddle.Tensor) else paddle.to_tensor(np.asarray(x)) for x in inputs]
        acc = None
        for m in self.members:
            probs = self._member_probs(m, tensors) * m.weight
            acc = probs if acc is None else acc + probs
        self.images_predicted += int(tensors[0].shape[0])
        return acc.numpy().astype(np.float32, copy=False)

    def _member_probs(self, m: Member, tensors: list[paddle.Tensor]) -> paddle.Tensor:
        """TTA average of one member, resized to base_size."""
        acc = None
        for s, weight in zip(self.scales, scale_weights(self.scales)):
            x = tensors[self.input_keys.index((scaled_size(m.size, s), m.mean, m.std))]
            probs = self._to_base(self._forward(m.model, x)) * weight
            acc = probs if acc is None else acc + probs
        return acc

    def _forward(self, model: paddle.nn.Layer, x: paddle.Tensor) -> paddle.Tensor:
        """Softmax of the model over the whole input, or averaged over sliding windows."""
        h, w = int(x.shape[2]), int(x.shape[3])
        if self.window is None or (w <= self.window[0] and h <= self.window[1]):
            return self._forward_once(model, x)
        ww, wh = min(self.window[0], w), min(self.window[1], h)
        acc = counts = None
        for y in window_starts(h, wh, self.stride[1]):
            for x0 in window_starts(w, ww, self.stride[0]):
                probs = self._forward_once(model, x[:, :, y:y + wh, x0:x0 + ww])
                if acc is None:
                    acc = paddle.zeros([probs.shape[0], probs.shape[1], h, w], probs.dtype)
                    counts = paddle.zeros([1, 1, h, w], probs.dtype)
                acc[:, :, y:y + wh, x0:x0 + ww] += probs
                counts[:, :, y:y + wh, x0:x0 + ww] += 1.0
        return acc / counts

    def _forward_once(self, model: paddle.nn.Layer, x: paddle.Tensor) -> paddle.Tensor:
        """Softmax of the model, averaged with its mirrored run when flip TTA is on."""
        n = int(x.shape[0])
        batch = paddle.concat([x, paddle.flip(x, axis=[3])], axis=0) if self.flip else x
        probs = F.softmax(model(batch), axis=1)
        if probs.shape[1] != self.scheme.num_classes:
            raise ValueError(f"model returns {probs.shape[1]} channels but scheme {self.scheme.name!r} "
                             f"has {self.scheme.num_classes} classes")
        if self.flip:
            probs = (probs[:n] + paddle.flip(probs[n:], axis=[3])) * 0.5
        return probs

    def _to_base(self, probs: paddle.Tensor) -> paddle.Tensor:
        """Bilinear (align_corners=False) resize to base_size; identity when already there."""
        w, h = self.base_size
        if tuple(probs.shape[2:]) == (h, w):
            return probs
        return F.interpolate(probs, size=[h, w], mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ single frames
    def predict_probs(self, rgb_full: np.ndarray) -> np.ndarray:
        """C x h x w float32 probabilities at base_size for one decoded RGB frame."""
        return self.predict_batch([x[None] for x in self.prepare_array(rgb_full)])[0]

    def predict_train_ids(self, rgb_full: np.ndarray) -> np.ndarray:
        """HxW uint8 train ids at the frame's own size (for overlays)."""
        return self.to_train_ids(self.predict_probs(rgb_full), (rgb_full.shape[1], rgb_full.shape[0]))

    def predict_ids(self, rgb_full: np.ndarray) -> np.ndarray:
        """HxW uint8 Apollo ids at the frame's own size: a submission image."""
        full_size = (rgb_full.shape[1], rgb_full.shape[0])
        return probs_to_ids(self.predict_probs(rgb_full), self.rows_cut(full_size[1]), full_size, self.scheme)

    def to_train_ids(self, probs: np.ndarray, full_size: Size) -> np.ndarray:
        """Post-processing of predict_batch output: full-size train ids (decode gives Apollo ids)."""
        return probs_to_train_ids(probs, self.rows_cut(full_size[1]), full_size)

    def rows_cut(self, height: int) -> int:
        """Rows cut from a frame of this height (data.crop_offset scaled from data.frame_height)."""
        return crop_rows(self.offset, self.frame_height, height)

    def check_frame(self, full_size: Size, source: str) -> None:
        """One warning per frame size whose aspect differs from the competition frames by > 3 %."""
        w, h = full_size
        aspect, want = w / h, FULL_SIZE[0] / FULL_SIZE[1]
        if abs(aspect - want) / want > 0.03 and full_size not in self._warned_sizes:
            self._warned_sizes.add(full_size)
            print(f"warning: {source}: frame {w}x{h} has aspect {aspect:.3f}, the training frames "
                  f"{want:.3f} ({FULL_SIZE[0]}x{FULL_SIZE[1]}); predictions there are less reliable", file=sys.stderr)

    # ------------------------------------------------------------------ files
    def loader(self, paths: Sequence[str], batch_size: int | None = None,
               num_workers: int | None = None) -> paddle.io.DataLoader:
        """Batches of decoded, normalized inputs; decoding runs in DataLoader workers that die
        with this process and leave SIGTERM/SIGINT to it (validation inside training)."""
        workers = self.cfg.infer.num_workers if num_workers is None else num_workers
        return paddle.io.DataLoader(ImageFiles(list(paths), self), batch_size=batch_size or self.cfg.infer.batch_size,
                                    shuffle=False, drop_last=False, num_workers=workers,
                                    use_shared_memory=workers > 0, worker_init_fn=loader_worker)

    def predict_files(self, paths: Sequence[str], batch_size: int | None = None, num_workers: int | None = None,
                      progress: bool = True, timeout: float | None = None,
                      what: str = "infer") -> Iterator["FileResult"]:
        """One FileResult per path, in order: probabilities, or the reason it could not be read.
        A batch that takes longer than `timeout` s (default data.loader_timeout) ends the process
        with one line naming the awaited files."""
        bs = batch_size or self.cfg.infer.batch_size
        batches = watched(self.loader(paths, batch_size, num_workers),
                          self.cfg.data.loader_timeout if timeout is None else timeout,
                          lambda k: f"{what}: waiting for {', '.join(paths[k * bs:(k + 1) * bs])}")
        with tqdm(total=len(paths), desc=what, unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for batch in batches:
                yield from self._batch_results(batch, paths)
                bar.update(len(batch["index"]))

    def _batch_results(self, batch: dict, paths: Sequence[str]) -> Iterator["FileResult"]:
        index = np.asarray(batch["index"]).ravel()
        ok = np.asarray(batch["ok"]).ravel().astype(bool)
        sizes = np.asarray(batch["full_size"]).reshape(-1, 2)
        probs = self.predict_batch(_rows(batch["inputs"], ok)) if ok.any() else None
        k = 0
        for j, i in enumerate(index):
            if ok[j]:
                self.check_frame((int(sizes[j][0]), int(sizes[j][1])), paths[int(i)])
                yield FileResult(int(i), paths[int(i)], probs[k], (int(sizes[j][0]), int(sizes[j][1])), None)
                k += 1
            else:
                yield FileResult(int(i), paths[int(i)], None, None, batch["error"][j])


def _rows(inputs: list, keep: np.ndarray) -> list:
    """The batch rows of readable images (all of them, usually)."""
    if keep.all():
        return inputs
    idx = paddle.to_tensor(np.flatnonzero(keep))
    return [paddle.gather(x if isinstance(x, paddle.Tensor) else paddle.to_tensor(x), idx) for x in inputs]


@dataclass
class FileResult:
    """Prediction of one image file (probs None and error set when it could not be read)."""
    index: int
    path: str
    probs: np.ndarray | None
    full_size: Size | None
    error: str | None


class ImageFiles(paddle.io.Dataset):
    """Image files -> normalized inputs, one per predictor input key; unreadable files are flagged, not fatal."""

    def __init__(self, paths: list[str], predictor: Predictor):
        super().__init__()
        self.paths = paths
        self.sizes, self.offset, self.frame_height = predictor.input_sizes, predictor.offset, predictor.frame_height
        self.keys = predictor.input_keys

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> dict:
        path = self.paths[idx]
        try:
            full = image_size(path)
            crops = inputs_from_file(path, self.sizes, crop_rows(self.offset, self.frame_height, full[1]), full)
            inputs = normalized_inputs(crops, self.sizes, self.keys)
            return {"index": idx, "ok": 1, "full_size": np.asarray(full, np.int64), "inputs": inputs, "error": ""}
        except (UnreadableFileError, ValueError, OSError) as exc:
            blank = [np.zeros((3, h, w), np.float32) for (w, h), _, _ in self.keys]
            return {"index": idx, "ok": 0, "full_size": np.zeros(2, np.int64), "inputs": blank,
                    "error": str(exc) or f"{path}: cannot read image"}
