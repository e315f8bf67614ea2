"""Labelled image grids: layout arithmetic, upscaling, labels, input types, atomic PNG writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from limner.visualization import make_grid, save_grid
from limner.visualization.grids import _wrap

WHITE = np.array([255, 255, 255], dtype=np.uint8)


def random_images(N: int = 5, C: int = 3, H: int = 32, W: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(N, C, H, W), dtype=np.uint8)


def test_grid_size_arithmetic_without_labels():
    grid = make_grid(random_images(7), nrow=4, scale=3, padding=2)
    assert grid.mode == "RGB"
    assert grid.size == (4 * 96 + 5 * 2, 2 * 96 + 3 * 2)  # (W, H): 4 columns, 2 rows


def test_default_layout_is_square_and_upscales_small_images():
    assert make_grid(random_images(9, H=32, W=32), padding=0).size == (3 * 96, 3 * 96)
    assert make_grid(random_images(2, H=8, W=8), padding=0).size == (2 * 96, 96)
    assert make_grid(random_images(1, H=200, W=150), padding=0).size == (150, 200)


def test_upscale_is_nearest_neighbour_and_cells_are_in_place():
    images = random_images(3, H=4, W=5)
    grid = np.asarray(make_grid(images, nrow=2, scale=3, padding=1))
    cell = grid[1 : 1 + 12, 1 + 15 + 1 : 1 + 15 + 1 + 15]  # row 0, column 1 → image 1
    expected = images[1].transpose(1, 2, 0).repeat(3, axis=0).repeat(3, axis=1)
    np.testing.assert_array_equal(cell, expected)
    assert (grid[0] == WHITE).all() and (grid[:, 0] == WHITE).all()  # padding is background


def test_labels_are_written_under_their_images():
    images = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    plain = make_grid(images, nrow=2, scale=3, padding=2)
    grid = make_grid(images, nrow=2, scale=3, padding=2, labels=["a red car", ""])
    band_h = grid.height - plain.height
    assert band_h > 0 and grid.width == plain.width
    band = np.asarray(grid)[2 + 96 : 2 + 96 + band_h]
    assert not (band[:, 2 : 2 + 96] == WHITE).all()  # label text in cell 0
    assert (band[:, 2 + 96 + 2 : 2 + 2 * 96 + 2] == WHITE).all()  # empty label: background


def test_long_labels_wrap_to_at_most_three_lines():
    images = random_images(2)
    short = make_grid(images, labels=["one", "two"], scale=3)
    three = make_grid(images, labels=["one\ntwo\nthree", "x"], scale=3)
    long = make_grid(images, labels=["word " * 200, "x"], scale=3)
    assert short.height < three.height == long.height
    font = ImageFont.load_default(size=12)
    lines = _wrap("word " * 200, font, 96)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(font.getlength(line) <= 96 for line in lines)
    assert _wrap("x" * 100, font, 96)[0].startswith("x")  # an unbreakable word is split


def test_greyscale_input_becomes_grey_rgb():
    images = random_images(2, C=1)
    grid = np.asarray(make_grid(images, nrow=2, scale=1, padding=0))
    assert grid.shape == (32, 64, 3)
    np.testing.assert_array_equal(grid[..., 0], grid[..., 2])
    np.testing.assert_array_equal(grid[:, :32, 1], images[0, 0])


def test_numpy_and_torch_inputs_give_the_same_grid():
    images = random_images(3)
    a = make_grid(images, labels=["a", "b", "c"])
    b = make_grid(torch.from_numpy(images), labels=["a", "b", "c"])
    assert a.tobytes() == b.tobytes()


def test_background_colour_fills_the_padding():
    grid = np.asarray(make_grid(random_images(1), padding=3, background=(10, 20, 30)))
    assert (grid[0, 0] == [10, 20, 30]).all() and (grid[-1, -1] == [10, 20, 30]).all()


@pytest.mark.parametrize(
    "images, error",
    [
        (np.zeros((1, 3, 8, 8), dtype=np.float32), TypeError),
        (np.zeros((3, 8, 8), dtype=np.uint8), ValueError),
        (np.zeros((1, 4, 8, 8), dtype=np.uint8), ValueError),
        (np.zeros((0, 3, 8, 8), dtype=np.uint8), ValueError),
    ],
)
def test_bad_inputs_are_rejected(images, error):
    with pytest.raises(error):
        make_grid(images)


def test_label_count_must_match():
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        make_grid(random_images(3), labels=["a", "b"])


def test_save_grid_writes_a_png_atomically(tmp_path):
    images = random_images(4)
    path = save_grid(tmp_path / "out" / "grid.png", images, labels=list("abcd"))
    assert path == tmp_path / "out" / "grid.png"
    assert os.listdir(path.parent) == ["grid.png"]  # no temp file left behind
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.convert("RGB").tobytes() == make_grid(images, labels=list("abcd")).tobytes()


def test_failed_save_leaves_neither_temp_file_nor_target(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_grid(tmp_path / "grid.png", random_images(1))
    assert os.listdir(tmp_path) == []
