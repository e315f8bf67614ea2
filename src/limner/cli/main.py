"""The ``limner`` command line: argument parsing and error reporting only; every command is a
thin caller of a library function.

Each command group lives in its own module with ``register(subparsers)``, which adds its parser
and sets ``func`` (called with the parsed namespace, returns an exit code).
"""

from __future__ import annotations

import argparse
import sys

from limner import __version__
from limner.allocator import tune_allocator
from limner.errors import LimnerError, UsageError
from limner.training.signals import TrainingInterrupted

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    from limner.cli import (
        data_cmd, demo_cmd, env_cmd, eval_cmd, explain_cmd, gallery_cmd, info_cmd, interpolate_cmd, reconstruct_cmd,
        sample_cmd, studio_cmd, train_cmd,
    )
    from limner.cli.args import Parser

    parser = Parser(
        prog="limner",
        description="Train, sample and evaluate generative image models on your own images.",
    )
    parser.add_argument("--version", action="version", version=f"limner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for module in (train_cmd, sample_cmd, interpolate_cmd, reconstruct_cmd, eval_cmd, explain_cmd, info_cmd, data_cmd,
                   demo_cmd, env_cmd, studio_cmd, gallery_cmd):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from limner.cli.eval_cmd import rewrite_argv

    parser = build_parser()
    args = parser.parse_args(rewrite_argv(list(sys.argv[1:] if argv is None else argv)))
    tune_allocator()
    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as e:
        print(f"limner {args.command}: {e}; continue with --resume", file=sys.stderr)
        return e.exit_code
    except UsageError as e:
        print(f"limner {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except LimnerError as e:
        print(f"limner {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
