"""resize_center_crop: one documented policy for every geometry (RELIABILITY.md A12)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from limner.data.transforms import center_square_box, fit_array, resize_center_crop

sides = st.one_of(st.integers(1, 300), st.sampled_from([1, 2, 3000]))


@settings(max_examples=60, deadline=None)
@given(w=sides, h=sides, size=st.integers(1, 64), grey=st.booleans(), value=st.integers(0, 255))
def test_any_geometry_gives_size_square_and_keeps_flat_colour(w, h, size, grey, value):
    img = Image.new("L" if grey else "RGB", (w, h), value if grey else (value, 255 - value, 7))
    out = resize_center_crop(img, size)
    assert out.shape == (size, size, 1 if grey else 3) and out.dtype == np.uint8
    expected = [value] if grey else [value, 255 - value, 7]
    assert np.abs(out.astype(int) - np.array(expected)).max() <= 1  # no ringing on a flat image


@given(w=st.integers(1, 5000), h=st.integers(1, 5000))
def test_square_box_is_centred_and_inside(w, h):
    left, top, right, bottom = center_square_box(w, h)
    assert right - left == bottom - top == min(w, h)
    assert 0 <= left and right <= w and 0 <= top and bottom <= h
    assert abs(left - (w - right)) <= 1 and abs(top - (h - bottom)) <= 1


def bands(n: int, side: int, horizontal: bool) -> Image.Image:
    """Three equal bands (red, green, blue) along the long axis of a 3*side x side image."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    arr = np.zeros((side, 3 * side, 3), np.uint8)
    for i, c in enumerate(colours):
        arr[:, i * side:(i + 1) * side] = c
    img = Image.fromarray(arr)
    return img if horizontal else img.transpose(Image.Transpose.ROTATE_90)


@pytest.mark.parametrize("horizontal", [True, False])
def test_centre_crop_exact_when_shorter_side_matches(horizontal):
    out = resize_center_crop(bands(3, 16, horizontal), 16)
    assert (out == np.array([0, 255, 0], np.uint8)).all()


@pytest.mark.parametrize("horizontal", [True, False])
@pytest.mark.parametrize("size", [8, 40])  # down- and upscale
def test_centre_crop_keeps_middle_band(horizontal, size):
    out = resize_center_crop(bands(3, 20, horizontal), size).astype(int)
    inner = out[2:-2, 2:-2]
    assert inner[..., 1].min() > 200 and inner[..., 0].max() < 60 and inner[..., 2].max() < 60


def test_downscale_is_antialiased():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    out = resize_center_crop(Image.fromarray(checker), 8)
    assert np.abs(out.astype(int) - 127).max() <= 8  # averaged, not aliased to 0/255


def test_rejects_other_modes_and_sizes():
    with pytest.raises(ValueError):
        resize_center_crop(Image.new("RGBA", (4, 4)), 4)
    with pytest.raises(ValueError):
        resize_center_crop(Image.new("RGB", (4, 4)), 0)


def test_fit_array_channels_and_alpha():
    rgba = np.zeros((10, 20, 4), np.uint8)  # fully transparent black
    out = fit_array(rgba, 8, 3, background=(255, 0, 0))
    assert out.shape == (8, 8, 3) and (out == [255, 0, 0]).all()
    grey = fit_array(np.full((8, 8, 3), 100, np.uint8), 8, 1)
    assert grey.shape == (8, 8, 1) and (grey == 100).all()
    same = np.zeros((8, 8, 1), np.uint8)
    assert fit_array(same, 8, 1) is same


@pytest.mark.parametrize("w, h", [(1, 20_000), (20_000, 1), (1, 1), (3, 20_000)])
def test_extreme_strips(w, h):
    out = resize_center_crop(Image.new("RGB", (w, h), (10, 20, 30)), 32)
    assert out.shape == (32, 32, 3) and (np.abs(out.astype(int) - [10, 20, 30]) <= 1).all()


def test_large_downscale_keeps_flat_colour():
    # Pillow's Image.reduce drifts at large factors; the policy must not
    out = resize_center_crop(Image.new("L", (6000, 4000), 255), 1)
    assert out.shape == (1, 1, 1) and out[0, 0, 0] == 255
