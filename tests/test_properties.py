"""Rules that hold for every input, said as properties (hypothesis draws the inputs):
label tables round-trip, the confusion matrix counts every scored pixel once, the score of a
set does not depend on the order of its frames, and flip TTA of a flip-equivariant model is
plain inference; evaluate, the report's per-frame and per-group scores and compare follow one
IoU rule.""" 
from __future__ import annotations

import numpy as np
import paddle
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import ROOT
from paddle_lane.core.labels import ignore_in_eval_ids, known_ids, load_scheme
from paddle_lane.core.metrics import SegMetric
from paddle_lane.evaluation.analysis import group_scores, per_frame_miou

KNOWN = sorted(known_ids())
SCHEMES = ["apollo8", "apollo9"]


def id_maps(max_side: int = 12):
    """Small HxW maps of Apollo ids from the label table."""
    shape = st.tuples(st.integers(1, max_side), st.integers(1, max_side))
    return shape.flatmap(lambda s: arrays(np.uint8, s, elements=st.sampled_from(KNOWN)))


@settings(max_examples=60, deadline=None)
@given(ids=id_maps(), scheme_name=st.sampled_from(SCHEMES), policy=st.sampled_from(["background", "ignore"]))
def test_encode_decode_round_trip(ids, scheme_name, policy):
    """Every id: its train id decodes to a submit id that a submission scorer maps back to
    the same train id; an id listed by a class keeps that class under both policies."""
    scheme = load_scheme(scheme_name)
    train = scheme.encode(ids, policy)
    scored = train != 255
    back = scheme.pred_lut()[scheme.decode(np.where(scored, train, 0).astype(np.uint8))]
    assert (back[scored] == train[scored]).all()
    for c, cls in enumerate(scheme.classes):
        listed = np.isin(ids, cls.ids) & ~np.isin(ids, sorted(ignore_in_eval_ids()))
        assert (train[listed] == c).all()


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 9))
def test_confusion_counts_every_scored_pixel_once(data, n):
    shape = data.draw(st.tuples(st.integers(1, 16), st.integers(1, 16)))
    gt = data.draw(arrays(np.uint8, shape, elements=st.sampled_from(list(range(n)) + [255])))
    pred = data.draw(arrays(np.uint8, shape, elements=st.integers(0, n - 1)))
    metric = SegMetric(n)
    metric.update(pred, gt)
    cm = metric.confusion
    assert cm.sum() == int((gt != 255).sum())
    for c in range(n):  # row c counts the ground-truth pixels of c, column c the predictions of c there
        assert cm[c].sum() == int((gt == c).sum())
        assert cm[:, c].sum() == int(((pred == c) & (gt != 255)).sum())


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_score_does_not_depend_on_frame_order(data):
    n = 4
    frames = data.draw(st.lists(st.tuples(arrays(np.uint8, (6, 5), elements=st.integers(0, n - 1)),
                                          arrays(np.uint8, (6, 5), elements=st.sampled_from([0, 1, 2, 3, 255]))),
                                min_size=1, max_size=6))
    order = data.draw(st.permutations(range(len(frames))))
    a, b = SegMetric(n), SegMetric(n)
    for pred, gt in frames:
        a.update(pred, gt)
    for i in order:
        b.update(*frames[i])
    ra, rb = a.compute(), b.compute()
    assert np.array_equal(a.confusion, b.confusion)
    assert (np.isnan(ra["miou"]) and np.isnan(rb["miou"])) or ra["miou"] == rb["miou"]


def reference_miou(conf: np.ndarray, classes) -> float:
    """IoU of each class by its definition, class by class, averaged over the defined ones."""
    ious = []
    for c in classes:
        tp, gt, pred = conf[c, c], conf[c, :].sum(), conf[:, c].sum()
        if gt + pred - tp > 0:
            ious.append(tp / (gt + pred - tp))
    return float(np.mean(ious)) if ious else float("nan")


def same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) < 1e-12


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 6))
def test_every_score_of_a_frame_set_follows_one_iou_rule(data, n):
    """evaluate's mIoU of a set, the report's per-frame and per-road mIoU and the reference agree,
    absent classes (zero rows and columns) included."""
    frames = data.draw(st.integers(1, 5))
    confs = data.draw(arrays(np.int64, (frames, n, n), elements=st.sampled_from([0, 0, 1, 3, 40])))
    lanes = list(range(1, n))
    for i in range(frames):
        one = SegMetric(n)
        one.merge(confs[i])
        expected = reference_miou(confs[i], range(n))
        assert same(one.compute()["miou"], expected)
        assert same(float(per_frame_miou(confs, lanes)[0][i]), expected)
        assert same(float(per_frame_miou(confs, lanes)[1][i]), reference_miou(confs[i], lanes))
    whole = SegMetric(n)
    for conf in confs:
        whole.merge(conf)
    result = whole.compute()
    [group] = group_scores([{"gt": "Road02/x.png"}] * frames, confs, "road", lanes)
    assert same(result["miou"], reference_miou(confs.sum(axis=0), range(n)))
    assert same(group["miou"], result["miou"]) and same(group["miou_lanes"], result["miou_lanes"])


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.sampled_from([64, 96, 128]))
def test_flip_tta_of_a_flip_equivariant_model_is_plain_inference(seed, width):
    """A 1x1 convolution sees each pixel alone, so mirroring its input mirrors its output."""
    from paddle_lane.config import load_config
    from paddle_lane.inference.predictor import Predictor
    cfg = load_config(ROOT / "configs" / "demo_tiny.yml", ["data.crop_offset=16", "data.frame_height=64"])
    paddle.seed(seed)
    model = paddle.nn.Conv2D(3, 8, 1)
    rgb = np.random.default_rng(seed).integers(0, 256, (64, width, 3)).astype(np.uint8)
    size = (width // 2, 24)
    plain = Predictor(cfg, models=[(model, size)], flip=False).predict_probs(rgb)
    flipped = Predictor(cfg, models=[(model, size)], flip=True).predict_probs(rgb)
    np.testing.assert_allclose(flipped, plain, atol=1e-5)
