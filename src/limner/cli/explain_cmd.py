"""``limner explain RUN VIEW``: "how it learns", the views of a run's own model, as PNG/GIF + JSON."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from limner.cli.args import checkpoint_step, seed_int


def view_option(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` with a JSON value (a bare word is taken as a string)."""
    import json

    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value

DESCRIPTION = """\
Show how the model in RUN learns: write one view as PNG (and GIF) pictures plus a JSON file
with the numbers behind them. Every view is computed from the run itself: its checkpoints,
metrics.jsonl and training data. `limner train` keeps RUN/explain/ (timeline, dynamics) up to
date at every checkpoint unless given --no-explain.
"""


def _epilog() -> str:
    from limner.explain import VIEWS

    lines = ["views and their options (--set NAME=VALUE sets any of them; values are JSON):"]
    for view in VIEWS.values():
        lines.append(f"  {view.name}: {view.summary}")
        for name, text in view.params.items():
            lines.extend(textwrap.wrap(f"{name}: {text}", 92, initial_indent="      ",
                                       subsequent_indent="        "))
    lines += ["", "examples:",
              "  limner explain runs/mine timeline --out explain/",
              "  limner explain runs/mine step --step 1000",
              "  limner explain runs/mine features --index 12 --set level='middle 4px' --set channel=7",
              "  limner explain runs/mine filmstrip --image out/00000-1.png",
              "  limner explain runs/mine attention --prompt 'red heart'",
              "  limner explain runs/gan dynamics",
              "  limner explain runs/maskgit dynamics --prompt 'red heart'",
              "  limner explain runs/maskgit features --index 3 --set token=27"]
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    from limner.explain import VIEWS

    p = sub.add_parser("explain", help="how the model learns: timeline, one step, features, "
                       "filmstrip, dynamics, attention", description=DESCRIPTION, epilog=_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", type=Path, help="run folder")
    p.add_argument("view", metavar="VIEW", choices=list(VIEWS), help=f"one of: {', '.join(VIEWS)}")
    p.add_argument("--out", type=Path, metavar="DIR", help="folder for the files (default: RUN/explain/VIEW)")
    p.add_argument("--step", type=checkpoint_step, help="checkpoint step or 'best' (default: newest)")
    p.add_argument("--image", type=Path, help="filmstrip: a PNG generated from RUN; features: any image")
    p.add_argument("--index", type=int, help="features: the training image to look at")
    p.add_argument("--prompt", help="attention, dynamics (text runs): the prompt")
    p.add_argument("--seed", type=seed_int, help="seed of the images or noise the view draws")
    p.add_argument("--compare", type=int, nargs=2, metavar=("A", "B"), help="timeline: two steps side by side")
    p.add_argument("--set", dest="settings", action="append", type=view_option, default=[], metavar="NAME=VALUE",
                   help="any option of the view (see below), value in JSON")
    p.add_argument("--data", type=Path, help="the training data folder, if it moved since training")
    p.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: ~/.cache/limner)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from limner.errors import UsageError
    from limner.explain import compute_view

    params = {k: v for k, v in dict(step=args.step, image=args.image, index=args.index,
                                    prompt=args.prompt, seed=args.seed, compare=args.compare).items()
              if v is not None}
    for key, value in args.settings:
        if key in params:
            raise UsageError(f"--set {key}: also given as --{key}; give it once")
        params[key] = value
    if args.data is not None:
        params["data"] = args.data
    if args.cache_dir is not None:
        params["cache_dir"] = args.cache_dir
    result = compute_view(args.run, args.view, device=args.device, **params)
    out = args.out or args.run / "explain" / args.view
    for path in result.write(out):
        print(path)
    return 0
