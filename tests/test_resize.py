"""The shared geometry: shrinking averages pixel areas (checked against block means and an
overlap-weight reference), and full-size argmax equals bilinear upsampling of every class plane
followed by argmax (ties to the lower class), with background above the crop."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from paddle_lane.core.resize import argmax_full_size, resize_image


def _reference(probs: np.ndarray, offset: int, full_size: tuple[int, int]) -> np.ndarray:
    w, h = full_size
    planes = np.stack([cv2.resize(p, (w, h - offset), interpolation=cv2.INTER_LINEAR) for p in probs])
    out = np.zeros((h, w), np.uint8)
    out[offset:] = planes.argmax(axis=0)
    return out


def test_argmax_full_size_matches_upsample_then_argmax():
    probs = np.random.default_rng(0).random((8, 24, 72), dtype=np.float32)
    np.testing.assert_array_equal(argmax_full_size(probs, 17, (211, 93)), _reference(probs, 17, (211, 93)))


def test_argmax_full_size_ties_go_to_the_lower_class():
    probs = np.zeros((8, 6, 12), np.float32)
    probs[3] = probs[5] = 1.0
    out = argmax_full_size(probs, 4, (40, 20))
    assert (out[:4] == 0).all() and (out[4:] == 3).all()


def _area_weights(dst: int, src: int) -> np.ndarray:
    """[dst, src] share of each source pixel [j, j+1) in target pixel i's span
    [i*s, (i+1)*s), s = src/dst, normalised by s so each row sums to 1."""
    s = src / dst
    m = np.zeros((dst, src))
    for i in range(dst):
        for j in range(src):
            m[i, j] = max(0.0, min((i + 1) * s, j + 1) - max(i * s, j)) / s
    return m


def _area_reference(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixel-area average of an HxWx3 image shrunk to size (w, h), in float64."""
    w, h = size
    return np.einsum("ij,jkc,lk->ilc", _area_weights(h, rgb.shape[0]), rgb.astype(np.float64),
                     _area_weights(w, rgb.shape[1]))


def test_shrink_by_an_integer_factor_is_the_block_mean():
    """12x8 -> 4x2 (3x4 blocks): each output pixel is the mean of its source block (area, not bilinear)."""
    rgb = np.random.default_rng(1).random((8, 12, 3)).astype(np.float32) * 255
    out = resize_image(rgb, (4, 2))
    assert out.shape == (2, 4, 3)
    for y in range(2):
        for x in range(4):
            block = rgb[4 * y:4 * y + 4, 3 * x:3 * x + 3].astype(np.float64)
            np.testing.assert_allclose(out[y, x], block.mean(axis=(0, 1)), rtol=0, atol=1e-3)
    # by hand: a few bright pixels, each spread over its 4x3 block of 12 pixels
    dots = np.zeros((8, 12, 3), np.uint8)
    dots[0, 0], dots[7, 11], dots[5, 4], dots[6, 5] = 240, 120, 24, 36
    expected = np.array([[20, 0, 0, 0],
                         [0, 5, 0, 10]], np.uint8)  # 240/12, (24+36)/12, 120/12
    np.testing.assert_array_equal(resize_image(dots, (4, 2)), np.repeat(expected[..., None], 3, axis=2))


@pytest.mark.parametrize("src, dst", [((7, 5), (3, 2)), ((10, 7), (4, 3)), ((11, 9), (4, 5))])
def test_shrink_by_a_fractional_factor_weights_pixels_by_overlap(src, dst):
    """Non-integer shrink factors: every source pixel counts with the area it shares with the target pixel."""
    rgb = np.random.default_rng(2).random((src[1], src[0], 3)).astype(np.float32) * 255
    np.testing.assert_allclose(resize_image(rgb, dst), _area_reference(rgb, dst), rtol=0, atol=1e-3)
    u8 = rgb.round().astype(np.uint8)  # the dtype images have: the exact average, rounded
    assert np.abs(resize_image(u8, dst).astype(np.float64) - _area_reference(u8, dst)).max() <= 0.5 + 1e-9


# ----------------------------------------------------------------------------- crop rows, labels
@pytest.mark.parametrize("offset, frame_height, height, rows", [
    (690, 1710, 1710, 690), (690, 1710, 855, 345), (690, 1710, 428, 173), (690, 1710, 3420, 1380), (76, 192, 96, 38)])
def test_crop_follows_the_frame_height(offset, frame_height, height, rows):
    from paddle_lane.core.resize import crop_rows
    assert crop_rows(offset, frame_height, height) == rows  # round(offset * height / frame_height), by hand


def _centre_reference(ids: np.ndarray, size) -> np.ndarray:
    """The source pixel under each target pixel's centre (a centre on a border takes the pixel
    that starts there, as OpenCV >= 4.10 does)."""
    w, h = size
    ys = np.minimum(np.floor((np.arange(h) + 0.5) * ids.shape[0] / h), ids.shape[0] - 1).astype(int)
    xs = np.minimum(np.floor((np.arange(w) + 0.5) * ids.shape[1] / w), ids.shape[1] - 1).astype(int)
    return ids[ys][:, xs]


def test_label_vote_takes_the_largest_share_of_each_block():
    """4x4 -> 2x2 by hand: each 2x2 block goes to its most frequent value; a tie goes to the
    lower value; ignore (255) competes like a class."""
    from paddle_lane.core.resize import resize_label
    ids = np.array([[1, 1, 2, 3],
                    [1, 0, 2, 2],
                    [0, 0, 255, 255],
                    [4, 4, 255, 7]], np.uint8)
    np.testing.assert_array_equal(resize_label(ids, (2, 2), "vote"), [[1, 2], [0, 255]])
    tie = np.array([[5, 5], [6, 6]], np.uint8)  # one block, half 5 and half 6
    assert resize_label(tie, (1, 1), "vote").tolist() == [[5]]


@pytest.mark.parametrize("mode", ["nearest", "vote"])
def test_label_resize_samples_centres_when_nearest_or_enlarging(mode):
    from paddle_lane.core.resize import resize_label
    ids = np.random.default_rng(3).integers(0, 8, (30, 50)).astype(np.uint8)
    # even target sides: no target centre falls on a source border, so "the pixel under it" is unique
    np.testing.assert_array_equal(resize_label(ids, (76, 46), mode), _centre_reference(ids, (76, 46)))
    np.testing.assert_array_equal(resize_label(ids, (70, 20), mode), _centre_reference(ids, (70, 20)))  # one axis up
    if mode == "nearest":
        np.testing.assert_array_equal(resize_label(ids, (20, 12), mode), _centre_reference(ids, (20, 12)))
    assert resize_label(ids, (50, 30), mode) is ids


def test_label_resize_rejects_an_unknown_rule():
    from paddle_lane.core.resize import resize_label
    with pytest.raises(ValueError, match=r"label resize rule must be one of \['vote', 'nearest'\], got 'area'"):
        resize_label(np.zeros((4, 4), np.uint8), (2, 2), "area")


def test_resize_image_enlarges_bilinearly_and_keeps_a_same_size_image():
    rgb = np.random.default_rng(4).integers(0, 256, (6, 8, 3)).astype(np.uint8)
    assert resize_image(rgb, (8, 6)) is rgb
    # enlarging, or shrinking one axis only, is bilinear with pixel-centre alignment
    for size in ((16, 12), (4, 12), (16, 3)):
        want = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(resize_image(rgb, size), want)
    assert not np.array_equal(resize_image(rgb, (3, 2)), cv2.resize(rgb, (3, 2), interpolation=cv2.INTER_LINEAR))


def test_one_axis_equal_or_enlarged_is_bilinear_not_area():
    """Area only when both sides shrink: a width kept (8 -> 8) or a height enlarged (6 -> 7)
    with the other side shrinking is bilinear."""
    rgb = np.random.default_rng(5).integers(0, 256, (6, 8, 3)).astype(np.uint8)
    for size in ((8, 3), (4, 6), (4, 7), (6, 7)):
        np.testing.assert_array_equal(resize_image(rgb, size), cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR),
                                      err_msg=str(size))
    area = cv2.resize(rgb, (4, 3), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(resize_image(rgb, (4, 3)), area)


def test_label_vote_only_when_both_sides_shrink():
    """Vote mode on a kept width (or height) samples centres like nearest: in rows 3, 5, 3 the
    centre row is 5, where a vote would take 3 (two of three)."""
    from paddle_lane.core.resize import resize_label
    ids = np.array([[3] * 6, [5] * 6, [3] * 6] * 2, np.uint8)                 # 6 wide, 6 tall
    assert resize_label(ids, (6, 2), "vote").tolist() == [[5] * 6, [5] * 6]
    assert resize_label(ids.T.copy(), (2, 6), "vote").tolist() == [[5, 5]] * 6
    wide = np.array([[3, 5, 3] * 3] * 6, np.uint8)                            # 9 wide, 6 tall
    assert resize_label(wide, (3, 7), "vote").tolist() == [[5] * 3] * 7       # height enlarged: centres
    voted = resize_label(wide, (3, 2), "vote")
    assert voted.dtype == np.uint8 and voted.tolist() == [[3] * 3] * 2         # both shrink: the majority


def test_label_vote_counts_the_whole_block_not_its_centre():
    """3x shrink: bilinear would read each block's centre pixel; the vote counts all nine."""
    from paddle_lane.core.resize import resize_label
    ids = np.full((6, 6), 4, np.uint8)
    ids[1, 1] = ids[1, 4] = ids[4, 1] = ids[4, 4] = 9                       # the centre of every block
    ids[3:6, 3:6][ids[3:6, 3:6] == 4] = 2                                    # one block mostly 2
    assert resize_label(ids, (2, 2), "vote").tolist() == [[4, 4], [4, 2]]
    assert resize_label(ids, (2, 2), "nearest").tolist() == [[9, 9], [9, 9]]


def test_argmax_full_size_is_uint8():
    from paddle_lane.core.resize import argmax_full_size
    probs = np.random.default_rng(6).random((3, 4, 5)).astype(np.float32)
    out = argmax_full_size(probs, 2, (10, 10))
    assert out.dtype == np.uint8 and out.shape == (10, 10)


def test_argmax_full_size_takes_half_precision_scores():
    """A half-precision backend's float16 scores go through (OpenCV resizes float32, not float16)."""
    from paddle_lane.core.resize import argmax_full_size
    probs = np.random.default_rng(7).random((3, 4, 5)).astype(np.float32)
    half = argmax_full_size(probs.astype(np.float16), 0, (10, 8))
    full = argmax_full_size(probs.astype(np.float16).astype(np.float32), 0, (10, 8))
    np.testing.assert_array_equal(half, full)


def test_label_vote_on_a_tall_source():
    """3 wide, 9 tall -> 1 x 3: both sides shrink (the height stays above the source width), so
    each 3x3 block votes: columns 3, 5, 3 give 3 where the centre column would give 5."""
    from paddle_lane.core.resize import resize_label
    ids = np.array([[3, 5, 3]] * 9, np.uint8)
    assert resize_label(ids, (1, 3), "vote").tolist() == [[3]] * 3
    assert resize_label(ids, (1, 3), "nearest").tolist() == [[5]] * 3
