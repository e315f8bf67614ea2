"""Shared network blocks: norms, embeddings, attention, residual blocks, resampling.

Model files under ``limner.models`` build on these; nothing here knows about a model family.
"""

from limner.torchcheck import require_torch

require_torch()  # before any torch-using module below
from limner.nn.attention import Attention2d, TokenContext, attention, prepare_tokens
from limner.nn.conv import Conv2d, prepack_available
from limner.nn.embeddings import FourierFeatures, NoiseEmbedding
from limner.nn.norms import GroupNorm2d, fused_group_norm_act, group_norm_act, num_groups, prefers_fused
from limner.nn.resblocks import EmbMode, ResBlock2d
from limner.nn.sampling import Downsample2d, Upsample2d

__all__ = [
    "Attention2d",
    "Conv2d",
    "Downsample2d",
    "EmbMode",
    "FourierFeatures",
    "GroupNorm2d",
    "NoiseEmbedding",
    "ResBlock2d",
    "TokenContext",
    "Upsample2d",
    "attention",
    "fused_group_norm_act",
    "group_norm_act",
    "num_groups",
    "prefers_fused",
    "prepack_available",
    "prepare_tokens",
]
