"""limner: train, watch, sample and evaluate generative image models on your own images.

The library is the product; the CLI (``limner``) and, later, the studio are thin callers of it.
"""

from __future__ import annotations

__version__ = "0.1.0"

MIN_TORCH = (2, 6)


def _check_torch() -> None:
    # torch < 2.6 has weights_only=False as the torch.load default and known unpickling holes
    # (GHSA-53q9-r3pm-6pq6); limner refuses to run on it rather than trusting every caller.
    import torch

    parts = torch.__version__.split("+")[0].split(".")
    try:
        version = (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):  # pragma: no cover - exotic builds
        return
    if version < MIN_TORCH:
        raise ImportError(
            f"limner needs torch>={MIN_TORCH[0]}.{MIN_TORCH[1]} (found {torch.__version__}); "
            "older releases load checkpoints unsafely. Install torch==2.13.0."
        )


_check_torch()
