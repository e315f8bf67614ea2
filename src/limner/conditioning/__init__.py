"""Conditioning: the ``Conditioning`` object every family passes around and the encoders that
make it from nothing, class labels or captions (a small trained text encoder, or frozen MiniLM).

Typical use::

    config = resolve_encoder_config("text", data_info)       # saved in the run config
    encoder = build_encoder(config)
    cond = encoder(encoder.prepare(captions=batch.captions), drop=drop_mask)
"""

from limner.torchcheck import require_torch

require_torch()  # before any torch-using module below
from limner.conditioning.base import CondInputs, CondKind, Conditioning
from limner.conditioning.config import EncoderConfig, TextEncoderKind, resolve_encoder_config
from limner.conditioning.encoder_base import CondEncoder, TextCondEncoder
from limner.conditioning.encoders import ClassEncoder, NullEncoder, build_encoder
from limner.conditioning.minilm import MiniLMTextEncoder
from limner.conditioning.text import TrainedTextEncoder
from limner.conditioning.tokenizer import WordTokenizer, build_vocab, split_words

__all__ = [
    "ClassEncoder",
    "CondEncoder",
    "CondInputs",
    "CondKind",
    "Conditioning",
    "EncoderConfig",
    "MiniLMTextEncoder",
    "NullEncoder",
    "TextCondEncoder",
    "TextEncoderKind",
    "TrainedTextEncoder",
    "WordTokenizer",
    "build_encoder",
    "build_vocab",
    "resolve_encoder_config",
    "split_words",
]
