"""Latent and condition interpolation for every family, written as GIF or MP4.

The starting noise (diffusion), latent z (GAN) or prior draw (VAE) of two seeds is blended by
spherical linear interpolation — slerp (Shoemake 1985), the usual choice for Gaussian latents
since it keeps the norm typical of the prior (White 2016, "Sampling Generative Networks") — and
the condition embedding of two prompts (or classes) is blended linearly inside the encoder.
Diffusion runs use a deterministic sampler, so neighbouring frames change smoothly.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from limner.errors import LimnerError, UsageError
from limner.generation.pipeline import LoadedRun, load_run, to_pil
from limner.generation.precision import precision_context
from limner.generation.request import BatchRequest
from limner.models.declaration import REQUEST_FIELDS
from limner.samplers.base import SAMPLER_SPECS

FORMATS = (".gif", ".mp4")


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation between two flattened latents (linear when nearly parallel)."""
    a_flat, b_flat = a.flatten().double(), b.flatten().double()
    cos = torch.dot(a_flat, b_flat) / (a_flat.norm() * b_flat.norm())
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-4:
        out = torch.lerp(a_flat, b_flat, t)
    else:
        out = (torch.sin((1 - t) * omega) * a_flat + torch.sin(t * omega) * b_flat) / torch.sin(omega)
    return out.to(a.dtype).view_as(a)


def seed_noise(shape: tuple[int, ...], seed: int) -> Tensor:
    """The unit-Gaussian draw a family makes for ``seed`` (its own seeded CPU generator)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))


def interpolation_requests(
    loaded: LoadedRun, seeds: tuple[int, int], frames: int, *, prompts: tuple[str, str] | None = None,
    labels: tuple[int, int] | None = None, sampler: str | None = None, steps: int | None = None,
    cfg: float | None = None, truncation: float | None = None, sigma_max: float | None = None,
    options: dict | None = None, batch_size: int = 16,
) -> list[BatchRequest]:
    """Forward batches whose rows walk from (seed A, condition A) to (seed B, condition B);
    the generation options are checked against the family's declaration."""
    if frames < 2:
        raise UsageError(f"--frames: need at least 2 frames, got {frames}")
    given = {"sampler": sampler, "steps": steps, "cfg": cfg, "truncation": truncation,
             "sigma_max": sigma_max, **(options or {})}
    checked = loaded.family.declaration.check_options(given, family=loaded.family.name)
    sampler, steps, cfg, truncation, sigma_max = (checked.get(k) for k in REQUEST_FIELDS)
    options = {k: v for k, v in checked.items() if k not in REQUEST_FIELDS}
    if sampler is not None and SAMPLER_SPECS[sampler].stochastic:
        raise UsageError(f"--sampler: {sampler} is stochastic; interpolation needs a deterministic one")
    shape = tuple(loaded.family.noise_shape)
    a, b = seed_noise(shape, seeds[0]), seed_noise(shape, seeds[1])
    ts = np.linspace(0.0, 1.0, frames).tolist()
    noise = torch.stack([slerp(a, b, t) for t in ts])
    out = []
    for s in range(0, frames, batch_size):
        rows = range(s, min(s + batch_size, frames))
        n = len(rows)
        out.append(BatchRequest(
            seeds=[seeds[0]] * n, noise=noise[s : s + n], sampler=sampler, steps=steps, cfg=cfg,
            truncation=truncation, sigma_max=sigma_max, options=dict(options),
            prompts=[prompts[0]] * n if prompts else None,
            mix_prompts=[prompts[1]] * n if prompts else None,
            labels=[labels[0]] * n if labels is not None else None,
            mix_labels=[labels[1]] * n if labels is not None else None,
            mix_weights=[ts[i] for i in rows] if (prompts or labels is not None) else None,
        ))
    return out


def interpolate(run: str | Path, seeds: tuple[int, int], frames: int, *, step: int | None = None,
                device: str = "cpu", precision: str = "fp32", **options) -> list[Image.Image]:
    """The frames of an interpolation (see ``interpolation_requests`` for the options);
    ``precision`` "bf16" samples under bfloat16 autocast."""
    loaded = load_run(run, step=step, device=device)
    images: list[Image.Image] = []
    for req in interpolation_requests(loaded, seeds, frames, **options):
        with precision_context(precision, loaded.device):
            result = loaded.family.generate(req)
        images.extend(to_pil(img) for img in result.images)
    return images


def write_animation(frames: list[Image.Image], path: str | Path, *, fps: int = 12, scale: int = 4) -> Path:
    """Write frames as an animated GIF (Pillow) or an H.264 MP4 (ffmpeg from imageio-ffmpeg)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"--out: {path.name} must end in .gif or .mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    big = [f.convert("RGB").resize((f.width * scale, f.height * scale), Image.NEAREST) for f in frames]
    if path.suffix.lower() == ".gif":
        big[0].save(path, save_all=True, append_images=big[1:], duration=round(1000 / fps), loop=0)
        return path
    _write_mp4(big, path, fps)
    return path


def _ffmpeg() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        exe = shutil.which("ffmpeg")
        if exe:
            return exe
        raise LimnerError("writing MP4 needs ffmpeg: pip install limner[video] (or write a .gif)") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def _write_mp4(frames: list[Image.Image], path: Path, fps: int) -> None:
    w, h = frames[0].size
    w2, h2 = w - w % 2, h - h % 2  # yuv420p needs even sizes
    cmd = [_ffmpeg(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-vf", f"crop={w2}:{h2}:0:0",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)]
    raw = b"".join(np.asarray(f, dtype=np.uint8).tobytes() for f in frames)
    proc = subprocess.run(cmd, input=raw, capture_output=True)
    if proc.returncode != 0:
        raise LimnerError(f"ffmpeg failed writing {path}: {proc.stderr.decode(errors='replace')[-500:]}")
