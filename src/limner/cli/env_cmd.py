"""``limner env``: versions, threads, devices, optional extras and compiled kernels."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "env", help="show versions, devices, extras and compiled kernels (for bug reports)",
        description=("Print what limner runs on: limner, Python, PyTorch and platform versions, CPU "
                     "model, threads and instruction set, CUDA devices, optional extras and whether the "
                     "compiled CPU kernels are in use (building them on first use). Paste it into "
                     "bug reports."),
    )
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from limner.environment import describe

    info = describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for sub_key, sub_value in value.items():
                if isinstance(sub_value, dict):  # an extra: version (or missing) and what it enables
                    state = sub_value["version"] or "not installed"
                    print(f"  {sub_key:<22} {state}  ({sub_value['enables']})")
                else:
                    print(f"  {sub_key:<22} {sub_value}")
        else:
            print(f"{key + ':':<24} {value}")
    return 0
