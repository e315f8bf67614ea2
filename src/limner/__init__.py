"""limner: train, watch, sample and evaluate generative image models on your own images.

The library is the product; the CLI (``limner``) and, later, the studio are thin callers of it.
"""

from __future__ import annotations

__version__ = "0.1.0"

# The torch version gate moved to limner.torchcheck (run by the torch-using subpackages), so
# that ``import limner`` and limner.store / limner.runs load without torch.
from limner.torchcheck import MIN_TORCH  # noqa: E402,F401 - kept for callers of limner.MIN_TORCH
