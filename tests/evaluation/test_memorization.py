"""Memorization: copies found with ratio 0, far samples with ratio >> 1, share and ordering, pixel path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from limner.evaluation.memorization import (
    MemorizationResult,
    memorization,
    pixel_vectors,
    typical_nn_distance,
)


def gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def uint8_images(n: int, seed: int, h: int = 32, w: int = 32, c: int = 3) -> np.ndarray:
    """Random uint8 [n, h, w, c]."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def naive_typical(train: np.ndarray) -> float:
    d = np.linalg.norm(train[:, None] - train[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(axis=1)))


TRAIN = gaussian(300, 16, 0)
COPIES = [5, 123, 299]


def mixed_generated() -> tuple[np.ndarray, np.ndarray]:
    """3 exact copies, 2 slight perturbations of training rows, 5 far-away samples -> ([10, 16], kind)."""
    near = TRAIN[[10, 20]] + 1e-3 * gaussian(2, 16, 1)
    far = gaussian(5, 16, 2, shift=30.0)
    kind = np.array(["copy"] * 3 + ["near"] * 2 + ["far"] * 5)
    return np.concatenate([TRAIN[COPIES], near, far]), kind


def test_exact_copies_get_ratio_zero_and_the_right_index():
    gen, kind = mixed_generated()
    result = memorization(gen, TRAIN)
    np.testing.assert_array_equal(result.nn_index_feature[:3], COPIES)
    np.testing.assert_array_equal(result.nn_index_feature[3:5], [10, 20])
    assert (result.ratio_feature[:3] == 0).all() and (result.nn_dist_feature[:3] == 0).all()
    assert (result.ratio_feature[kind == "far"] > 10).all()


def test_near_copy_share_counts_ratios_below_the_threshold():
    gen, kind = mixed_generated()
    assert memorization(gen, TRAIN).near_copy_share_feature == pytest.approx(0.5)  # copies + near
    assert memorization(gen, TRAIN, threshold=1e-9).near_copy_share_feature == pytest.approx(0.3)
    assert memorization(gen, TRAIN, threshold=1e6).near_copy_share_feature == 1.0
    ratio = memorization(gen, TRAIN).ratio_feature
    assert (ratio[kind == "near"] > 0).all() and (ratio[kind == "near"] < 1e-2).all()


def test_ratio_of_fresh_samples_is_near_one():
    # Fresh draws from the training distribution sit about as far as training rows do.
    ratio = memorization(gaussian(200, 16, 3), TRAIN).ratio_feature
    assert 0.7 < np.median(ratio) < 1.4
    assert memorization(gaussian(200, 16, 3), TRAIN).near_copy_share_feature == 0.0


def test_worst_orders_by_feature_ratio():
    gen, _ = mixed_generated()
    result = memorization(gen[::-1].copy(), TRAIN)
    worst = result.worst(4)
    np.testing.assert_array_equal(result.ratio_feature[worst], np.sort(result.ratio_feature)[:4])
    assert set(worst[:3]) == {9, 8, 7}  # the copies, now at the end
    assert len(result.worst(0)) == 0 and len(result.worst(100)) == 10


def test_typical_distance_matches_the_naive_median():
    assert typical_nn_distance(TRAIN) == pytest.approx(naive_typical(TRAIN), rel=1e-12)
    result = memorization(gaussian(4, 16, 4), TRAIN)
    expected = result.nn_dist_feature / naive_typical(TRAIN)
    np.testing.assert_allclose(result.ratio_feature, expected, rtol=1e-12)


def test_subsampled_typical_distance_searches_the_full_training_set():
    d = np.linalg.norm(TRAIN[:, None] - TRAIN[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    all_nn = d.min(axis=1)
    sub = typical_nn_distance(TRAIN, max_reference=51, seed=7)
    # The median of 51 of the full-set NN distances is one of them (odd count), not a distance
    # within the sparser 51-row subset, which would be larger.
    assert np.isclose(all_nn, sub, rtol=1e-12).any()
    assert sub == typical_nn_distance(TRAIN, max_reference=51, seed=7)
    assert abs(sub / np.median(all_nn) - 1) < 0.2


def test_duplicated_training_set_does_not_divide_by_zero():
    train = np.repeat(gaussian(5, 3, 5), 3, axis=0)  # every row has an exact twin
    result = memorization(np.concatenate([train[:1], gaussian(1, 3, 6)]), train)
    assert result.typical_dist_feature == 0.0
    assert result.ratio_feature[0] == 0.0 and np.isinf(result.ratio_feature[1])


def test_summary_is_json_serialisable_and_pixel_fields_optional():
    gen, _ = mixed_generated()
    result = memorization(gen, TRAIN)
    summary = json.loads(json.dumps(result.summary()))
    assert summary["near_copy_share_feature"] == pytest.approx(0.5)
    assert summary["near_copy_share_pixel"] is None and result.ratio_pixel is None
    assert summary["worst"][:3] == sorted(summary["worst"][:3]) == [0, 1, 2]
    assert summary["threshold"] == pytest.approx(1 / 3) and summary["num_generated"] == 10


# ----------------------------------------------------------------------------------------------
# Pixel path


def test_pixel_path_finds_copies_in_either_layout():
    train_imgs = uint8_images(40, 8)
    gen_imgs = np.concatenate([train_imgs[[7, 31]], uint8_images(3, 9)])
    train_px = pixel_vectors(train_imgs)                                    # numpy NHWC
    gen_px = pixel_vectors(torch.from_numpy(gen_imgs).permute(0, 3, 1, 2))  # torch NCHW
    result = memorization(gaussian(5, 4, 10), gaussian(40, 4, 11), gen_pixels=gen_px, train_pixels=train_px)
    np.testing.assert_array_equal(result.nn_index_pixel[:2], [7, 31])
    assert (result.ratio_pixel[:2] == 0).all() and (result.ratio_pixel[2:] > 0.5).all()
    assert result.near_copy_share_pixel == pytest.approx(0.4)
    assert json.loads(json.dumps(result.summary()))["near_copy_share_pixel"] == pytest.approx(0.4)


def test_pixel_vectors_layouts_agree():
    imgs = uint8_images(3, 12, h=20, w=28)
    nhwc = pixel_vectors(imgs, size=8)
    assert nhwc.shape == (3, 8 * 8 * 3) and nhwc.dtype == np.float64
    np.testing.assert_array_equal(pixel_vectors(imgs.transpose(0, 3, 1, 2).copy(), size=8), nhwc)
    np.testing.assert_array_equal(pixel_vectors(torch.from_numpy(imgs).permute(0, 3, 1, 2), size=8), nhwc)
    ambiguous = uint8_images(2, 13, h=3, w=4, c=3)  # H = 3 could be channels: numpy means NHWC
    as_nchw = ambiguous.transpose(0, 3, 1, 2).copy()
    np.testing.assert_array_equal(pixel_vectors(ambiguous, size=2),
                                  pixel_vectors(as_nchw, size=2, layout="nchw"))


def test_pixel_vectors_area_downsample():
    imgs = uint8_images(2, 14, h=32, w=32, c=1)
    expected = imgs.reshape(2, 16, 2, 16, 2, 1).mean(axis=(2, 4)) / 255.0  # 2x2 box means
    np.testing.assert_allclose(pixel_vectors(imgs, size=16), expected.reshape(2, -1), rtol=1e-12)
    flat = np.full((1, 24, 17, 3), 204, dtype=np.uint8)  # non-integer factors keep constants
    np.testing.assert_allclose(pixel_vectors(flat, size=16), 0.8, rtol=1e-12)
    ramp = np.tile(np.arange(3, dtype=np.uint8)[None, :, None, None] * 100, (1, 1, 3, 1))  # rows 0, 100, 200
    # Output rows span 1.5 input rows: [0, 1.5) -> (0 + 0.5 * 100) / 1.5, [1.5, 3) -> (0.5 * 100 + 200) / 1.5
    out = pixel_vectors(ramp, size=2).reshape(2, 2)
    np.testing.assert_allclose(out[:, 0], [50 / 1.5 / 255, 250 / 1.5 / 255], rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize("kwargs, message", [
    ({"gen_pixels": np.zeros((10, 4))}, "pass both gen_pixels and train_pixels"),
    ({"gen_pixels": np.zeros((10, 4)), "train_pixels": np.zeros((300, 5))}, "dimension mismatch: gen_pixels"),
    ({"gen_pixels": np.zeros((9, 4)), "train_pixels": np.zeros((300, 4))}, "pixel rows"),
    ({"threshold": 0.0}, "threshold must be > 0"),
])
def test_memorization_rejects_bad_arguments(kwargs, message):
    gen, _ = mixed_generated()
    with pytest.raises(ValueError, match=message):
        memorization(gen, TRAIN, **kwargs)


def test_memorization_rejects_bad_features():
    with pytest.raises(ValueError, match="dimension mismatch: gen_features has D=3, train_features has D=16"):
        memorization(gaussian(2, 3, 0), TRAIN)
    with pytest.raises(ValueError, match="train_features has 1 row; memorization needs at least 2"):
        memorization(gaussian(2, 16, 0), TRAIN[:1])
    with pytest.raises(ValueError, match="gen_features contains NaN or Inf"):
        memorization(np.full((2, 16), np.nan), TRAIN)


def test_pixel_vectors_rejects_non_uint8_or_unknown_layout():
    with pytest.raises(ValueError, match="must be uint8"):
        pixel_vectors(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        pixel_vectors(np.zeros((2, 8, 8, 5), dtype=np.uint8))


def test_result_type():
    assert isinstance(memorization(gaussian(2, 16, 0), TRAIN), MemorizationResult)
