"""Inference: TTA and ensemble arithmetic on stand-in models, preprocessing identical to
training, submission writing (names, size, ids, resume, zip, overlays, bad inputs), the
validator catching each kind of bad submission, video annotation, the command functions, and
ensembles of different architectures, each built from its own run's config.yml."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import paddle
import paddle.nn.functional as F
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT, random_checkpoint
from paddle_lane.cli import main as cli
from paddle_lane.cli import commands
from paddle_lane.config import load_config, save_config
from paddle_lane.core.label_io import image_size, read_image, read_label
from paddle_lane.core.labels import load_scheme
from paddle_lane.data.dataset import LaneDataset
from paddle_lane.data.transforms import FrameSource
from paddle_lane.inference.inputs import images_from
from paddle_lane.inference.predictor import Predictor, inputs_from_file, probs_to_ids, window_starts
from paddle_lane.inference.submission import validate_submission, write_submission, zip_path_for
from paddle_lane.inference.video import annotate_video, draw_fps
from paddle_lane.models import build_model
from paddle_lane.prepare.cache import load_resized
from paddle_lane.prepare.synth import make_dataset
from paddle_lane.runs.checkpoint import save_checkpoint

CONFIG = ROOT / "configs" / "demo_tiny.yml"
W, H, OFFSET = 384, 192, 76
SIZE = (128, 48)
OPTS = [f"data.crop_offset={OFFSET}", f"data.frame_height={H}", "data.use_cache=false", "model.width=4", "infer.num_workers=0",
        "infer.flip=false", "infer.scales=[1.0]", "infer.batch_size=2",
        f"stages=[{{width: {SIZE[0]}, height: {SIZE[1]}, batch_size: 2, iters: 1, lr: 0.01}}]"]
SUBMIT_IDS = {0, 204, 203, 217, 210, 214, 224, 227}


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG, OPTS)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two labelled frames and three test images, 384x192."""
    root = tmp_path_factory.mktemp("infer_synth")
    return make_dataset(root, roads=("Road02",), records_per_road=1, frames_per_record=2, cameras=("Camera 5",),
                        width=W, height=H, seed=5, test_frames=3)


@pytest.fixture(scope="module")
def ckpt(cfg, tmp_path_factory):
    """A lite-model checkpoint whose state.json says it was trained at SIZE."""
    return random_checkpoint(cfg.model, tmp_path_factory.mktemp("ckpt") / "best", SIZE, seed=0)


@pytest.fixture(scope="module")
def test_images(data):
    return [(Path(p).stem, p) for p in data["test_images"]]


def pixelwise(seed: int) -> paddle.nn.Layer:
    """A flip-equivariant stand-in: each output pixel depends on that input pixel only."""
    paddle.seed(seed)
    conv = paddle.nn.Conv2D(3, 8, 1)
    conv.weight.set_value(paddle.randn(conv.weight.shape) * 2)
    return conv


def noise_frame() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (H, W, 3)).astype(np.uint8)


def smooth_frame(seed: int = 0) -> np.ndarray:
    """A 384x192 RGB frame without fine detail, so rescaling barely changes it."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 8, 3)).astype(np.uint8)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)


# ----------------------------------------------------------------------------- TTA / ensemble
def test_flip_tta_equals_plain_for_flip_equivariant_model(cfg):
    rgb = noise_frame()
    plain = Predictor(cfg, models=[(pixelwise(1), SIZE)], flip=False).predict_probs(rgb)
    flipped = Predictor(cfg, models=[(pixelwise(1), SIZE)], flip=True).predict_probs(rgb)
    assert plain.shape == (8, SIZE[1], SIZE[0]) and plain.dtype == np.float32
    np.testing.assert_allclose(flipped, plain, atol=1e-6)
    np.testing.assert_allclose(plain.sum(axis=0), 1.0, atol=1e-5)


def test_sliding_window_equals_whole_image_for_pixelwise_model(cfg):
    import copy
    rgb = noise_frame()
    whole = Predictor(cfg, models=[(pixelwise(4), SIZE)]).predict_probs(rgb)
    tiled_cfg = copy.deepcopy(cfg)
    tiled_cfg.infer.window, tiled_cfg.infer.window_stride = [SIZE[0] // 2 + 3, SIZE[1] // 2 + 1], [SIZE[0] // 3, SIZE[1] // 3]
    tiled = Predictor(tiled_cfg, models=[(pixelwise(4), SIZE)], flip=True).predict_probs(rgb)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert window_starts(10, 4, 3) == [0, 3, 6] and window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(3, 4, 2) == [0]


def test_multiscale_close_to_plain(cfg):
    rgb = smooth_frame()
    model = pixelwise(2)
    plain = Predictor(cfg, models=[(model, SIZE)], scales=[1.0]).predict_probs(rgb)
    multi = Predictor(cfg, models=[(model, SIZE)], scales=[0.75, 1.0, 1.5], flip=True).predict_probs(rgb)
    assert multi.shape == plain.shape
    assert np.abs(multi - plain).mean() < 0.01
    assert (multi.argmax(0) == plain.argmax(0)).mean() > 0.98


def test_ensemble_with_itself_equals_the_model(cfg):
    rgb = noise_frame()
    model = pixelwise(3)
    one = Predictor(cfg, models=[(model, SIZE)]).predict_probs(rgb)
    two = Predictor(cfg, models=[(model, SIZE), (model, SIZE)], weights=[0.3, 2.0]).predict_probs(rgb)
    np.testing.assert_allclose(two, one, atol=1e-6)


def test_weights_are_honoured_and_sizes_resized_to_the_first(cfg):
    rgb = smooth_frame(1)
    a, b = pixelwise(4), pixelwise(5)
    small = (96, 36)
    pa = Predictor(cfg, models=[(a, SIZE)]).predict_probs(rgb)
    pb = Predictor(cfg, models=[(b, small)]).predict_probs(rgb)
    pb_up = F.interpolate(paddle.to_tensor(pb[None]), size=[SIZE[1], SIZE[0]], mode="bilinear",
                          align_corners=False).numpy()[0]
    mix = Predictor(cfg, models=[(a, SIZE), (b, small)], weights=[3, 1])
    assert mix.base_size == SIZE and mix.input_sizes == sorted([SIZE, small])
    np.testing.assert_allclose(mix.predict_probs(rgb), 0.75 * pa + 0.25 * pb_up, atol=1e-5)
    only_a = Predictor(cfg, models=[(a, SIZE), (b, small)], weights=[1, 0]).predict_probs(rgb)
    np.testing.assert_allclose(only_a, pa, atol=1e-6)


def test_bad_weights_are_one_line_errors(cfg):
    with pytest.raises(ValueError, match="2 weight"):
        Predictor(cfg, models=[(pixelwise(1), SIZE)], weights=[1, 2])
    with pytest.raises(ValueError, match="positive sum"):
        Predictor(cfg, models=[(pixelwise(1), SIZE)], weights=[0])


# ----------------------------------------------------------------------------- preprocessing
def test_preprocessing_is_the_training_one(cfg, data, ckpt):
    pred = Predictor(cfg, [str(ckpt)], scales=[0.75, 1.0, 1.5])
    assert pred.base_size == SIZE
    pair = data["pairs"][0]
    full = image_size(pair["image"])
    scheme = load_scheme(cfg.data.scheme)
    crops = inputs_from_file(pair["image"], pred.input_sizes, OFFSET, full)
    for size, crop in zip(pred.input_sizes, crops):
        ref, _ = load_resized(pair["image"], None, scheme.train_lut(), OFFSET, size, "nearest", full)
        np.testing.assert_array_equal(crop, ref)
    row = {**pair, "width": full[0], "height": full[1]}  # as prepare's lists hold them
    ds = LaneDataset(pd.DataFrame([row]), FrameSource.from_config(cfg, SIZE), cfg.data.mean, cfg.data.std,
                     with_labels=False)
    base = pred.prepare_file(pair["image"], full)[[k[0] for k in pred.input_keys].index(SIZE)]
    np.testing.assert_array_equal(base, ds[0][0])


def test_checkpoint_size_from_state_or_stage(cfg, ckpt, tmp_path):
    paddle.seed(1)
    bare = save_checkpoint(tmp_path / "bare", build_model(cfg.model, 8), state={"stage": 0})
    other = load_config(CONFIG, OPTS + ["stages=[{width: 64, height: 32}, {width: 160, height: 64}]"])
    assert Predictor(other, [str(bare)]).base_size == (160, 64)        # infer.stage = -1: last stage
    assert Predictor(other, [str(ckpt)]).base_size == SIZE             # state.json wins
    assert Predictor(other, [str(bare / "model.pdparams")]).base_size == (160, 64)


class Regions(paddle.nn.Layer):
    """A stand-in of known output: its input split evenly along `axis` (2 rows, 3 columns) into
    one region per class of `classes`, each scored 20 for its class and 0 for the others."""

    def __init__(self, axis: int, classes: tuple[int, ...]):
        super().__init__()
        self.axis, self.classes = axis, classes

    def forward(self, x):
        n, _, h, w = x.shape
        length = x.shape[self.axis]
        region = np.arange(length) * len(self.classes) // length
        scores = np.eye(8, dtype=np.float32)[np.asarray(self.classes)[region]].T * 20.0   # 8 x length
        shape = [1, 8, length, 1] if self.axis == 2 else [1, 8, 1, length]
        return paddle.to_tensor(scores.reshape(shape)).expand([n, 8, h, w])


APOLLO8_SUBMIT = {1: 204, 3: 217, 6: 224}   # apollo8 train id -> the Apollo id a submission holds


def expected_ids(model: Regions, length: int, full_size: tuple[int, int],
                 offset: int) -> tuple[np.ndarray, np.ndarray]:
    """(Apollo ids, ambiguous mask) at full size for a Regions model run at `length` along its
    axis: bilinear upsampling of near one-hot scores gives each output pixel the class of the
    input pixel nearest its centre (align_corners=False); a centre exactly midway between two
    regions is a tie, marked ambiguous."""
    full_w, full_h = full_size
    out_len = full_w if model.axis == 3 else full_h - offset
    src = (np.arange(out_len) + 0.5) * length / out_len - 0.5       # output pixel centre in input pixels

    def region(i: np.ndarray) -> np.ndarray:
        return np.clip(i, 0, length - 1) * len(model.classes) // length

    nearest = region(np.floor(src + 0.5).astype(int))
    line = np.array([APOLLO8_SUBMIT[model.classes[r]] for r in nearest], np.uint8)
    midway = np.abs(src - np.floor(src) - 0.5) < 1e-9
    tie = midway & (region(np.floor(src).astype(int)) != region(np.ceil(src).astype(int)))
    ids, amb = np.zeros((full_h, full_w), np.uint8), np.zeros((full_h, full_w), bool)
    ids[offset:] = line[None, :] if model.axis == 3 else line[:, None]
    amb[offset:] = tie[None, :] if model.axis == 3 else tie[:, None]
    return ids, amb


@pytest.mark.parametrize("axis, classes, flip", [(3, (3, 6), False), (2, (1, 3, 6), True)],
                         ids=["left-right halves", "row bands, flip TTA"])
def test_predict_ids_exact_at_full_size(cfg, test_images, tmp_path, axis, classes, flip):
    """Every pixel of the full-size submission of a model of known output: 0 above the crop,
    below it the submit id of the region the pixel's centre maps into. At these sizes no pixel
    centre falls midway between two regions (asserted), so no boundary band is tolerated."""
    model = Regions(axis, classes)
    pred = Predictor(cfg, models=[(model, SIZE)], flip=flip)
    length = SIZE[0] if axis == 3 else SIZE[1]
    for full_size in [(W, H), (3384, 1710)]:
        offset = int(round(OFFSET * full_size[1] / H))              # the crop follows the frame height
        want, ambiguous = expected_ids(model, length, full_size, offset)
        assert not ambiguous.any()
        if axis == 3 and full_size == (W, H):                      # the halves in plain numbers
            assert not want[:OFFSET].any() and (want[OFFSET:, :W // 2] == 217).all() and (want[OFFSET:, W // 2:] == 224).all()
        rgb = np.zeros((full_size[1], full_size[0], 3), np.uint8)
        got = probs_to_ids(pred.predict_probs(rgb), pred.rows_cut(full_size[1]), full_size, pred.scheme)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(pred.predict_ids(rgb), want)
    write_submission(pred, test_images[:1], tmp_path / "sub", zip_output=False, progress=False)
    want, _ = expected_ids(model, length, (W, H), OFFSET)
    np.testing.assert_array_equal(read_label(tmp_path / "sub" / f"{test_images[0][0]}_bin.png"), want)


# ----------------------------------------------------------------------------- submission
def test_write_submission_names_sizes_ids_zip(cfg, ckpt, test_images, tmp_path):
    out = tmp_path / "sub"
    pred = Predictor(cfg, [str(ckpt)], flip=True)
    summary = write_submission(pred, test_images, out, progress=False, num_workers=1)
    names = sorted(Path(p).stem + "_bin.png" for _, p in test_images)
    assert sorted(p.name for p in out.glob("*.png")) == names
    assert summary["written"] == 3 and summary["skipped"] == 0 and not summary["failed"]
    for name in names:
        with Image.open(out / name) as im:
            assert im.mode == "L" and im.size == (W, H)
        assert set(np.unique(read_label(out / name)).tolist()) <= SUBMIT_IDS
    with zipfile.ZipFile(zip_path_for(out)) as zf:
        assert sorted(zf.namelist()) == names
    assert summary["zip"] == str(zip_path_for(out))
    assert validate_submission(out, [p for _, p in test_images]) == []


def test_resume_skips_finished_images(cfg, ckpt, test_images, tmp_path):
    out = tmp_path / "sub"
    write_submission(Predictor(cfg, [str(ckpt)]), test_images, out, zip_output=False, progress=False)
    files = sorted(out.glob("*.png"))
    files[0].unlink()                                            # never written
    Image.new("L", (10, 10)).save(files[1])                      # wrong size: redone
    mtime = files[2].stat().st_mtime_ns
    again = Predictor(cfg, [str(ckpt)])
    summary = write_submission(again, test_images, out, zip_output=False, progress=False)
    assert again.images_predicted == 2
    assert summary["skipped"] == 1 and summary["written"] == 2
    assert files[2].stat().st_mtime_ns == mtime
    assert validate_submission(out, [p for _, p in test_images]) == []
    third = Predictor(cfg, [str(ckpt)])
    assert write_submission(third, test_images, out, zip_output=False, progress=False)["skipped"] == 3
    assert third.images_predicted == 0


def test_unreadable_image_is_reported_not_fatal(cfg, ckpt, test_images, tmp_path):
    bad = tmp_path / "broken_Camera_5.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    images = test_images[:2] + [("broken", str(bad))]
    summary = write_submission(Predictor(cfg, [str(ckpt)]), images, tmp_path / "sub", progress=False)
    assert summary["written"] == 2
    assert [f["key"] for f in summary["failed"]] == ["broken"] and "broken_Camera_5.jpg" in summary["failed"][0]["error"]
    with zipfile.ZipFile(zip_path_for(tmp_path / "sub")) as zf:
        assert len(zf.namelist()) == 2
    problems = validate_submission(tmp_path / "sub", [p for _, p in images])
    assert any(p.startswith("missing: 1") and "broken_Camera_5_bin.png" in p for p in problems)


def test_overlays_written(cfg, ckpt, test_images, tmp_path):
    out = tmp_path / "sub"
    write_submission(Predictor(cfg, [str(ckpt)]), test_images, out, overlay=True, zip_output=False, progress=False)
    overlays = sorted((out / "overlay").glob("*.jpg"))
    assert len(overlays) == 3 and read_image(overlays[0]).shape == (H, W, 3)
    assert validate_submission(out, [p for _, p in test_images]) == []


# ----------------------------------------------------------------------------- validator
@pytest.fixture(scope="module")
def good_submission(cfg, ckpt, test_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "sub"
    write_submission(Predictor(cfg, [str(ckpt)]), test_images, out, zip_output=False, progress=False)
    return out


def _gray(path, array):
    cv2.imwrite(str(path), array)


BREAKAGES = {
    "missing": (lambda f, d: f.unlink(), "missing: 1"),
    "wrong size": (lambda f, d: _gray(f, np.zeros((H // 2, W), np.uint8)), f"size {W}x{H // 2}, expected {W}x{H}"),
    "rgb mode": (lambda f, d: Image.new("RGB", (W, H)).save(f), "image mode RGB"),
    "16-bit": (lambda f, d: _gray(f, np.zeros((H, W), np.uint16)), "image mode I;16"),
    "unknown id": (lambda f, d: _gray(f, np.full((H, W), 100, np.uint8)), "id(s) [100] not in the Apollo label table"),
    "extra": (lambda f, d: shutil.copy(f, d / "170101_000000000_Camera_5_bin.png"), "extra: 1"),
}


@pytest.mark.parametrize("kind", sorted(BREAKAGES))
def test_validator_rejects_each_bad_submission(good_submission, test_images, tmp_path, kind):
    out = tmp_path / "sub"
    shutil.copytree(good_submission, out)
    expected = [p for _, p in test_images]
    assert validate_submission(out, expected) == []
    breaker, message = BREAKAGES[kind]
    breaker(sorted(out.glob("*.png"))[0], out)
    problems = validate_submission(out, expected)
    assert any(message in p for p in problems), problems


def test_validator_keys_expect_the_competition_size(good_submission, test_images):
    keys = [k for k, _ in test_images]
    problems = validate_submission(good_submission, keys)
    assert len(problems) == 3 and all("expected 3384x1710" in p for p in problems)


# ----------------------------------------------------------------------------- video
def test_annotate_video(cfg, ckpt, data, tmp_path):
    src = tmp_path / "in.mp4"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (W, H))
    for p in data["test_images"]:
        writer.write(cv2.cvtColor(read_image(p), cv2.COLOR_RGB2BGR))
    writer.release()
    dst = tmp_path / "out.mp4"
    res = annotate_video(Predictor(cfg, [str(ckpt)]), src, dst, every=2, progress=False)
    assert res["frames"] == 3 and res["predicted"] == 2 and res["fps"] > 0
    cap = cv2.VideoCapture(str(dst))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 3 and frames[0].shape == (H, W, 3)
    with pytest.raises(ValueError, match="cannot open video"):
        annotate_video(Predictor(cfg, [str(ckpt)]), tmp_path / "none.mp4", tmp_path / "x.mp4", progress=False)


def test_draw_fps_marks_the_corner():
    img = draw_fps(np.zeros((H, W, 3), np.uint8), 12.3)
    assert img[:40, :120].any() and not img[H // 2:].any()


# ----------------------------------------------------------------------------- commands
def test_commands_infer_validate_evaluate(ckpt, data, tmp_path, capsys):
    test_dir = Path(data["test_images"][0]).parent
    out = tmp_path / "sub"
    assert commands.run_infer(str(CONFIG), OPTS, str(ckpt), None, str(test_dir), None, str(out),
                              tta_flip=True, scales="1.0", overlay=False, no_zip=False, device="cpu") == 0
    assert "validation: OK" in capsys.readouterr().out
    assert commands.run_check_submission(str(out), str(test_dir), str(CONFIG), OPTS) == 0
    next(out.glob("*.png")).unlink()
    assert commands.run_check_submission(str(out), str(test_dir), str(CONFIG), OPTS) == 1

    lst = tmp_path / "val.csv"
    pd.DataFrame(data["pairs"])[["image", "label", "key"]].to_csv(lst, index=False)
    pred_dir = tmp_path / "val_pred"
    assert commands.run_infer(str(CONFIG), OPTS, str(ckpt), None, None, str(lst), str(pred_dir),
                              None, None, False, True, "cpu") == 0
    assert not zip_path_for(pred_dir).exists()
    assert commands.run_check_submission(str(pred_dir), str(lst), str(CONFIG), OPTS) == 0
    assert commands.run_evaluate(str(pred_dir), str(lst), "apollo8", 1, str(tmp_path / "scores")) == 0
    assert "mIoU (8 classes)" in capsys.readouterr().out
    assert (tmp_path / "scores" / "scores.json").exists()
    gt_dir = Path(data["pairs"][0]["label"]).parent
    assert commands.run_evaluate(str(pred_dir), str(gt_dir), "apollo8", 1) == 0
    assert (pred_dir / "scores.json").exists()


def test_commands_reject_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        images_from(None, None)
    with pytest.raises(ValueError, match="scales"):
        commands.parse_floats("1,x", "scales")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        commands.images_from(str(tmp_path / "nope"), None)
    with pytest.raises(FileNotFoundError, match="not a folder or a list CSV"):
        commands.run_check_submission(str(tmp_path), str(tmp_path / "nope.csv"))


# ----------------------------------------------------------------------------- inputs a user points at
def test_folder_walk_skips_label_trees_and_the_output_folder(data, capsys, tmp_path):
    """A dataset root holds images and label trees together: only the images are inputs,
    and the count of skipped labels is said; files under the output folder are never inputs."""
    from paddle_lane.inference.submission import list_images
    root = Path(data["root"])
    jpgs = sorted(str(p) for p in root.rglob("*.jpg"))
    pngs = list(root.rglob("*.png"))
    assert pngs and all(p.name.endswith("_bin.png") for p in pngs)
    found = list_images(root)
    assert [p for _, p in found] == jpgs
    assert f"skipped {len(pngs)} label file(s)" in capsys.readouterr().out
    out = root / "submission_inside"
    out.mkdir()
    cv2.imwrite(str(out / "x_bin.png"), np.zeros((4, 4), np.uint8))
    cv2.imwrite(str(out / "y.jpg"), np.zeros((4, 4, 3), np.uint8))
    try:
        assert [p for _, p in list_images(root, exclude=[out])] == jpgs
        assert "and 2 file(s) in the output folder" in capsys.readouterr().out
    finally:
        shutil.rmtree(out)  # the dataset fixture is shared


def test_infer_on_a_dataset_root_writes_one_mask_per_image(ckpt, data, tmp_path):
    """`infer --images DATASET_ROOT` (labels beside images) predicts the images only."""
    root = Path(data["root"])
    out = tmp_path / "sub"
    code = cli.main(["infer", "--config", str(CONFIG), "--model", str(ckpt), "--images", str(root),
                     "--out", str(out), "--no-zip", "--opts", *OPTS])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(Path(p).stem + "_bin.png" for p in root.rglob("*.jpg"))


def test_crop_follows_the_frame_height(cfg, capsys):
    """The crop is data.crop_offset rows of data.frame_height-row frames: a half-height frame of
    the same aspect is cut at half the rows, and a frame of another aspect is warned about once."""
    predictor = Predictor(cfg, models=[(pixelwise(5), SIZE)])
    assert predictor.rows_cut(H) == OFFSET and predictor.rows_cut(H // 2) == round(OFFSET / 2)
    half = cv2.resize(smooth_frame(1), (W // 2, H // 2), interpolation=cv2.INTER_AREA)
    ids = predictor.predict_train_ids(half)
    assert ids.shape == (H // 2, W // 2)
    assert (ids[: round(OFFSET / 2)] == 0).all()
    # the same model on the full frame, shrunk: the predictions agree where the crop is the same
    full = predictor.predict_train_ids(smooth_frame(1))
    shrunk = cv2.resize(full, (W // 2, H // 2), interpolation=cv2.INTER_NEAREST_EXACT)
    assert (ids[OFFSET // 2 + 2:] == shrunk[OFFSET // 2 + 2:]).mean() > 0.9
    assert "aspect" not in capsys.readouterr().err
    predictor.predict_train_ids(np.zeros((H, W // 2, 3), np.uint8))
    predictor.predict_train_ids(np.zeros((H, W // 2, 3), np.uint8))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "aspect" in line]
    assert len(warnings) == 1 and f"{W // 2}x{H}" in warnings[0]


# ----------------------------------------------------------------------------- ensembles of different runs
SIZE_B = (96, 32)
OPTS_B = ["model.name=unet", "data.mean=[0.3, 0.5, 0.7]", "data.std=[0.2, 0.25, 0.3]",
          f"stages=[{{width: {SIZE_B[0]}, height: {SIZE_B[1]}, batch_size: 2, iters: 1, lr: 0.01}}]"]


def save_run(root: Path, opts: list[str], seed: int, size: tuple[int, int]) -> tuple[Path, Path, paddle.nn.Layer]:
    """A run folder as the trainer leaves it: RUN/config.yml and RUN/stage0/best (state.json size)."""
    run_cfg = load_config(CONFIG, OPTS + opts)
    paddle.seed(seed)
    model = build_model(run_cfg.model, load_scheme(run_cfg.data.scheme).num_classes)
    ckpt = save_checkpoint(root / "stage0" / "best", model, state={"stage": 0, "size": list(size)})
    save_config(run_cfg, root / "config.yml")
    return ckpt, root / "config.yml", model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs of different architectures, input sizes and mean/std: a lite model (width 4) at SIZE,
    a paddleseg UNet at SIZE_B, and another lite model at SIZE with another mean/std."""
    a = save_run(tmp_path_factory.mktemp("run_a"), [], 11, SIZE)
    b = save_run(tmp_path_factory.mktemp("run_b"), OPTS_B, 12, SIZE_B)
    c = save_run(tmp_path_factory.mktemp("run_c"), ["data.mean=[0.5, 0.5, 0.5]", "data.std=[0.5, 0.5, 0.5]"],
                 13, SIZE)
    return {"a": a, "b": b, "c": c}


def test_ensemble_of_two_architectures_writes_a_valid_submission(runs, test_images, tmp_path, capsys):
    """The README's recipe: --model RUN_A/stage0/best,RUN_B/stage0/best --weights 2,1 with a
    --config whose model is neither; each member is built from its own run's config.yml."""
    (ckpt_a, cfg_a, _), (ckpt_b, cfg_b, _) = runs["a"], runs["b"]
    test_dir = Path(test_images[0][1]).parent
    out = tmp_path / "sub"
    assert commands.run_infer(str(CONFIG), OPTS, f"{ckpt_a},{ckpt_b}", "2,1", str(test_dir), None, str(out),
                              device="cpu", no_zip=True) == 0
    printed = capsys.readouterr().out
    assert "validation: OK" in printed
    assert f"lite width 4 {SIZE[0]}x{SIZE[1]}, w=0.67, config {cfg_a}" in printed
    assert f"unet {SIZE_B[0]}x{SIZE_B[1]}, w=0.33, config {cfg_b}" in printed
    for _, path in test_images:
        ids = read_label(out / f"{Path(path).stem}_bin.png")
        assert ids.shape == (H, W) and set(np.unique(ids).tolist()) <= SUBMIT_IDS and not ids[:OFFSET].any()


def test_ensemble_equals_the_weighted_average_of_its_members(cfg, runs, test_images):
    """Fused probabilities = 2/3 member A + 1/3 member B, each member's own probabilities (its own
    model, size and mean/std, through a single-model Predictor of its config) with B resized to
    A's size (bilinear, align_corners=False), under flip TTA. A third member at A's size with
    another mean/std gets its own input (inputs are keyed by size and mean/std)."""
    (ckpt_a, cfg_a, model_a), (ckpt_b, cfg_b, model_b), (ckpt_c, cfg_c, model_c) = runs["a"], runs["b"], runs["c"]
    paths = [p for _, p in test_images[:2]]                               # one batch: the UNet is slow on CPU

    def probs(predictor, workers=0):
        return [r.probs for r in predictor.predict_files(paths, batch_size=2, num_workers=workers, progress=False)]

    def up(b):
        return F.interpolate(paddle.to_tensor(b[None]), size=[SIZE[1], SIZE[0]], mode="bilinear",
                             align_corners=False).numpy()[0]

    pa = probs(Predictor(load_config(cfg_a), models=[(model_a, SIZE)], flip=True))
    pb = probs(Predictor(load_config(cfg_b), models=[(model_b, SIZE_B)], flip=True))
    pc = probs(Predictor(load_config(cfg_c), models=[(model_c, SIZE)], flip=True))
    assert pb[0].shape == (8, SIZE_B[1], SIZE_B[0])

    ens = Predictor(cfg, [str(ckpt_a), str(ckpt_b)], [2, 1], flip=True)
    assert [m.size for m in ens.members] == [SIZE, SIZE_B] and ens.base_size == SIZE
    for f, a, b in zip(probs(ens, workers=1), pa, pb):
        assert f.shape == (8, SIZE[1], SIZE[0])
        np.testing.assert_allclose(f, 2 / 3 * a + 1 / 3 * up(b), atol=1e-5)
        assert np.abs(f - a).max() > 1e-3                                  # member B does count

    three = Predictor(cfg, [str(ckpt_a), str(ckpt_b), str(ckpt_c)], [2, 1, 1], flip=True)
    assert len(three.input_keys) == 3 and three.input_sizes == sorted([SIZE, SIZE_B])
    for f, a, b, c in zip(probs(three), pa, pb, pc):
        np.testing.assert_allclose(f, 0.5 * a + 0.25 * up(b) + 0.25 * c, atol=1e-5)


def test_member_configs_given_explicitly_and_the_fallback(cfg, ckpt, runs, test_images, tmp_path, capsys):
    """A checkpoint copied away from its run: without a config it is built as the --config model
    (and refused, being a UNet); --member-configs names each member's config. A checkpoint
    without a config nearby is said to use the --config, once per member."""
    (ckpt_a, cfg_a, _), (ckpt_b, cfg_b, _) = runs["a"], runs["b"]
    alone = tmp_path / "copied" / "best"
    shutil.copytree(ckpt_b, alone)
    with pytest.raises(ValueError, match="checkpoint does not match the model"):
        Predictor(cfg, [str(alone)])
    out = tmp_path / "sub"
    assert commands.run_infer(str(CONFIG), OPTS, f"{ckpt_a},{alone}", None, str(Path(test_images[0][1]).parent),
                              None, str(out), device="cpu", no_zip=True, member_configs=f"{cfg_a},{cfg_b}") == 0
    assert f"{alone}: unet {SIZE_B[0]}x{SIZE_B[1]}, w=0.50, config {cfg_b}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--member-configs: 1 config"):
        commands._predictor(cfg, f"{ckpt_a},{alone}", member_configs=str(cfg_a))
    text = commands.describe(Predictor(cfg, [str(ckpt), str(ckpt)]))
    assert text.count("no config.yml in, beside or two levels above it: model, size and mean/std of") == 2
    weights_file = Predictor(cfg, [str(ckpt_b / "model.pdparams")]).members[0]      # a .pdparams in RUN/stage0/best
    assert weights_file.config == str(cfg_b) and weights_file.size == SIZE_B
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        Predictor(cfg, [str(ckpt_b) + "x"])


@pytest.mark.parametrize("opts, key", [(["data.scheme=apollo9"], "data.scheme"),
                                       (["data.crop_offset=80"], "data.crop_offset")])
def test_member_with_another_scheme_or_crop_is_refused(cfg, runs, tmp_path, opts, key):
    """Members must share the scheme (class count) and the crop of the --config: one line naming
    the checkpoint and the key. The same crop in other units (38 of 96 rows = 76 of 192) is fine."""
    ckpt_a = runs["a"][0]
    other, _, _ = save_run(tmp_path / "other", opts, 13, SIZE)
    with pytest.raises(ValueError, match=key) as info:
        Predictor(cfg, [str(ckpt_a), str(other)])
    assert str(other) in str(info.value) and "\n" not in str(info.value)
    halved, _, _ = save_run(tmp_path / "halved", ["data.crop_offset=38", "data.frame_height=96"], 14, SIZE)
    assert Predictor(cfg, [str(ckpt_a), str(halved)]).members[1].config == str(tmp_path / "halved" / "config.yml")
