"""limner.models"""

from limner.torchcheck import require_torch

require_torch()  # before any torch-using module below
