"""Fuzz decode_image over mutated seed images: the only exception is ImageDecodeError
(RELIABILITY.md A20; the idea follows Pillow's Tests/oss-fuzz/fuzzers.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from limner.data.decode import decode_image
from limner.errors import ImageDecodeError

SEEDS = ["good.png", "good.jpg", "good.webp", "good.bmp", "good.gif", "rgba.png", "cmyk.jpg"]


@st.composite
def mutated(draw, corpus):
    data = bytearray(corpus[draw(st.sampled_from(SEEDS))])
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_images_raise_only_image_decode_error(fx, data):
    blob = data.draw(mutated(fx.corpus()))
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1 << 22  # keep memory bounded when a mutation inflates the header size
    try:
        img = decode_image(blob)
        assert img.mode == "RGB" and img.width > 0 and img.height > 0
    except ImageDecodeError as e:
        assert e.reason and e.path == "<bytes>"
    finally:
        Image.MAX_IMAGE_PIXELS = saved
