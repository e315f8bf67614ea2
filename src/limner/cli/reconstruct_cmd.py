"""``limner reconstruct``: encode and decode images with a trained autoencoder run (VAE family),
write input|reconstruction pairs and report the reconstruction PSNR."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from limner.cli.args import nonneg_int, positive_int

DESCRIPTION = """\
Reconstruct images with a trained autoencoder (family vae): each image is decoded, centre-cropped
and resized to the run's resolution exactly as training data is, encoded deterministically
(posterior mean, or nearest codes for a VQ run) and decoded. Writes one PNG per image with the
input on the left and the reconstruction on the right, and prints each image's PSNR and the mean.

PSNR = 10 log10(255^2 / MSE) over all pixels and channels of the uint8 images, in dB; identical
images have PSNR inf, and the mean over images is inf when any of them is.
"""

EPILOG = """\
examples:
  limner reconstruct runs/vae-emoji data/emoji/heart.png data/emoji/star.png --out rec/
  limner reconstruct runs/vq-fmnist data/fmnist/ --out rec/ --step 3000
"""

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct", help="reconstruct images with an autoencoder run and report PSNR",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="run folder of a vae run")
    p.add_argument("images", metavar="IMAGES", nargs="+", type=Path,
                   help="image files, or folders (their .png .jpg .webp .bmp .gif files are used)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for the input|reconstruction PNGs (created)")
    p.add_argument("--step", type=nonneg_int, help="checkpoint step (default: newest valid)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="images per forward batch (default: 16)")
    p.add_argument("--prompt", help="caption for every image (text-conditioned runs; "
                                    "default: the null condition)")
    p.add_argument("--label", help="class id or name for every image (class-conditioned runs; "
                                   "default: the null condition)")
    p.set_defaults(func=run)


@dataclass
class Reconstruction:
    """One input image, its pair PNG and its PSNR in dB."""

    source: Path
    output: Path
    psnr: float


def run(args: argparse.Namespace) -> int:
    """Parse-free entry point: reconstruct ``args.images`` and print PSNRs (exit code 0)."""
    from limner.workflows import resolve_device

    paths = expand_images(args.images)
    _check_out(args.out)
    device = resolve_device(args.device)
    label = int(args.label) if args.label is not None and args.label.isdigit() else args.label
    results = reconstruct_files(args.run_dir, paths, args.out, step=args.step, device=device,
                                batch_size=args.batch_size, prompt=args.prompt, label=label)
    for r in results:
        print(f"{r.source}  ->  {r.output}  PSNR {format_psnr(r.psnr)}")
    print(f"mean PSNR over {len(results)} image(s): {format_psnr(mean_psnr([r.psnr for r in results]))}")
    return 0


def reconstruct_files(run_dir: Path, paths: list[Path], out: Path, *, step: int | None = None,
                      device: str = "cpu", batch_size: int = 16, prompt: str | None = None,
                      label: int | str | None = None) -> list[Reconstruction]:
    """Load the run, reconstruct every image file and write ``NNNNN-<stem>.png`` pairs."""
    import torch

    from limner.errors import UsageError
    from limner.generation.pipeline import load_run
    from limner.models.declaration import Capability
    from limner.models.registry import declarations
    from limner.models.vae.losses import psnr

    if not Path(run_dir).is_dir():
        raise UsageError(f"RUN_DIR: {run_dir} is not a folder")
    loaded = load_run(run_dir, step=step, device=device)
    family = loaded.family
    if not family.declaration.supports(Capability.reconstruct):
        able = [n for n, d in declarations().items() if d.supports(Capability.reconstruct)]
        raise UsageError(f"RUN_DIR: {run_dir} is a {family.name} run; reconstruct needs a run of "
                         f"family {' or '.join(able)}")
    cfg = family.config
    images = torch.stack([load_image(p, cfg.resolution, cfg.channels) for p in paths])
    n = len(images)
    recon = family.reconstruct(images, prompts=[prompt] * n if prompt is not None else None,
                               labels=[label] * n if label is not None else None,
                               batch_size=batch_size)
    scores = psnr(images, recon, 255.0).tolist()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (path, score) in enumerate(zip(paths, scores)):
        target = _free_name(out, f"{i:05d}-{path.stem}")
        _save_pair(images[i], recon[i], target)
        results.append(Reconstruction(path, target, float(score)))
    return results


def expand_images(items: list[Path]) -> list[Path]:
    """Files as given; a folder becomes its image files (sorted, not recursive)."""
    from limner.errors import UsageError

    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"IMAGES: folder {item} holds no image files")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise UsageError(f"IMAGES: {item} does not exist")
    return paths


def load_image(path: Path, resolution: int, channels: int):
    """uint8 [C, H, W] through the one decode path and the training geometry policy."""
    import torch

    from limner.data.decode import decode_image
    from limner.data.transforms import resize_center_crop

    img = decode_image(path, mode="L" if channels == 1 else "RGB")
    array = resize_center_crop(img, resolution)  # [H, W, C], possibly a read-only view
    return torch.tensor(array).permute(2, 0, 1).contiguous()


def mean_psnr(values: list[float]) -> float:
    """Mean of per-image PSNRs (inf when any image is reconstructed exactly)."""
    return sum(values) / len(values) if values else math.nan


def format_psnr(value: float) -> str:
    """``31.42 dB``, or ``inf dB`` for an exact reconstruction."""
    return "inf dB" if math.isinf(value) else f"{value:.2f} dB"


def _check_out(out: Path) -> None:
    from limner.errors import UsageError

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} exists and is not a folder")


def _free_name(out: Path, stem: str) -> Path:
    """``out/stem.png``, or ``stem-1.png``, ``stem-2.png``... so nothing is overwritten."""
    path, k = out / f"{stem}.png", 0
    while path.exists():
        k += 1
        path = out / f"{stem}-{k}.png"
    return path


def _save_pair(source, recon, path: Path) -> None:
    """Write input | reconstruction side by side: uint8 [C, H, W] each → [H, 2W] PNG."""
    import torch

    from limner.generation.pipeline import to_pil

    to_pil(torch.cat([source, recon], dim=2)).save(path, format="PNG")
