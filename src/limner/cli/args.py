"""Argument types and the parser class shared by every command: each bad value is refused with
exit code 2 and one line naming the argument, before any model is built."""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def positive_int(text: str) -> int:
    """An int > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    """An int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """A seed: -1 (random) or 0..2**63-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if value < -1 or value > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"must be -1 (random) or in 0..2**63-1, got {text!r}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    """A finite float >= 0."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def checkpoint_step(text: str) -> int | str:
    """A checkpoint step (int >= 0) or "best" (the checkpoint kept by evaluation during training)."""
    return "best" if text == "best" else nonneg_int(text)


def setting(text: str) -> tuple[str, object]:
    """A ``--set KEY=VALUE`` config override (``limner.overrides.parse_assignment``)."""
    from limner.overrides import parse_assignment

    try:
        return parse_assignment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16`` for the commands that sample (sample, interpolate, eval)."""
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32",
        help="bf16 runs the network under bfloat16 autocast: faster on recent GPUs and on CPUs with "
             "AVX-512, 10-40x slower on CPUs with AVX2 only (`limner env` says which this is); "
             "slightly different pixels, kept in the generation record (default: fp32)")


def add_family_options(parser: argparse.ArgumentParser, *, only: tuple[str, ...] | None = None) -> None:
    """The generation options every registered family declares (``--sampler``, ``--steps``,
    ``--temperature``...), as one argument group; choices, types and ranges come from the
    declarations. A value any family accepts passes here; the run's own family checks it again
    when the run is loaded (``limner.generation.pipeline.check_options``). ``only`` limits the
    group to some option names."""
    from limner.models.declaration import merged_options
    from limner.models.registry import declarations

    group = parser.add_argument_group("generation options (which apply depends on the run's family)")
    for name, specs in merged_options(declarations().items()).items():
        if only is not None and name not in only:
            continue
        first = specs[0][1]
        helps: dict[str, list[str]] = {}
        for family, spec in specs:
            helps.setdefault(spec.help, []).append(family)
        text = "; ".join(f"{', '.join(fams)}: {h}" for h, fams in helps.items())
        kwargs: dict = {"dest": name, "help": text}
        if first.type is str and all(s.choices for _, s in specs):
            kwargs["choices"] = sorted({c for _, s in specs for c in s.choices})
        else:
            kwargs["type"] = _any_of([s for _, s in specs])
            kwargs["metavar"] = name.upper()
        group.add_argument("--" + name.replace("_", "-"), **kwargs)


def family_option_values(args: argparse.Namespace) -> dict[str, object]:
    """The generation options given on the command line (``add_family_options``), by name."""
    from limner.models.declaration import merged_options
    from limner.models.registry import declarations

    return {name: getattr(args, name) for name in merged_options(declarations().items())
            if getattr(args, name, None) is not None}


def _any_of(specs: list):
    """An argparse type accepting a value that at least one of ``specs`` accepts."""
    from limner.errors import UsageError

    def parse(text: str):
        error = None
        for spec in specs:
            try:
                return spec.check(text)
            except UsageError as e:
                error = error or e
        raise argparse.ArgumentTypeError(error.reason)

    parse.__name__ = specs[0].type.__name__  # argparse names the type in "invalid int value"
    return parse
