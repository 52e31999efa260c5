"""Losses: numpy references for CE and weighted focal, finiteness in degenerate batches, ordering, config."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddle_lane.config import ConfigError, LossTerm
from paddle_lane.losses import (CombinedLoss, CrossEntropy, FocalLoss, LovaszSoftmax, SoftDice,
                                build_loss)

IGNORE = 255
N, C, H, W = 2, 4, 8, 8


def random_batch(seed: int = 0, ignore_share: float = 0.2):
    """Random logits and labels with some ignore pixels (numpy)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(N, C, H, W)).astype(np.float32)
    labels = rng.integers(0, C, size=(N, H, W)).astype(np.int64)
    labels[rng.random((N, H, W)) < ignore_share] = IGNORE
    return logits, labels


def perfect_logits(labels: np.ndarray, margin: float = 30.0) -> np.ndarray:
    """Logits with a large margin on the true class (ignore pixels get class 0)."""
    safe = np.where(labels == IGNORE, 0, labels)
    return (np.eye(C, dtype=np.float32)[safe] * margin).transpose(0, 3, 1, 2)


def numpy_ce(logits: np.ndarray, labels: np.ndarray, weights=None) -> float:
    """Weighted CE: sum w[y] * -log softmax(y) / sum w[y] over non-ignore pixels."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    valid = labels != IGNORE
    y = labels[valid]
    nll = -log_probs.transpose(0, 2, 3, 1)[valid][np.arange(y.size), y]
    w = np.ones(C) if weights is None else np.asarray(weights)
    return float((w[y] * nll).sum() / w[y].sum())


def numpy_lovasz(logits: np.ndarray, labels: np.ndarray) -> float:
    """Lovasz-softmax as in Berman et al.'s reference code, over present classes."""
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (probs / probs.sum(axis=1, keepdims=True)).transpose(0, 2, 3, 1)
    valid = labels != IGNORE
    probs, y = probs[valid], labels[valid]
    losses = []
    for c in np.unique(y):
        fg = (y == c).astype(np.float64)
        order = np.argsort(-np.abs(fg - probs[:, c]), kind="stable")
        errors, fg_sorted = np.abs(fg - probs[:, c])[order], fg[order]
        jaccard = 1 - (fg.sum() - fg_sorted.cumsum()) / (fg.sum() + (1 - fg_sorted).cumsum())
        jaccard[1:] = jaccard[1:] - jaccard[:-1].copy()
        losses.append(float(errors @ jaccard))
    return float(np.mean(losses))


def tensors(logits: np.ndarray, labels: np.ndarray):
    """Paddle logits that require grad, and int64 labels."""
    x = paddle.to_tensor(logits, stop_gradient=False)
    return x, paddle.to_tensor(labels, dtype="int64")


ALL_LOSSES = {
    "ce": CrossEntropy(),
    "ce_weighted": CrossEntropy(class_weights=[1.0, 2.0, 0.5, 3.0]),
    "dice": SoftDice(),
    "focal": FocalLoss(),
    "focal_weighted": FocalLoss(gamma=0.5, class_weights=[1.0, 2.0, 0.5, 3.0]),
    "lovasz": LovaszSoftmax(),
}


def value_and_grad(loss_fn, logits: np.ndarray, labels: np.ndarray):
    """Loss value and the gradient wrt logits, as numpy."""
    x, y = tensors(logits, labels)
    loss = loss_fn(x, y)
    loss.backward()
    return float(loss), x.grad.numpy()


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 3.0]])
def test_ce_matches_numpy_reference(weights):
    logits, labels = random_batch()
    x, y = tensors(logits, labels)
    got = float(CrossEntropy(class_weights=weights)(x, y))
    assert got == pytest.approx(numpy_ce(logits, labels, weights), rel=1e-5)


def test_focal_with_gamma_zero_is_ce():
    logits, labels = random_batch(1)
    x, y = tensors(logits, labels)
    assert float(FocalLoss(gamma=0.0)(x, y)) == pytest.approx(float(CrossEntropy()(x, y)), rel=1e-5)


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_finite_when_a_class_is_absent(name):
    logits, labels = random_batch(2)
    labels[labels == 3] = 1
    value, grad = value_and_grad(ALL_LOSSES[name], logits, labels)
    assert np.isfinite(value) and value > 0
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_zero_and_finite_when_all_pixels_ignored(name):
    logits, _ = random_batch(3)
    labels = np.full((N, H, W), IGNORE, np.int64)
    value, grad = value_and_grad(ALL_LOSSES[name], logits, labels)
    assert value == 0.0
    assert np.isfinite(grad).all() and not grad.any()


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_ignore_pixels_get_no_gradient(name):
    logits, labels = random_batch(4)
    _, grad = value_and_grad(ALL_LOSSES[name], logits, labels)
    ignored = (labels == IGNORE)[:, None].repeat(C, axis=1)
    assert not grad[ignored].any()
    assert grad[~ignored].any()


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_perfect_logits_near_zero_and_better_than_wrong(name):
    _, labels = random_batch(5)
    right = perfect_logits(labels)
    wrong = perfect_logits(np.where(labels == IGNORE, IGNORE, (labels + 1) % C))
    right_value, right_grad = value_and_grad(ALL_LOSSES[name], right, labels)
    wrong_value, _ = value_and_grad(ALL_LOSSES[name], wrong, labels)
    assert right_value == pytest.approx(0.0, abs=1e-4)
    assert np.isfinite(right_grad).all()
    assert wrong_value > right_value + 0.5


def test_dice_matches_numpy_reference():
    logits, labels = random_batch(11)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    valid = labels != IGNORE
    onehot = np.eye(C)[np.where(valid, labels, 0)].transpose(0, 3, 1, 2) * valid[:, None]
    probs = probs * valid[:, None]
    inter, pred, truth = (a.sum(axis=(0, 2, 3)) for a in (probs * onehot, probs, onehot))
    expected = np.mean(1 - (2 * inter + 1) / (pred + truth + 1))
    got = float(SoftDice()(*tensors(logits, labels)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_lovasz_matches_numpy_reference():
    logits, labels = random_batch(10)
    labels[labels == 2] = 0
    got = float(LovaszSoftmax()(*tensors(logits, labels)))
    assert got == pytest.approx(numpy_lovasz(logits, labels), rel=1e-5)


def test_lovasz_matches_reference_on_valid_pixels_only():
    """Masking ignore pixels in place equals computing on the selected valid pixels."""
    logits, labels = random_batch(6)
    x, y = tensors(logits, labels)
    masked = float(LovaszSoftmax()(x, y))
    valid = labels != IGNORE
    flat_logits = logits.transpose(0, 2, 3, 1)[valid].T.reshape(1, C, 1, -1)
    flat_labels = labels[valid].reshape(1, 1, -1)
    selected = float(LovaszSoftmax()(*tensors(np.ascontiguousarray(flat_logits), flat_labels)))
    assert masked == pytest.approx(selected, rel=1e-5)


def test_logits_upsampled_to_label_size():
    logits, labels = random_batch(7)
    small = paddle.to_tensor(logits[:, :, ::2, ::2].copy(), stop_gradient=False)
    for loss_fn in ALL_LOSSES.values():
        value = loss_fn(small, paddle.to_tensor(labels))
        value.backward()
        assert np.isfinite(float(value))
    assert list(small.grad.shape) == [N, C, H // 2, W // 2]


def test_int32_labels_accepted():
    logits, labels = random_batch(8)
    x = paddle.to_tensor(logits)
    got = float(CrossEntropy()(x, paddle.to_tensor(labels.astype(np.int32))))
    assert got == pytest.approx(numpy_ce(logits, labels), rel=1e-5)


def test_build_loss_returns_terms_and_weighted_total():
    terms = [LossTerm(type="ce", weight=1.0, class_weights=True), LossTerm(type="dice", weight=0.5),
             LossTerm(type="ce", weight=0.25), LossTerm(type="focal", weight=2.0, gamma=1.0),
             LossTerm(type="lovasz", weight=0.3)]
    loss = build_loss(terms, num_classes=C, class_weights=[1.0, 2.0, 0.5, 3.0])
    assert isinstance(loss, CombinedLoss)
    logits, labels = random_batch(9)
    x, y = tensors(logits, labels)
    total, parts = loss(x, y)
    assert list(parts) == ["ce", "dice", "ce_1", "focal", "lovasz"]
    expected = sum(t.weight * float(parts[name]) for t, name in zip(terms, parts))
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert float(parts["ce"]) == pytest.approx(numpy_ce(logits, labels, [1.0, 2.0, 0.5, 3.0]), rel=1e-5)
    assert float(parts["ce_1"]) == pytest.approx(numpy_ce(logits, labels), rel=1e-5)
    total.backward()
    assert np.isfinite(x.grad.numpy()).all()


@pytest.mark.parametrize("weights", [None, [1.0, 2.0]])
def test_build_loss_names_key_when_weights_unusable(weights):
    terms = [LossTerm(type="dice"), LossTerm(type="focal", class_weights=True)]
    with pytest.raises(ConfigError, match=r"loss\.1\.class_weights"):
        build_loss(terms, num_classes=C, class_weights=weights)


def test_build_loss_rejects_weights_on_unweighted_type_and_unknown_type():
    with pytest.raises(ConfigError, match=r"loss\.0\.class_weights"):
        build_loss([LossTerm(type="dice", class_weights=True)], C, [1.0] * C)
    with pytest.raises(ConfigError, match=r"loss\.0\.type"):
        build_loss([LossTerm(type="hinge")], C, None)


def test_weighted_focal_matches_hand_computation_on_2x2():
    """Class-weighted focal loss on a 2x2 frame: sum_i w[y_i] (1-p_i)^g (-log p_i) / sum_i w[y_i] over valid pixels.

    The normalisation is the one FocalLoss documents ("averaged like CrossEntropy"): the weighted
    mean of torch/paddle cross-entropy, so gamma=0 gives exactly the weighted CE and the loss scale
    does not change with the weights' overall size; the ignore pixel adds to neither sum."""
    # softmax probabilities chosen per pixel; logits = log(p) reproduce them exactly
    probs = np.array([[[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]],
                      [[0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]])          # [H, W, C]
    labels = np.array([[[0, 1], [2, IGNORE]]], np.int64)           # [1, H, W]
    logits = np.log(probs).transpose(2, 0, 1)[None].astype(np.float32)
    weights, gamma = [1.0, 2.0, 0.5], 2.0
    # p_t = 0.5, 0.6, 0.8 for classes 0, 1, 2 (weights 1, 2, 0.5)
    p_t = np.array([0.5, 0.6, 0.8])
    w = np.array([1.0, 2.0, 0.5])
    terms = -w * (1 - p_t) ** gamma * np.log(p_t)  # 0.25*0.6931, 2*0.16*0.5108, 0.5*0.04*0.2231
    expected = terms.sum() / w.sum()
    assert expected == pytest.approx(0.0974898, abs=1e-6)
    unweighted = (-(1 - p_t) ** gamma * np.log(p_t)).mean()
    assert abs(expected - unweighted) > 0.009  # the weights move the value
    got = float(FocalLoss(gamma=gamma, class_weights=weights)(*tensors(logits, labels)))
    assert got == pytest.approx(expected, rel=1e-5)
    assert float(FocalLoss(gamma=gamma)(*tensors(logits, labels))) == pytest.approx(unweighted, rel=1e-5)
    scaled = FocalLoss(gamma=gamma, class_weights=[10 * v for v in weights])
    assert float(scaled(*tensors(logits, labels))) == pytest.approx(expected, rel=1e-5)  # sum w cancels
    # gamma = 0: the weighted cross-entropy, sum w * -log p_t / sum w
    ce = float((-w * np.log(p_t)).sum() / w.sum())
    assert float(FocalLoss(gamma=0.0, class_weights=weights)(*tensors(logits, labels))) == pytest.approx(ce, rel=1e-5)


# --- every output of a model with auxiliary heads: weights and the summed loss ---

def test_output_coef_configured_then_paddleseg_published_then_ones():
    from paddle_lane.losses import output_coef
    assert output_coef([2, 0.5], "OCRNet", 2) == [2.0, 0.5]  # the config wins
    assert output_coef(None, "OCRNet", 2) == [1.0, 0.4]  # PaddleSeg's configs/ocrnet loss.coef
    assert output_coef(None, "PPLiteSeg", 3) == [1.0, 1.0, 1.0]
    assert output_coef(None, "BiSeNetV2", 5) == [1.0] * 5
    assert output_coef(None, None, 1) == [1.0] and output_coef(None, "UNet", 2) == [1.0, 1.0]
    assert all(type(c) is float for c in output_coef([1, 2], None, 2))
    with pytest.raises(ConfigError, match=r"model.loss_coef' has 2 weight\(s\) \[1.0, 0.4\] but the model returns 3"):
        output_coef(None, "OCRNet", 3)
    with pytest.raises(ConfigError, match="has 1 weight"):
        output_coef([1.0], None, 2)


def test_multi_output_loss_is_the_weighted_sum_of_each_outputs_loss():
    from paddle_lane.losses import multi_output_loss
    main, labels = random_batch(seed=1)
    aux1, _ = random_batch(seed=2)
    aux2, _ = random_batch(seed=3)
    loss = build_loss([LossTerm(type="ce", weight=1.0)], C, None)
    total, terms = multi_output_loss(loss, [paddle.to_tensor(x) for x in (main, aux1, aux2)], paddle.to_tensor(labels),
                                     [1.0, 0.4, 0.25])
    expected = numpy_ce(main, labels) + 0.4 * numpy_ce(aux1, labels) + 0.25 * numpy_ce(aux2, labels)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert sorted(terms) == ["aux1", "aux2", "ce"]
    assert float(terms["ce"]) == pytest.approx(numpy_ce(main, labels), rel=1e-5)
    assert float(terms["aux1"]) == pytest.approx(numpy_ce(aux1, labels), rel=1e-5)
    assert float(terms["aux2"]) == pytest.approx(numpy_ce(aux2, labels), rel=1e-5)
    alone, alone_terms = multi_output_loss(loss, [paddle.to_tensor(main)], paddle.to_tensor(labels), [3.0])
    assert float(alone) == pytest.approx(3 * numpy_ce(main, labels), rel=1e-5) and list(alone_terms) == ["ce"]
