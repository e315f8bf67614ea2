"""decode_image: the one decode function (RELIABILITY.md A1-A5, A7-A11)."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import limner.data  # noqa: F401  (importing must not flip Pillow globals)
from limner.data import decode as decode_module
from limner.data.decode import ALLOWED_FORMATS, decode_image
from limner.errors import ImageDecodeError


def reason_of(source, **kw) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(source, **kw)
    return info.value.reason


def test_pillow_globals_untouched():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS is not None
    assert ALLOWED_FORMATS == frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})


def test_decode_module_is_torch_free():
    tree = ast.parse(Path(decode_module.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "torch" not in imported


@pytest.mark.parametrize("name", ["good.png", "good.jpg", "good.webp", "good.bmp", "good.gif"])
def test_allowed_formats_decode_to_rgb_and_l(fx, name):
    data = fx.corpus()[name]
    rgb, grey = decode_image(data), decode_image(data, mode="L")
    assert rgb.mode == "RGB" and grey.mode == "L" and rgb.size == grey.size


def test_zero_byte_file_names_path(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert info.value.reason == "empty file" and info.value.path == str(path)
    assert str(path) in str(info.value)
    assert reason_of(b"") == "empty file"


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated_files_rejected(fx, tmp_path, fmt):
    data = getattr(fx, fmt)(64, 64)
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert "truncated" in info.value.reason and info.value.path == str(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# A peak-memory mark only shows an allocation larger than every earlier one: in a test worker that
# already trained models a large decode would not raise it. So the bomb is decoded in a fresh
# process that has only imported decode, reading the peak from /proc (VmHWM starts afresh at exec;
# ru_maxrss would carry over the forking worker's peak).
_BOMB_PROBE = """
import re, sys
from limner.data.decode import decode_image
from limner.errors import ImageDecodeError

def peak_mb():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) / 1024

data = open(sys.argv[1], "rb").read()
before = peak_mb()
try:
    decode_image(data)
    reason = "decoded"
except ImageDecodeError as e:
    reason = e.reason
print(peak_mb() - before)
print(reason)
"""


@pytest.mark.parametrize("side", [10_000, 20_000, 100_000])  # 1.1x, 4.5x, 110x the pixel limit
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak memory from /proc")
def test_decompression_bombs_rejected_before_allocation(fx, side, tmp_path):
    import sys

    data = fx.png_single_colour(side, side) if side <= 20_000 else fx.png_header_only(side, side)
    assert len(data) < 1 << 20  # a small file declaring a huge image
    assert reason_of(data).startswith("decompression bomb")
    assert Image.MAX_IMAGE_PIXELS is not None
    (tmp_path / "bomb.png").write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", _BOMB_PROBE, str(tmp_path / "bomb.png")],
                          capture_output=True, text=True, timeout=120, check=True)
    grown_mb, reason = proc.stdout.splitlines()
    assert reason.startswith("decompression bomb")
    # decoding the smallest of them would take 300 MB (10,000^2 RGB pixels); measured 0.0-0.2 MB
    assert float(grown_mb) < 20, proc.stdout


def test_bomb_check_holds_even_if_warning_filters_ignore_it(fx):
    # the explicit size check does not depend on the warnings machinery
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert reason_of(fx.png_single_colour(10_000, 10_000)).startswith("decompression bomb")


@pytest.mark.parametrize("maker", ["ztxt_flood", "iccp_flood"])
def test_metadata_flood_rejected(fx, maker):
    assert reason_of(getattr(fx, maker)()).startswith("metadata too large")


@pytest.mark.parametrize(
    "fmt, expected",
    [("TIFF", "TIFF"), ("PDF", "PDF"), ("EPS", "EPS"), ("PSD", "PSD"), ("FITS", "FITS")],
)
def test_format_spoofing_refused_without_running_ghostscript(fx, tmp_path, monkeypatch, fmt, expected):
    calls = []
    for fn in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, fn, lambda *a, _fn=fn, **k: calls.append(_fn))
    if fmt == "PSD":
        data = b"8BPS\x00\x01" + b"\x00" * 40
    elif fmt == "FITS":
        data = b"SIMPLE  =                    T" + b" " * 50
    else:
        data = fx.encode(fx.gradient(8, 8), fmt)
    path = tmp_path / "cat.png"
    path.write_bytes(data)
    reason = reason_of(path)
    assert reason.startswith("unsupported format") and expected in reason
    assert calls == []


def test_unknown_bytes_reason():
    assert reason_of(b"hello world, not an image").startswith("not a recognised image")


def test_cmyk_jpeg_to_rgb_close_to_reference(fx):
    ref = fx.gradient(48, 32)
    out = np.asarray(decode_image(fx.encode(ref.convert("CMYK"), "JPEG", quality=95)), dtype=np.int16)
    diff = np.abs(out - np.asarray(ref, dtype=np.int16))
    assert out.shape == (32, 48, 3)
    assert diff.mean() < 3 and np.percentile(diff, 99) < 30


def test_ycck_jpeg_decodes_to_three_channels(fx):
    data = bytearray(fx.encode(fx.gradient(16, 16).convert("CMYK"), "JPEG"))
    at = data.find(b"Adobe")
    data[at + 11] = 2  # Adobe APP14 transform byte: 2 = YCCK
    assert Image.open(__import__("io").BytesIO(bytes(data))).info["adobe_transform"] == 2
    img = decode_image(bytes(data))
    assert img.mode == "RGB" and np.asarray(img).shape == (16, 16, 3)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_16bit_ramp_keeps_256_levels(fx, mode):
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    img16 = Image.fromarray(ramp)
    assert img16.mode.startswith("I;16")
    out = np.asarray(decode_image(fx.encode(img16, "PNG"), mode=mode))
    assert len(np.unique(out)) == 256 and out.min() == 0 and out.max() == 255
    flat = out.reshape(-1, out.shape[-1])[:, 0] if out.ndim == 3 else out.reshape(-1)
    assert np.all(np.diff(flat.astype(int)) >= 0)  # monotonic
    assert np.bincount(flat, minlength=256).max() <= 258  # scaled evenly, not clipped at 255
    assert abs(int(flat[32768]) - 128) <= 1


def palette_with_trns(fx) -> bytes:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    return fx.encode(img, "PNG", transparency=0)


@pytest.mark.parametrize("bg", [(255, 255, 255), (0, 0, 0), (10, 200, 30)])
def test_palette_trns_composited_on_background(fx, bg):
    out = np.asarray(decode_image(palette_with_trns(fx), background=bg))
    assert tuple(out[0, 0]) == bg and tuple(out[0, 1]) == (0, 0, 255)


def test_palette_gif_transparency(fx):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 255, 0, 0, 0, 0] + [0] * 762)
    img.putpixel((1, 0), 1)
    out = np.asarray(decode_image(fx.encode(img, "GIF", transparency=0), background=(9, 9, 9)))
    assert tuple(out[0, 0]) == (9, 9, 9) and tuple(out[0, 1]) == (0, 0, 0)


@pytest.mark.parametrize("bg, expected", [((255, 255, 255), (255, 127, 127)), ((0, 0, 0), (128, 0, 0))])
def test_rgba_half_alpha(fx, bg, expected):
    img = Image.new("RGBA", (2, 2), (255, 0, 0, 128))
    img.putpixel((1, 1), (0, 255, 0, 0))  # fully transparent: its colour must not show
    out = np.asarray(decode_image(fx.encode(img, "PNG"), background=bg)).astype(int)
    assert np.abs(out[0, 0] - np.array(expected)).max() <= 1
    assert tuple(out[1, 1]) == bg


def test_la_composited(fx):
    img = Image.new("LA", (3, 1))
    for x, px in enumerate([(0, 0), (0, 255), (0, 128)]):
        img.putpixel((x, 0), px)
    grey = np.asarray(decode_image(fx.encode(img, "PNG"), mode="L")).astype(int)
    assert grey[0, 0] == 255 and grey[0, 1] == 0 and abs(grey[0, 2] - 127) <= 1
    rgb = np.asarray(decode_image(fx.encode(img, "PNG"), background=(0, 0, 255)))
    assert tuple(rgb[0, 0]) == (0, 0, 255) and tuple(rgb[0, 1]) == (0, 0, 0)


def test_grey_png_with_trns_value(fx):
    img = Image.new("L", (2, 1), 50)
    img.putpixel((1, 0), 200)
    out = np.asarray(decode_image(fx.encode(img, "PNG", transparency=50), background=(0, 0, 0)))
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[0, 1]) == (200, 200, 200)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF"])
def test_one_bit(fx, fmt):
    img = Image.new("1", (8, 2), 0)
    img.putpixel((3, 1), 1)
    out = np.asarray(decode_image(fx.encode(img, fmt), mode="L"))
    assert set(np.unique(out)) == {0, 255} and out[1, 3] == 255 and out[0, 3] == 0


def test_alpha_composited_before_resize(fx):
    from limner.data.transforms import resize_center_crop

    img = Image.new("RGBA", (64, 64), (0, 255, 0, 0))  # invisible green
    for x in range(0, 64, 2):
        for y in range(64):
            img.putpixel((x, y), (255, 255, 255, 255))
    out = resize_center_crop(decode_image(fx.encode(img, "PNG")), 16)
    assert out.min() >= 250  # no green fringe: composited on white first


def marked(w=6, h=4) -> Image.Image:
    img = Image.new("RGB", (w, h), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))  # top-left marker
    return img


@pytest.mark.parametrize(
    "orientation, transpose",
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)],
)
def test_exif_orientation_applied(fx, orientation, transpose):
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(fx.encode(marked(), "PNG", exif=exif))
    expected = marked().transpose(transpose)
    assert out.size == expected.size
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    if orientation in (6, 8):
        assert out.size == (4, 6)


@pytest.mark.parametrize("orientation", [0, 9])
def test_invalid_exif_orientation_unrotated_with_warning(fx, caplog, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    with caplog.at_level(logging.WARNING, logger="limner.data.decode"):
        out = decode_image(fx.encode(marked(), "PNG", exif=exif))
    assert np.array_equal(np.asarray(out), np.asarray(marked()))
    assert "orientation" in caplog.text


def test_truncated_exif_ifd_tolerated(fx, caplog):
    broken = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12"
    with caplog.at_level(logging.WARNING, logger="limner.data.decode"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing may escape as a warning-turned-error
            out = decode_image(fx.encode(marked(), "JPEG", exif=broken, quality=100))
    assert out.size == (6, 4)
    assert caplog.records  # the problem is logged


def test_animated_gif_first_frame_only(fx):
    frames = [Image.new("RGB", (8, 8), (255, 0, 0))] + [Image.new("RGB", (8, 8), (0, 0, 255))] * 299
    data = fx.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    assert Image.open(__import__("io").BytesIO(data)).n_frames > 1
    out = np.asarray(decode_image(data)).astype(int)
    assert out[..., 0].min() > 200 and out[..., 2].max() < 50


def test_apng_default_frame(fx):
    frames = [Image.new("RGB", (8, 8), (0, 255, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    data = fx.encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert tuple(np.asarray(decode_image(data))[0, 0]) == (0, 255, 0)


def test_special_files_not_read(tmp_path):
    assert decode_image.__module__ == "limner.data.decode"
    if os.path.exists("/dev/zero"):
        assert reason_of("/dev/zero") == "not a regular file"
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert reason_of(fifo) == "not a regular file"  # and no hang waiting for a writer
    assert reason_of(tmp_path) == "not a regular file"


def test_missing_file_reason(tmp_path):
    assert reason_of(tmp_path / "nope.png").startswith("cannot read (No such file")


def test_bytes_errors_use_given_name(fx):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(b"junk", name="shown/name.png")
    assert info.value.path == "shown/name.png"


def test_bad_mode_argument(fx):
    with pytest.raises(ValueError):
        decode_image(fx.png(), mode="RGBA")
