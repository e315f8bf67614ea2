"""The machine line every benchmark prints above its table (shared by the benchmark scripts)."""

from __future__ import annotations

import os


def cpu_name() -> str:
    """The CPU model, its x86 family/model numbers and vector instructions (AVX2 or AVX512), as
    ``limner env`` prints them: "AMD EPYC" alone covers CPUs with and without AVX-512."""
    from limner.environment import cpu_description

    return cpu_description()


def machine_description(threads: int, *extras: str) -> str:
    """``CPU, N logical CPUs, torch X (T threads)`` followed by ``extras`` (e.g. peer versions)."""
    import torch

    from limner.environment import cpu_caches

    caches = cpu_caches()
    cpu = f"{cpu_name()}{f' [{caches}]' if caches else ''}"
    parts = [f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({threads} threads)", *extras]
    return ", ".join(parts)
