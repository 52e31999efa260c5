"""The predictor's model-free halves (paddle_lane.inference.geometry) against references written here:
area means of blocks, a numpy bilinear upsampling with half-pixel centres, the apollo8 decode
table by hand, PIL's reduced JPEG decode. Fast: it is the mutation-testing selection of the
predictor's pre- and post-processing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from paddle_lane.core.labels import load_scheme
from paddle_lane.inference import geometry as geo

SUBMIT = np.array([0, 204, 203, 217, 210, 214, 224, 227], np.uint8)  # apollo8 train id -> Apollo id


def bilinear_up(plane: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize with edge clamping (what cv2.INTER_LINEAR does)."""
    h, w = plane.shape

    def taps(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = taps(out_h, h)
    x0, x1, fx = taps(out_w, w)
    top = plane[y0][:, x0] * (1 - fx) + plane[y0][:, x1] * fx
    bottom = plane[y1][:, x0] * (1 - fx) + plane[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


# ----------------------------------------------------------------------------- inputs
def test_scaled_size_rounds_and_never_reaches_zero():
    assert geo.scaled_size((768, 256), 0.75) == (576, 192)
    assert geo.scaled_size((768, 256), 1.25) == (960, 320)
    assert geo.scaled_size((7, 3), 0.5) == (4, 2)     # round half to even: 3.5 -> 4, 1.5 -> 2
    assert geo.scaled_size((3, 3), 0.1) == (1, 1)
    assert geo.scaled_size((3, 2), 0.0) == (1, 1)


def test_inputs_from_array_crop_then_area_mean():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, size=(2, 4, 3)).astype(np.uint8)
    frame = np.zeros((7, 8, 3), np.uint8)
    frame[:3] = 255                                      # above the crop: must not leak in
    frame[3:] = np.kron(small, np.ones((2, 2, 1), np.uint8))
    a, b = geo.inputs_from_array(frame, [(4, 2), (8, 4)], 3)
    np.testing.assert_array_equal(a, small)
    np.testing.assert_array_equal(b, frame[3:])
    noise = rng.integers(0, 256, size=(7, 8, 3)).astype(np.uint8)
    (c,) = geo.inputs_from_array(noise, [(4, 2)], 3)
    ref = noise[3:].reshape(2, 2, 4, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(c.astype(np.float64) - ref).max() <= 0.5 + 1e-9


def test_height_not_above_the_offset_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^<array>: image height 3 is not above data.crop_offset 3$"):
        geo.inputs_from_array(np.zeros((3, 4, 3), np.uint8), [(2, 2)], 3)
    geo.inputs_from_array(np.zeros((4, 4, 3), np.uint8), [(2, 1)], 3)
    with pytest.raises(ValueError, match=r"^f.jpg: image height 10 is not above data.crop_offset 12$"):
        geo.inputs_from_file("f.jpg", [(2, 2)], 12, (8, 10))


def test_inputs_from_file_png_equals_the_array_path(tmp_path):
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, size=(20, 24, 3)).astype(np.uint8)
    path = tmp_path / "f.png"
    Image.fromarray(frame).save(path)
    got = geo.inputs_from_file(str(path), [(12, 8), (6, 4)], 4, (24, 20))
    want = geo.inputs_from_array(frame, [(12, 8), (6, 4)], 4)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_inputs_from_file_jpeg_uses_the_reduced_decode_per_size(tmp_path):
    rng = np.random.default_rng(3)
    full = cv2.resize(rng.integers(0, 256, size=(43, 85, 3)).astype(np.uint8), (3384, 1710),
                      interpolation=cv2.INTER_LINEAR)
    path = tmp_path / "f.jpg"
    Image.fromarray(full).save(path, quality=95)

    def reference(reduce, size):
        with Image.open(path) as im:
            im.draft("RGB", (3384 // reduce, 1710 // reduce))
            rgb = np.asarray(im.convert("RGB"))
        assert rgb.shape[1] == 3384 // reduce
        crop = rgb[690 // reduce:]
        shrink = size[0] < crop.shape[1] and size[1] < crop.shape[0]  # area when shrinking both ways
        return cv2.resize(crop, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    sizes = [(768, 256), (1536, 512), (3384, 1020)]
    got = geo.inputs_from_file(str(path), sizes, 690, (3384, 1710))
    # 690 is divisible by 2 only: 768x256 and 1536x512 come from the half-size decode (1692x510 after
    # the crop: 1536x512 shrinks across and stretches down, so bilinear), full size from no reduction
    for g, size, reduce in zip(got, sizes, (2, 2, 1)):
        assert g.shape == (size[1], size[0], 3) and g.dtype == np.uint8
        np.testing.assert_array_equal(g, reference(reduce, size))


def test_normalized_inputs_pick_the_crop_of_each_size_and_normalize():
    a = np.full((2, 4, 3), 51, np.uint8)
    b = np.full((1, 2, 3), 255, np.uint8)
    keys = [((2, 1), (0.5, 0.5, 0.5), (0.5, 0.25, 1.0)), ((4, 2), (0.0, 0.1, 0.2), (1.0, 1.0, 1.0))]
    x, y = geo.normalized_inputs([a, b], [(4, 2), (2, 1)], keys)
    assert x.shape == (3, 1, 2) and y.shape == (3, 2, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.5) / 0.5, (1 - 0.5) / 0.25, 0.5], rtol=1e-6)
    np.testing.assert_allclose(y[:, 1, 3], [0.2, 0.1, 0.0], atol=1e-6)


# ----------------------------------------------------------------------------- outputs
def test_probs_to_train_ids_is_bilinear_up_then_argmax_below_the_crop():
    rng = np.random.default_rng(4)
    probs = rng.random((8, 5, 7)).astype(np.float32)
    full_w, full_h, offset = 21, 19, 4
    got = geo.probs_to_train_ids(probs, offset, (full_w, full_h))
    assert got.shape == (full_h, full_w) and got.dtype == np.uint8
    assert (got[:offset] == 0).all()
    up = np.stack([bilinear_up(p.astype(np.float64), full_w, full_h - offset) for p in probs])
    ref = up.argmax(axis=0)
    top2 = np.sort(up, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4                 # cv2's float rounding may flip a near tie
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(got[offset:][clear], ref[clear])


def test_ties_go_to_the_lower_class_and_ids_are_decoded():
    probs = np.zeros((8, 2, 2), np.float32)
    probs[3] = 0.5
    probs[6] = 0.5                                       # tie between 3 and 6 everywhere: 3 (stopping)
    probs[1, 1, 1] = 0.9
    ids = geo.probs_to_ids(probs, 1, (2, 3), load_scheme("apollo8"))
    np.testing.assert_array_equal(geo.probs_to_train_ids(probs, 1, (2, 3)), [[0, 0], [3, 3], [3, 1]])
    np.testing.assert_array_equal(ids, SUBMIT[np.array([[0, 0], [3, 3], [3, 1]])])


def test_every_class_decodes_to_its_submission_id():
    probs = np.eye(8, dtype=np.float32).reshape(8, 1, 8)    # class c wins column c
    ids = geo.probs_to_ids(probs, 0, (8, 1), load_scheme("apollo8"))
    np.testing.assert_array_equal(ids[0], SUBMIT)


# ----------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize("total,window,stride,starts", [
    (10, 4, 3, [0, 3, 6]),
    (10, 4, 4, [0, 4, 6]),
    (12, 4, 4, [0, 4, 8]),
    (4, 4, 2, [0]),
    (3, 4, 1, [0]),
    (5, 4, 1, [0, 1]),
])
def test_window_starts(total, window, stride, starts):
    assert geo.window_starts(total, window, stride) == starts


def test_normalize_weights():
    assert geo.normalize_weights(None, 4) == [0.25] * 4
    assert geo.normalize_weights([2, 1], 2) == pytest.approx([2 / 3, 1 / 3])
    assert geo.normalize_weights([0, 3], 2) == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"^ensemble weights: 1 weight\(s\) for 2 model\(s\)$"):
        geo.normalize_weights([1], 2)
    with pytest.raises(ValueError, match=r"must be >= 0 with a positive sum, got \[1.0, -0.5\]"):
        geo.normalize_weights([1, -0.5], 2)
    with pytest.raises(ValueError, match=r"positive sum, got \[0.0, 0.0\]"):
        geo.normalize_weights([0, 0], 2)


def test_decode_image_from_bytes_and_its_errors(tmp_path):
    from paddle_lane.core.label_io import UnreadableFileError, decode_image, read_image
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, size=(16, 16, 3)).astype(np.uint8)
    path = tmp_path / "f.png"
    Image.fromarray(frame).save(path)
    np.testing.assert_array_equal(decode_image(path.read_bytes()), frame)
    quarter = decode_image(path.read_bytes(), 4)               # a PNG reduced by area means of 4x4 blocks
    ref = frame.reshape(4, 4, 4, 4, 3).astype(np.float64).mean(axis=(1, 3))
    assert quarter.shape == (4, 4, 3) and np.abs(quarter - ref).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(read_image(path, 4), quarter)
    with pytest.raises(UnreadableFileError, match=r"^upload: cannot decode image$"):
        decode_image(b"", 1, "upload")
    with pytest.raises(UnreadableFileError, match=r"^<bytes>: cannot decode image$"):
        decode_image(b"GIF89a not an image")
    with pytest.raises(UnreadableFileError, match="truncated JPEG"):
        decode_image(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
    with pytest.raises(ValueError, match="reduce must be 1, 2, 4 or 8, got 3"):
        decode_image(path.read_bytes(), 3)


def test_errors_name_their_source_and_small_weights_normalise(tmp_path):
    from paddle_lane.core.label_io import UnreadableFileError
    cut = tmp_path / "cut.jpg"
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(cut, quality=90)
    cut.write_bytes(cut.read_bytes()[:-40])
    with pytest.raises(UnreadableFileError, match=rf"^{cut}: truncated JPEG"):
        geo.inputs_from_file(str(cut), [(12, 8)], 4, (24, 20))
    with pytest.raises(UnreadableFileError, match=r"^upload: truncated JPEG"):
        geo.inputs_from_bytes(cut.read_bytes(), [(12, 8)], 4, (24, 20), "upload")
    with pytest.raises(ValueError, match=r"^upload: image height 20 is not above data.crop_offset 20$"):
        geo.inputs_from_bytes(cut.read_bytes(), [(12, 8)], 20, (24, 20), "upload")
    assert geo.normalize_weights([0.5, 0.25], 2) == pytest.approx([2 / 3, 1 / 3])


def test_each_tta_scale_weighs_the_same_and_none_is_an_error():
    assert geo.scale_weights([1.0]) == [1.0]
    assert geo.scale_weights([0.75, 1.0, 1.25]) == [1 / 3] * 3
    assert geo.scale_weights((0.5, 1.0)) == [0.5, 0.5]
    with pytest.raises(ValueError, match="TTA needs at least one scale"):
        geo.scale_weights([])
