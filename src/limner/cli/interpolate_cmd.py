"""``limner interpolate``: an animation between two seeds (and two prompts or classes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from limner.cli.args import (
    add_family_options, add_precision_argument, family_option_values, nonneg_int, positive_int,
)

EPILOG = """\
examples:
  limner interpolate runs/emoji --seeds 1 2 --prompts "red heart" "blue heart" --frames 24 --out walk.gif
  limner interpolate runs/gan --seeds 0 9 --frames 48 --out walk.mp4     (MP4: pip install limner[video])
  limner interpolate runs/fmnist --seeds 3 3 --labels shirt sneaker --frames 16 --out morph.gif
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interpolate", help="animate between two seeds / prompts (GIF or MP4)",
        description=(
            "Walk from seed A to seed B (spherical interpolation of the starting noise or latent) "
            "and, optionally, from prompt/class A to B (linear interpolation of the condition "
            "embedding). Works for every family; diffusion runs use a deterministic sampler."
        ),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="run folder")
    p.add_argument("--seeds", type=nonneg_int, nargs=2, required=True, metavar=("A", "B"), help="start and end seeds")
    p.add_argument("--prompts", nargs=2, metavar=("P", "Q"), help="start and end prompts (text runs)")
    p.add_argument("--labels", nargs=2, metavar=("A", "B"), help="start and end classes (class runs)")
    p.add_argument("--frames", type=positive_int, default=24, help="number of frames (default: 24)")
    p.add_argument("--fps", type=positive_int, default=12, help="frames per second (default: 12)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="output .gif or .mp4")
    add_family_options(p)
    add_precision_argument(p)
    p.add_argument("--step", type=nonneg_int, help="checkpoint step (default: newest valid)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from limner.errors import UsageError
    from limner.generation.interpolate import FORMATS, interpolate, write_animation
    from limner.models.declaration import request_options
    from limner.workflows import resolve_device

    if args.out.suffix.lower() not in FORMATS:
        raise UsageError(f"--out: {args.out.name} must end in .gif or .mp4")
    if args.frames < 2:
        raise UsageError(f"--frames: need at least 2 frames, got {args.frames}")
    if not args.run_dir.is_dir():
        raise UsageError(f"RUN_DIR: {args.run_dir} is not a folder")
    if args.prompts and args.labels:
        raise UsageError("--prompts and --labels: give one or the other")
    labels = tuple(int(x) if x.isdigit() else x for x in args.labels) if args.labels else None
    frames = interpolate(
        args.run_dir, tuple(args.seeds), args.frames, step=args.step, device=resolve_device(args.device),
        prompts=tuple(args.prompts) if args.prompts else None, labels=labels,
        **request_options(family_option_values(args)),
        precision=args.precision,
    )
    print(write_animation(frames, args.out, fps=args.fps))
    return 0
