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
        images = [regenerate(record, run=str(args.run_dir) if args.run_dir else None, device=device)]
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
