"""Word tokenizer of the trained text encoder: splitting, vocabulary order, UNK, truncation."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from limner.conditioning.tokenizer import (
    BOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    WordTokenizer,
    build_vocab,
    split_words,
)


def test_split_lowercases_and_splits_on_non_alphanumerics():
    assert split_words("A Red-car, on_the ROAD!! 42x") == ["a", "red", "car", "on", "the", "road", "42x"]
    assert split_words("Café crème") == ["café", "crème"]
    assert split_words("  ...  ") == []


def test_vocab_is_sorted_by_frequency_then_alphabetically():
    captions = ["b a", "c a", "b d", "a"]
    assert build_vocab(captions) == ["a", "b", "c", "d"]  # a×3, b×2, then c, d alphabetical
    assert build_vocab(["zeta beta", "beta"]) == ["beta", "zeta"]


def test_vocab_does_not_depend_on_caption_order():
    captions = [f"word{i % 7} other{i % 3} Word{i % 5}" for i in range(40)]
    shuffled = captions[:]
    random.Random(0).shuffle(shuffled)
    assert build_vocab(captions) == build_vocab(shuffled)


def test_vocab_cap_keeps_the_most_frequent_words():
    assert build_vocab(["a a a b b c"], max_words=2) == ["a", "b"]


def test_unknown_words_map_to_unk_and_are_reported():
    tok = WordTokenizer(["a", "red", "car"], max_tokens=16)
    assert tok.encode("A red zebra car zebra quux") == [
        BOS_ID, 3, 4, UNK_ID, 5, UNK_ID, UNK_ID,
    ]
    assert tok.unknown_words("A red zebra car zebra quux") == ["zebra", "quux"]
    assert tok.unknown_words("a red car") == []


def test_truncation_keeps_bos_and_the_first_words():
    tok = WordTokenizer(["a", "b"], max_tokens=3)
    assert tok.encode("a b a b") == [BOS_ID, 3, 4]
    assert tok.truncated("a b a") and not tok.truncated("a b")


def test_empty_caption_is_a_single_bos_token():
    assert WordTokenizer([], max_tokens=4).encode("") == [BOS_ID]


def test_batch_pads_to_the_longest_row():
    tok = WordTokenizer(["a", "b"], max_tokens=8)
    ids, mask = tok.batch(["a b a", ""])
    assert ids.tolist() == [[BOS_ID, 3, 4, 3], [BOS_ID, PAD_ID, PAD_ID, PAD_ID]]
    assert mask.tolist() == [[True] * 4, [True, False, False, False]]


@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=80), max_tokens=st.integers(2, 10))
def test_encode_is_bounded_and_in_vocabulary(text, max_tokens):
    tok = WordTokenizer(build_vocab(["the quick brown fox", text]), max_tokens)
    ids = tok.encode(text)
    assert ids[0] == BOS_ID and 1 <= len(ids) <= max_tokens
    assert all(len(SPECIAL_TOKENS) <= i < len(tok) for i in ids[1:])  # every word is known
