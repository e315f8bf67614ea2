"""Word-level tokenizer for the text encoder limner trains from a dataset's captions.

Captions are NFKC-normalised, lower-cased and split on anything that is not a letter or digit.
The vocabulary is the training captions' words, most frequent first (ties alphabetical), after
three special tokens. It is stored in the run config, so a run reloads without its dataset.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Iterable

import torch
from torch import Tensor

PAD, UNK, BOS = "<pad>", "<unk>", "<bos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS)
PAD_ID, UNK_ID, BOS_ID = range(len(SPECIAL_TOKENS))

# A "word" is a run of letters or digits in any script ([^\W_] = \w without the underscore).
_WORD = re.compile(r"[^\W_]+")


def split_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters and digits; everything else separates)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def build_vocab(captions: Iterable[str], max_words: int | None = None) -> list[str]:
    """Words of ``captions`` sorted by frequency (descending) then alphabetically, at most
    ``max_words`` of them (special tokens not included)."""
    counts = Counter(word for caption in captions for word in split_words(caption))
    words = sorted(counts, key=lambda word: (-counts[word], word))
    return words if max_words is None else words[:max_words]


class WordTokenizer:
    """Maps captions to token ids: ``<bos>`` then one id per word, unknown words → ``<unk>``,
    truncated to ``max_tokens`` ids (``<bos>`` included), right-padded with ``<pad>``.

    Args:
        vocab: the words (no special tokens); word ``i`` gets id ``len(SPECIAL_TOKENS) + i``.
        max_tokens: longest id sequence produced, ``<bos>`` included (>= 2).
    """

    def __init__(self, vocab: list[str], max_tokens: int):
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
        self.vocab = list(vocab)
        self.max_tokens = max_tokens
        self._ids = {word: len(SPECIAL_TOKENS) + i for i, word in enumerate(self.vocab)}
        if len(self._ids) != len(self.vocab):
            raise ValueError("vocabulary contains duplicate words")

    def __len__(self) -> int:
        """Number of token ids (special tokens included)."""
        return len(SPECIAL_TOKENS) + len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of one caption, ``<bos>`` first, truncated to ``max_tokens``."""
        ids = [BOS_ID] + [self._ids.get(word, UNK_ID) for word in split_words(text)]
        return ids[: self.max_tokens]

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` that are not in the vocabulary (each once, in order of appearance)."""
        return list(dict.fromkeys(w for w in split_words(text) if w not in self._ids))

    def truncated(self, text: str) -> bool:
        """Whether ``text`` has more words than fit in ``max_tokens``."""
        return 1 + len(split_words(text)) > self.max_tokens

    def batch(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids [B, T] int64 and mask [B, T] bool (True = real token), T = longest row."""
        rows = [self.encode(text) for text in texts]
        T = max((len(row) for row in rows), default=1)
        ids = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, ids != PAD_ID
