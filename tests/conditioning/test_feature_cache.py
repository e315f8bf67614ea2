"""The MiniLM feature cache is bounded: least recently used rows go first (no MiniLM needed)."""

from __future__ import annotations

import torch

from limner.conditioning.minilm import FeatureCache


def test_least_recently_used_rows_are_evicted_past_the_byte_bound():
    row = torch.zeros(4, 384, dtype=torch.float16)  # 3,072 bytes
    cache = FeatureCache(max_bytes=3 * row.numel() * row.element_size())
    for name in "abc":
        cache.put(name, row)
    assert cache.get("a") is row  # "a" becomes the most recently used
    cache.put("d", row)  # over the bound: "b", the least recently used, goes
    assert [k for k in cache.rows] == ["c", "a", "d"]
    assert cache.bytes == 3 * 3072
    cache.put("a", torch.zeros(1, 384, dtype=torch.float16))  # replacing a row re-counts it
    assert cache.bytes == 2 * 3072 + 768 and "b" not in cache


def test_a_row_larger_than_the_bound_is_still_kept_alone():
    cache = FeatureCache(max_bytes=10)
    cache.put("x", torch.zeros(8, dtype=torch.float16))
    cache.put("y", torch.zeros(8, dtype=torch.float16))
    assert list(cache.rows) == ["y"] and cache.bytes == 16
    cache.clear()
    assert cache.bytes == 0 and "y" not in cache


def test_lookup_encodes_each_missing_caption_once_and_counts():
    cache, calls = FeatureCache(), []

    def encode(captions):
        calls.append(list(captions))
        return [torch.full((1, 2), float(len(c)), dtype=torch.float16) for c in captions]

    rows = cache.lookup(["ab", "c", "ab"], encode)
    assert calls == [["ab", "c"]] and [r[0, 0].item() for r in rows] == [2.0, 1.0, 2.0]
    cache.lookup(["c", "dddd"], encode)
    assert calls[-1] == ["dddd"] and (cache.misses, cache.hits) == (3, 2)
