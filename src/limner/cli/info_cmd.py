"""``limner info``: print the generation record a limner PNG carries."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="show the generation record of a PNG",
        description="Print the generation record stored in a PNG written by limner.",
    )
    p.add_argument("file", metavar="FILE.png", type=Path, help="an image written by limner sample")
    p.add_argument("--json", action="store_true", help="print the record as JSON only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from limner.generation.pngmeta import a1111_parameters, read_record

    record = read_record(args.file)
    if args.json:
        print(json.dumps(asdict(record), indent=2, ensure_ascii=False))
        return 0
    print(a1111_parameters(record))
    print()
    width = max(len(k) for k in asdict(record))
    for key, value in asdict(record).items():
        print(f"{key:<{width}}  {value}")
    return 0
