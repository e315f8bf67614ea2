"""The torch version gate, run by the subpackages that use torch (``nn``, ``models``,
``samplers``, ``conditioning``, ``training``, ``evaluation``) when they are first imported.

It lives here rather than in ``limner/__init__`` so that ``import limner`` and the torch-free
parts (``limner.store``, ``limner.runs``, ``limner.data.decode``, ``limner.errors``) load
without torch.
"""

from __future__ import annotations

MIN_TORCH = (2, 6)
_checked = False


def torch_version_ok(version: str) -> bool:
    """True when ``version`` (e.g. "2.13.0+cpu") is at least MIN_TORCH; unparsable -> True."""
    parts = version.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= MIN_TORCH
    except (ValueError, IndexError):  # pragma: no cover - exotic builds
        return True


def require_torch() -> None:
    """Import torch and refuse releases older than MIN_TORCH (once per process)."""
    # torch < 2.6 has weights_only=False as the torch.load default and known unpickling holes
    # (GHSA-53q9-r3pm-6pq6); limner refuses to run on it rather than trusting every caller.
    global _checked
    if _checked:
        return
    import torch

    if not torch_version_ok(torch.__version__):
        raise ImportError(
            f"limner needs torch>={MIN_TORCH[0]}.{MIN_TORCH[1]} (found {torch.__version__}); "
            "older releases load checkpoints unsafely. Install torch==2.13.0."
        )
    _checked = True
