"""Segmentation losses written against Paddle 3 (paddleseg's break on int64/float32 promotion).

Every loss takes logits [N,C,H,W] float32 and labels [N,H,W] integer, excludes pixels equal
to `ignore_index`, stays finite (value and gradient) when a class is absent or every pixel is
ignored, and upsamples logits bilinearly to the label size when the two differ.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import paddle
import paddle.nn.functional as F

from paddle_lane.config import ConfigError, LossTerm, implements
from paddle_lane.core.labels import IGNORE_INDEX

LossFn = Callable[[paddle.Tensor, paddle.Tensor], paddle.Tensor]


# ----------------------------------------------------------------------------- helpers
def match_size(logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """Logits resized bilinearly to the label's H, W (models often predict at lower resolution)."""
    size = list(labels.shape[-2:])
    if list(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def split_labels(labels: paddle.Tensor, ignore_index: int) -> tuple[paddle.Tensor, paddle.Tensor]:
    """(float32 valid mask, int64 labels with ignore pixels set to 0 so indexing stays in range)."""
    labels = labels.astype("int64")
    valid = labels != ignore_index
    safe = paddle.where(valid, labels, paddle.zeros_like(labels))
    return valid.astype("float32"), safe


def masked_one_hot(safe: paddle.Tensor, valid: paddle.Tensor, num_classes: int) -> paddle.Tensor:
    """One-hot [N,C,H,W] float32 with ignore pixels all zero."""
    one_hot = F.one_hot(safe, num_classes).astype("float32").transpose([0, 3, 1, 2])
    return one_hot * valid.unsqueeze(1)


def pixel_weights(safe: paddle.Tensor, valid: paddle.Tensor,
                  class_weights: Sequence[float] | None, num_classes: int) -> paddle.Tensor:
    """Per-pixel weight w[y] (1 without class weights), 0 on ignore pixels."""
    if class_weights is None:
        return valid
    if len(class_weights) != num_classes:
        raise ValueError(f"{len(class_weights)} class weights for {num_classes} classes")
    table = paddle.to_tensor(list(class_weights), dtype="float32")
    return paddle.gather(table, safe.flatten()).reshape(safe.shape) * valid


def weighted_mean(values: paddle.Tensor, weights: paddle.Tensor) -> paddle.Tensor:
    """sum(w*v) / sum(w); 0 (graph kept through `values`) when every weight is 0."""
    total = weights.sum()
    denom = paddle.where(total > 0, total, paddle.ones_like(total))
    return (values * weights).sum() / denom


def class_mean(per_class: paddle.Tensor, present: paddle.Tensor) -> paddle.Tensor:
    """Mean of per-class losses over present classes; 0 (graph kept) when none is present."""
    present = present.astype("float32")
    return (per_class * present).sum() / paddle.clip(present.sum(), min=1.0)


def true_class_log_prob(logits: paddle.Tensor, safe: paddle.Tensor) -> paddle.Tensor:
    """log p(y) per pixel, [N,H,W]."""
    log_probs = F.log_softmax(logits, axis=1)
    return paddle.take_along_axis(log_probs, safe.unsqueeze(1), axis=1).squeeze(1)


# ----------------------------------------------------------------------------- losses
class CrossEntropy:
    """Cross-entropy averaged as sum(w[y]*nll) / sum(w[y]) over valid pixels (torch/paddle convention)."""

    def __init__(self, class_weights: Sequence[float] | None = None, ignore_index: int = IGNORE_INDEX):
        self.class_weights = class_weights
        self.ignore_index = ignore_index

    def __call__(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        logits = match_size(logits, labels)
        valid, safe = split_labels(labels, self.ignore_index)
        nll = -true_class_log_prob(logits, safe)
        return weighted_mean(nll, pixel_weights(safe, valid, self.class_weights, logits.shape[1]))


class FocalLoss:
    """Focal loss -(1-p_y)^gamma log p_y, averaged like CrossEntropy (gamma=0 gives CE)."""

    def __init__(self, gamma: float = 2.0, class_weights: Sequence[float] | None = None,
                 ignore_index: int = IGNORE_INDEX):
        self.gamma = gamma
        self.class_weights = class_weights
        self.ignore_index = ignore_index

    def __call__(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        logits = match_size(logits, labels)
        valid, safe = split_labels(labels, self.ignore_index)
        log_pt = true_class_log_prob(logits, safe)
        # Clipped away from 0: the gradient of x**gamma is infinite there for gamma < 1.
        modulator = paddle.pow(paddle.clip(1.0 - paddle.exp(log_pt), min=1e-12), self.gamma)
        values = -modulator * log_pt
        return weighted_mean(values, pixel_weights(safe, valid, self.class_weights, logits.shape[1]))


class SoftDice:
    """1 - soft Dice per class over the whole batch, averaged over classes with target or predicted mass."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0):
        self.ignore_index = ignore_index
        self.smooth = smooth

    def __call__(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        logits = match_size(logits, labels)
        valid, safe = split_labels(labels, self.ignore_index)
        probs = F.softmax(logits, axis=1) * valid.unsqueeze(1)
        target = masked_one_hot(safe, valid, logits.shape[1])
        axes = [0, 2, 3]
        intersection = (probs * target).sum(axis=axes)
        predicted, truth = probs.sum(axis=axes), target.sum(axis=axes)
        denom = paddle.clip(predicted + truth + self.smooth, min=1e-6)
        per_class = 1.0 - (2.0 * intersection + self.smooth) / denom
        return class_mean(per_class, (truth + predicted) > 0)


def lovasz_grad(sorted_truth: paddle.Tensor) -> paddle.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss for rows of truth sorted by error, [C,P]."""
    gts = sorted_truth.sum(axis=1, keepdim=True)
    intersection = gts - paddle.cumsum(sorted_truth, axis=1)
    union = gts + paddle.cumsum(1.0 - sorted_truth, axis=1)  # >= 1 at every position
    jaccard = 1.0 - intersection / union
    return paddle.concat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=1)


class LovaszSoftmax:
    """Lovasz-softmax (Berman et al. 2018) over classes present in the batch, pixels flattened over the batch."""

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        self.ignore_index = ignore_index

    def __call__(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        logits = match_size(logits, labels)
        num_classes = logits.shape[1]
        valid, safe = split_labels(labels, self.ignore_index)
        probs = F.softmax(logits, axis=1).transpose([1, 0, 2, 3]).reshape([num_classes, -1])
        truth = masked_one_hot(safe, valid, num_classes).transpose([1, 0, 2, 3]).reshape([num_classes, -1])
        # Ignore pixels get error 0 and truth 0: they sort last and add 0 to the dot product,
        # so the loss equals the one over valid pixels without a dynamic-shape selection.
        errors = paddle.abs(truth - probs) * valid.reshape([1, -1])
        order = paddle.argsort(errors, axis=1, descending=True)
        sorted_errors = paddle.take_along_axis(errors, order, axis=1)
        sorted_truth = paddle.take_along_axis(truth, order, axis=1)
        per_class = (sorted_errors * lovasz_grad(sorted_truth).detach()).sum(axis=1)
        return class_mean(per_class, truth.sum(axis=1) > 0)


# ----------------------------------------------------------------------------- combination
class CombinedLoss:
    """Weighted sum of named losses; also returns each unweighted term for logging."""

    def __init__(self, terms: list[tuple[str, float, LossFn]]):
        if not terms:
            raise ValueError("CombinedLoss needs at least one term")
        self.terms = terms

    def __call__(self, logits: paddle.Tensor, labels: paddle.Tensor
                 ) -> tuple[paddle.Tensor, dict[str, paddle.Tensor]]:
        logits = match_size(logits, labels)  # once, instead of once per term
        values = {name: fn(logits, labels) for name, _, fn in self.terms}
        total = sum(weight * values[name] for name, weight, _ in self.terms)
        return total, values


# PaddleSeg's published loss weights (its configs' `loss.coef`) for zoo models with auxiliary outputs
ZOO_LOSS_COEF = {"OCRNet": [1.0, 0.4], "PPLiteSeg": [1.0, 1.0, 1.0], "BiSeNetV2": [1.0, 1.0, 1.0, 1.0, 1.0]}


def output_coef(coef: Sequence[float] | None, zoo_type: str | None, n_outputs: int) -> list[float]:
    """The loss weight of each of a model's n_outputs (main first): the configured list, else
    PaddleSeg's published one for the zoo model, else 1 for every output. A length that does
    not match the model's outputs is a ConfigError naming model.loss_coef."""
    if coef is None:
        coef = ZOO_LOSS_COEF.get(zoo_type or "", [1.0] * n_outputs)
    if len(coef) != n_outputs:
        raise ConfigError(f"key 'model.loss_coef' has {len(coef)} weight(s) {list(coef)} but the model returns "
                          f"{n_outputs} output(s) in training (main first)")
    return [float(c) for c in coef]


def multi_output_loss(loss_fn: "CombinedLoss", outputs: Sequence[paddle.Tensor], labels: paddle.Tensor,
                      coef: Sequence[float]) -> tuple[paddle.Tensor, dict[str, paddle.Tensor]]:
    """sum_i coef_i * loss(output_i): every output of a model with auxiliary heads is trained.
    Terms: the main output's own terms, then 'aux<i>' for each auxiliary output's total."""
    total, terms = loss_fn(outputs[0], labels)
    total = total * coef[0]
    for i, (out, c) in enumerate(zip(outputs[1:], coef[1:]), start=1):
        aux, _ = loss_fn(out, labels)
        terms[f"aux{i}"] = aux
        total = total + c * aux
    return total, terms


WEIGHTED_TYPES = ("ce", "focal")


def _term_weights(i: int, term: LossTerm, num_classes: int,
                  class_weights: Sequence[float] | None) -> list[float] | None:
    """The class weights term i asks for, checked against the number of classes."""
    if not term.class_weights:
        return None
    key = f"loss.{i}.class_weights"
    if term.type not in WEIGHTED_TYPES:
        raise ConfigError(f"key '{key}' is only supported for {list(WEIGHTED_TYPES)}, not {term.type!r}")
    if class_weights is None:
        raise ConfigError(f"key '{key}' is true but no class weights were given "
                          "(prepare.class_weight is 'none' or stats.json has none)")
    if len(class_weights) != num_classes:
        raise ConfigError(f"key '{key}': {len(class_weights)} class weights for {num_classes} classes")
    return [float(w) for w in class_weights]


FACTORIES: dict[str, Callable[[LossTerm, list[float] | None, int], LossFn]] = implements("loss.type", {
    "ce": lambda term, weights, ignore: CrossEntropy(weights, ignore),
    "focal": lambda term, weights, ignore: FocalLoss(term.gamma, weights, ignore),
    "dice": lambda term, weights, ignore: SoftDice(ignore),
    "lovasz": lambda term, weights, ignore: LovaszSoftmax(ignore),
})


def _unique_name(base: str, taken: set[str]) -> str:
    """base, or base_1, base_2, ... when already used."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def build_loss(terms: list[LossTerm], num_classes: int, class_weights: Sequence[float] | None,
               ignore_index: int = IGNORE_INDEX) -> CombinedLoss:
    """CombinedLoss from the `loss:` config list; errors name the offending `loss.{i}.*` key."""
    built, taken = [], set()
    for i, term in enumerate(terms):
        if term.type not in FACTORIES:
            raise ConfigError(f"key 'loss.{i}.type' must be one of {list(FACTORIES)}, got {term.type!r}")
        fn = FACTORIES[term.type](term, _term_weights(i, term, num_classes, class_weights), ignore_index)
        name = _unique_name(term.type, taken)
        taken.add(name)
        built.append((name, float(term.weight), fn))
    return CombinedLoss(built)
