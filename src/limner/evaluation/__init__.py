"""limner.evaluation: feature extractors, reference statistics, metrics, memorization and reports.

Modules:

- ``features``: the ``FeatureExtractor`` contract (identity + uint8 images -> float64 features).
- ``networks``: the small ResNet image encoder behind the extractors limner trains.
- ``inception``: the standard FID Inception-v3 (pool3, 2048-d) from a user-supplied weights file.
- ``trained``: classifier / contrastive extractors trained on the user's data, saved in safetensors.
- ``alignment``: a CLIP-style text-image model for text alignment and prompt retrieval.
- ``metrics``: FID, KID, precision/recall, density/coverage, Inception Score (numpy, float64).
- ``memorization``: nearest training neighbours of generated images, near-copy share.
- ``stats``: reference statistics cached per (dataset, extractor, resolution).
- ``evaluate`` / ``report``: ``limner eval`` and the in-training evaluation.
"""
from limner.torchcheck import require_torch

require_torch()  # before any torch-using module below
