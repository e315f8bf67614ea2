"""``limner data``: dataset commands (``check``), thin callers of ``limner.data.check``."""

from __future__ import annotations

import argparse
import os
import sys

from limner.errors import UsageError

CHECK_DESCRIPTION = """\
Decode every image in DATA with the same rules training uses and report: usable and skipped
files (each skipped file with its path and the reason), image files in a metadata.jsonl folder
that it does not list (ignored; the first few named), caption coverage, class counts and a
histogram of image sizes. DATA is a folder (Hugging Face imagefolder with metadata.jsonl,
images with sidecar .txt captions, one subfolder per class, or plain images), a Fashion-MNIST
IDX images file or folder, or an .npz file. Exit code 0 when at least one image is usable,
1 when none is, 2 for a bad argument or a missing path."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group and its ``check`` subcommand."""
    data = subparsers.add_parser("data", help="inspect datasets", description="Dataset commands.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    check = sub.add_parser(
        "check", help="report usable and skipped images of a dataset",
        description=CHECK_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("path", metavar="DATA", help="dataset folder, IDX images file or .npz file")
    check.add_argument(
        "--resolution", type=int, default=None, metavar="PX",
        help="also report how many images are smaller than PX (they would be upscaled)",
    )
    check.add_argument(
        "--max-listed", type=int, default=50, metavar="N",
        help="list at most N skipped files and caption problems (0 = all; default 50)",
    )
    check.add_argument("--quiet-progress", action="store_true", help="no progress bar on stderr")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    """``limner data check``: print the report; exit 1 when nothing is usable."""
    from limner.data.check import check_dataset, format_report
    from limner.data.dataset import nothing_usable
    from limner.data.display import escape_path

    if not os.path.lexists(args.path):
        raise UsageError(f"no such file or directory: {escape_path(args.path)}")
    if args.resolution is not None and args.resolution < 1:
        raise UsageError(f"--resolution must be >= 1, got {args.resolution}")
    if args.max_listed < 0:
        raise UsageError(f"--max-listed must be >= 0, got {args.max_listed}")
    report = check_dataset(args.path, resolution=args.resolution, progress=not args.quiet_progress)
    print(format_report(report, max_listed=args.max_listed or None))
    if report.usable == 0:
        error = nothing_usable(report.path, report.total, report.skipped)
        print(f"limner data check: {error}", file=sys.stderr)
        return 1
    return 0
