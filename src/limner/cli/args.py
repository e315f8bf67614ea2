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
             "AVX-512, slightly different pixels, kept in the generation record (default: fp32)")
