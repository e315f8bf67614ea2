"""Trained text encoder: tokenisation through the encoder, masking, empty captions, prompts."""

from __future__ import annotations

import pytest
import torch

from limner.conditioning import Conditioning
from limner.conditioning.tokenizer import UNK_ID
from limner.errors import UsageError

from .conftest import make_encoder


def test_oov_words_become_unk_and_are_reported(data):
    encoder = make_encoder("text", data)
    inputs = encoder.prepare(captions=["a purple car"])
    assert inputs.token_ids[0, 2].item() == UNK_ID
    assert encoder.unknown_words("a purple car, a Zebra") == ["purple", "zebra"]


def test_long_captions_are_truncated_to_max_tokens(data):
    encoder = make_encoder("text", data)  # max_tokens = 8
    cond = encoder(encoder.prepare(captions=["a red car " * 10, "dog"]))
    assert cond.tokens.shape[1] == 8 and cond.mask[0].all() and cond.mask[1].sum() == 2


def test_padding_does_not_change_a_caption_encoding(data):
    encoder = make_encoder("text", data)
    alone = encoder(encoder.prepare(captions=["a blue car"]))
    padded = encoder(encoder.prepare(captions=["a blue car", "a small dog on the grass"]))
    T = alone.tokens.shape[1]
    torch.testing.assert_close(padded.tokens[0, :T], alone.tokens[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.vector[0], alone.vector[0], atol=1e-5, rtol=1e-5)


def test_empty_caption_is_valid_and_distinct_from_null(data):
    encoder = make_encoder("text", data)
    empty = encoder(encoder.prepare(captions=[""]))
    assert empty.mask.tolist() == [[True]]
    assert not torch.allclose(empty.vector, encoder.null(1).vector)
    assert not torch.allclose(empty.tokens, encoder.null(1).tokens)


def test_long_prompt_and_short_negative_concatenate(data):
    encoder = make_encoder("text", data)
    prompt = encoder(encoder.prepare(captions=["a small red car on the grass road"] * 2))
    negative = encoder(encoder.prepare(captions=["dog"] * 2))
    both = Conditioning.cat([prompt, negative])
    T = prompt.tokens.shape[1]
    assert both.tokens.shape == (4, T, encoder.dim) and negative.tokens.shape[1] < T
    assert both.mask[2:].sum(1).tolist() == [2, 2]
    torch.testing.assert_close(both.tokens[2:, :2], negative.tokens)
    assert (both.tokens[2:, 2:] == 0).all()


def test_captions_are_required(data):
    encoder = make_encoder("text", data)
    with pytest.raises(UsageError, match="caption"):
        encoder.prepare(labels=[0, 1])
