"""``limner sample``: generate images from a run folder, each PNG carrying its record."""

from __future__ import annotations

import argparse
from pathlib import Path

from limner.cli.args import (
    add_family_options, add_precision_argument, checkpoint_step, family_option_values, positive_int, seed_int,
)

DESCRIPTION = """\
Generate images from a trained run folder. Every PNG carries its generation record (prompt,
seed, sampler, steps, CFG, model hash, versions) in text chunks: `limner info FILE.png` shows it
and `limner sample --from-image FILE.png --out DIR` regenerates the identical image.
"""

EPILOG = """\
examples:
  limner sample runs/emoji --prompt "red heart" --num 8 --out out/
  limner sample runs/emoji --prompt "smiling face" --negative "sunglasses" --cfg 3 --seed 7 --out out/
  limner sample runs/fmnist --label sneaker --sampler heun --steps 18 --out out/
  limner sample --from-image out/00000-7.png --out again/
  limner sample emoji --prompt "woman astronaut, dark skin tone" --out out/
  limner sample emoji --prompt "green heart" --init-image sketch.png --strength 0.6 --out out/
  limner sample emoji --prompt "man with red hair" --init-image face.png --mask hair.png --out out/

Image-to-image (--init-image, SDEdit) and inpainting (--mask, RePaint) work for the diffusion and
latent-diffusion families. The inputs go through limner's image decoder, are fitted to the run's
resolution like training images, and an exact copy of each is kept in DIR/inputs/ (named by its
sha256, which the record holds), so --from-image replays an edit bitwise.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample", help="generate images from a run", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", type=Path, help="run folder, or a bundled model's name such as emoji (not needed with --from-image)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the PNGs (created)")
    p.add_argument("--prompt", help="text prompt (text-conditioned runs)")
    p.add_argument("--negative", help="negative prompt: guidance steers away from it")
    p.add_argument("--label", help="class id or name (class-conditioned runs)")
    p.add_argument("--num", type=positive_int, default=4, help="number of images (default: 4)")
    p.add_argument("--seed", type=seed_int, default=-1, help="seed of the first image; image i uses seed+i; -1 = random")
    p.add_argument("--step", type=checkpoint_step, metavar="STEP|best",
                   help="checkpoint step, or 'best' (kept by --eval-every) (default: newest valid)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per forward batch (default: 16)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    add_precision_argument(p)
    add_family_options(p)
    e = p.add_argument_group("image-to-image and inpainting (diffusion, latent diffusion)")
    e.add_argument("--init-image", type=Path, metavar="FILE",
                   help="start from this image (a photo, an emoji, a flat-colour sketch): SDEdit")
    e.add_argument("--strength", type=float, metavar="S",
                   help="how much of the sampling schedule runs from the init image: 0 keeps it, "
                        "1 ignores it (default: 0.6; 1 with --mask)")
    e.add_argument("--mask", type=Path, metavar="FILE",
                   help="inpaint: white pixels are regenerated, black ones stay bitwise the init image's")
    e.add_argument("--resample", type=positive_int, metavar="R",
                   help="inpainting: RePaint resampling passes per step, for coherent borders (default: 3)")
    p.add_argument("--grid", action="store_true", help="also write grid.png with all images")
    p.add_argument("--from-image", type=Path, metavar="FILE.png", help="regenerate the image a limner PNG records")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from limner.errors import UsageError
    from limner.generation.pipeline import generate, regenerate, save_images
    from limner.generation.pngmeta import read_record
    from limner.generation.request import GenerationRequest
    from limner.models.declaration import request_options
    from limner.workflows import resolve_device

    device = resolve_device(args.device)
    if args.from_image is not None:
        record = read_record(args.from_image)
        images = [regenerate(record, run=str(args.run_dir) if args.run_dir else None, device=device,
                             inputs=[args.from_image.parent, args.out])]
    else:
        if args.run_dir is None:
            raise UsageError("RUN_DIR: required unless --from-image is given")
        from limner.bundled import is_bundled_name

        if not args.run_dir.is_dir() and not is_bundled_name(args.run_dir):
            raise UsageError(f"RUN_DIR: {args.run_dir} is neither a folder nor a bundled model "
                             "(limner sample emoji ...)")
        label = int(args.label) if args.label is not None and args.label.isdigit() else args.label
        request = GenerationRequest(
            run=str(args.run_dir), prompt=args.prompt, negative=args.negative, label=label,
            seed=args.seed, num=args.num, **request_options(family_option_values(args)),
            step=args.step, batch_size=args.batch_size, precision=args.precision,
            init_image=str(args.init_image) if args.init_image else None, strength=args.strength,
            mask=str(args.mask) if args.mask else None, resample=args.resample,
        )
        images = generate(request, device=device)
    paths = save_images(images, args.out)
    if args.grid:
        from limner.visualization.grids import save_grid
        import numpy as np
        import torch

        arr = np.stack([np.asarray(g.image.convert("RGB")) for g in images]).transpose(0, 3, 1, 2)
        save_grid(args.out / "grid.png", torch.from_numpy(arr), labels=[f"seed {g.record.seed}" for g in images])
        paths.append(args.out / "grid.png")
    for p in paths:
        print(p)
    return 0
