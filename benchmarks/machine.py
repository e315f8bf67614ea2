"""The machine line every benchmark prints above its table (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def machine_description(threads: int, *extras: str) -> str:
    """``CPU, N logical CPUs, torch X (T threads)`` followed by ``extras`` (e.g. peer versions)."""
    import torch

    parts = [f"{cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({threads} threads)", *extras]
    return ", ".join(parts)
