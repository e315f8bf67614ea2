"""``limner eval``: score a run (or a folder of images) against its training data, and
``limner eval train-extractor``: train the feature extractor the metrics read through."""

from __future__ import annotations

import argparse
from pathlib import Path

from limner.cli.args import (
    add_family_options, add_precision_argument, checkpoint_step, family_option_values, positive_int, seed_int,
)

DESCRIPTION = """\
Sample N images from a run (or take a folder of images from anywhere with --images) and score them
against the training data: FID, KID (± std over subsets; the better choice below a few thousand
samples), improved precision/recall, density/coverage, Inception Score (when the extractor is a
classifier), memorization (nearest training image in feature and pixel space, share of near-copies)
and, for text runs with a CLIP-style extractor, text alignment (CLIP-style score, prompt retrieval).

Writes DIR/result.json (metrics, extractor id, reference key, sample count, seed, sampler, versions)
and DIR/report.png (metric table, sample grid, the samples closest to a training image beside it).

The generation options (--sampler, --steps, --temperature, ...) are those of `limner sample`:
which apply depends on the run's family, and one the family does not take is refused by name.

Numbers are comparable only with the same extractor id, dataset, resolution and sample count.
The extractor is, in order: --extractor (an extractor folder, or "inception" with --inception
PATH), else one limner trains on the dataset on first use and caches (a classifier for labelled
data, a CLIP-style text-image model for captions, a contrastive encoder otherwise).
"""

EPILOG = """\
examples:
  limner eval runs/fmnist --data fmnist/ --num 1000 --out eval/fmnist
  limner eval runs/emoji --data emoji/ --num 500 --sampler dpmpp_2m --steps 10 --cfg 3 --out eval/emoji
  limner eval runs/maskgit --data fmnist/ --num 1000 --steps 8 --temperature 3 --out eval/maskgit
  limner eval runs/fmnist --data fmnist/ --inception pt_inception-2015-12-05-6726825d.pth --out eval/fid
  limner eval --images other_tool_samples/ --data fmnist/ --extractor extractors/fmnist --out eval/other
  limner eval train-extractor fmnist/ --out extractors/fmnist

Inception FID features need the standard weights file, which limner never downloads: get
pt_inception-2015-12-05-6726825d.pth (the pytorch-fid release asset) yourself and pass --inception.
"""

TRAIN_DESCRIPTION = """\
Train a feature extractor on a dataset, so metrics work offline on any data: a classifier for
labelled data (class folders, IDX labels), a CLIP-style text-image model for captioned data (its
image tower gives the features, the pair gives text alignment), a contrastive (SimCLR) encoder
otherwise. The weights go to DIR/model.safetensors; DIR/extractor.json records the kind, the
training data's content hash and the weights' sha256, which names the extractor in every result.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score samples: FID/KID/precision-recall, memorization, text alignment",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", type=Path, help="run folder to sample from")
    p.add_argument("--images", type=Path, metavar="DIR", help="score these images instead of sampling a run")
    p.add_argument("--data", type=Path, required=True, metavar="DATA", help="the reference (training) data")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for result.json and report.png")
    p.add_argument("--num", type=positive_int, default=1000, help="samples to generate (default: 1000)")
    p.add_argument("--extractor", metavar="NAME|DIR", help="'inception' or an extractor folder (default: see above)")
    p.add_argument("--inception", type=Path, metavar="PATH", help="FID Inception-v3 weights file (.pth or .safetensors)")
    p.add_argument("--alignment", type=Path, metavar="DIR", help="CLIP-style extractor folder for text alignment "
                   "(default: the extractor, when it is one)")
    p.add_argument("--prompts", type=Path, metavar="FILE", help="prompts, one per line, cycled over the samples "
                   "(text runs; default: captions drawn from the data)")
    add_precision_argument(p)
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the first sample (default: 0)")
    p.add_argument("--step", type=checkpoint_step, metavar="STEP|best",
                   help="checkpoint step, or 'best' (kept by --eval-every) (default: newest valid)")
    p.add_argument("--resolution", type=positive_int, help="with --images: side to compare at (default: the images')")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per sampling batch (default: 64)")
    p.add_argument("--kid-subset-size", type=positive_int, default=1000, help="KID subset size (default: 1000)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    add_family_options(p)
    p.set_defaults(func=run)

    t = sub.add_parser("eval-train-extractor", prog="limner eval train-extractor",
                       help="train a feature extractor for eval (also spelled: limner eval train-extractor)",
                       description=TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("data", metavar="DATA", type=Path, help="dataset (folder, IDX or npz)")
    t.add_argument("--out", type=Path, required=True, metavar="DIR", help="extractor folder to write")
    t.add_argument("--kind", choices=("classifier", "clip", "contrastive"), help="default: follows the data")
    t.add_argument("--resolution", type=positive_int, default=32, help="image side in pixels (default: 32)")
    t.add_argument("--steps", type=positive_int, help="training steps (default: the kind's)")
    t.add_argument("--batch-size", type=positive_int, help="default: the kind's")
    t.add_argument("--seed", type=seed_int, default=0, help="seed (default: 0)")
    t.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    t.set_defaults(func=run_train_extractor)


def rewrite_argv(argv: list[str]) -> list[str]:
    """``eval train-extractor ...`` -> ``eval-train-extractor ...`` (argparse has no optional
    positional next to a sub-command)."""
    for i, arg in enumerate(argv):
        if arg == "eval" and i + 1 < len(argv) and argv[i + 1] == "train-extractor":
            return argv[:i] + ["eval-train-extractor"] + argv[i + 2:]
        if not arg.startswith("-"):
            break
    return argv


def _target(args: argparse.Namespace):
    from limner.errors import UsageError
    from limner.evaluation.evaluate import EvalTarget
    from limner.workflows import resolve_device

    from limner.bundled import resolve_run

    if args.run_dir is not None:
        args.run_dir = resolve_run(args.run_dir)  # a bundled model's name ("emoji") works too
    for name in ("data", "inception", "alignment", "prompts", "images", "run_dir"):
        path = getattr(args, name)
        if path is not None and not path.exists():
            raise UsageError(f"--{name.replace('_', '-')}: {path} does not exist" if name != "run_dir"
                             else f"RUN_DIR: {path} does not exist")
    prompts = None
    if args.prompts is not None:
        prompts = [line.strip() for line in args.prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise UsageError(f"--prompts: {args.prompts} holds no prompts")
    return EvalTarget(data=args.data, out=args.out, extractor=args.extractor, inception=args.inception,
                      alignment=args.alignment, prompts=prompts, device=resolve_device(args.device),
                      resolution=args.resolution)


def run(args: argparse.Namespace) -> int:
    from limner.errors import UsageError
    from limner.evaluation.evaluate import EvalOptions, evaluate_folder, evaluate_run
    from limner.evaluation.report import metric_lines
    from limner.models.declaration import request_options

    if (args.run_dir is None) == (args.images is None):
        raise UsageError("RUN_DIR: give a run folder or --images DIR (one of them)")
    if args.extractor == "inception" and args.inception is None:
        raise UsageError("--inception: --extractor inception needs the weights file (--inception PATH)")
    given = family_option_values(args)  # checked against the run's family once it is loaded
    if args.images is not None and given:
        name = next(iter(given))
        raise UsageError("applies to sampling a RUN_DIR; --images are scored as they are", field=name)
    target = _target(args)
    opts = EvalOptions(num=args.num, batch_size=args.batch_size, seed=args.seed, **request_options(given),
                       precision=args.precision, kid_subset_size=args.kid_subset_size)
    if args.images is not None:
        evaluation = evaluate_folder(args.images, target, opts)
    else:
        evaluation = evaluate_run(args.run_dir, target, opts, step=args.step)
    result = evaluation.result
    print(f"{result['samples']['count']} samples, extractor {result['extractor']['id']}")
    for line in metric_lines(result):
        print("  " + line)
    print(f"wrote {args.out / 'result.json'} and {args.out / 'report.png'}")
    return 0


def run_train_extractor(args: argparse.Namespace) -> int:
    from limner.data.dataset import load_dataset
    from limner.errors import UsageError
    from limner.evaluation.trained import train_extractor
    from limner.workflows import resolve_device

    if not args.data.exists():
        raise UsageError(f"DATA: {args.data} does not exist")
    dataset = load_dataset(args.data, args.resolution)
    options = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v is not None}
    out = train_extractor(dataset, args.out, kind=args.kind, seed=args.seed, device=resolve_device(args.device),
                          progress=True, **options)
    print(f"wrote extractor to {out}")
    return 0
