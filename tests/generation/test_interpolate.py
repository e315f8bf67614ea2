"""Interpolation helpers: slerp keeps endpoints and norms, animations are written as GIF/MP4."""

from __future__ import annotations

import subprocess

import pytest
import torch
from PIL import Image

from limner.errors import UsageError
from limner.generation.interpolate import slerp, write_animation


def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, 8, generator=g), torch.randn(3, 8, 8, generator=g)
    assert torch.equal(slerp(a, b, 0.0), a)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    mid = slerp(a, b, 0.5)
    # a lerp midpoint of two independent Gaussians shrinks to ~0.71 of their norm; slerp does not
    assert mid.norm() > 0.95 * min(a.norm(), b.norm())
    assert torch.lerp(a, b, 0.5).norm() < 0.8 * min(a.norm(), b.norm())


def test_slerp_of_parallel_vectors_is_linear():
    a = torch.ones(4)
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)


def frames(n=4):
    return [Image.new("RGB", (8, 8), (i * 60, 0, 255 - i * 60)) for i in range(n)]


def test_gif(tmp_path):
    path = write_animation(frames(), tmp_path / "a.gif", fps=10, scale=2)
    with Image.open(path) as im:
        assert im.n_frames == 4 and im.size == (16, 16)


def test_bad_suffix(tmp_path):
    with pytest.raises(UsageError, match="gif or .mp4"):
        write_animation(frames(), tmp_path / "a.avi")


def test_mp4(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="MP4 needs pip install limner[video]")
    path = write_animation(frames(5), tmp_path / "a.mp4", fps=5, scale=3)
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(path), "-f", "null", "-"],
                           capture_output=True, text=True)
    assert probe.returncode == 0
    assert "frame=    5" in probe.stderr
