"""Search: full text with hostile input, semantic, hybrid, filters, keyset pages under inserts."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from limner.errors import UsageError
from limner.store import Filters, SearchUnavailable, Store
from limner.store.search import fts5_query, query_words

from .conftest import make_record

PROMPTS = [
    "a red heart on white",
    "a blue heart, glowing",
    "portrait of an old fisherman at dawn",
    "red sports car in the rain",
    "café terrace at night, oil painting",
    "she said \"hello\" -- NEAR the door (50% off) *sale*",
]


@pytest.fixture
def alice(store):
    return store.create_user("alice", None)


@pytest.fixture
def gallery(store, alice, add):
    ids = [add(alice, p, seed=i, negative="blurry" if i == 2 else None,
               sampler="heun" if i % 2 else "euler", steps=10 + i) for i, p in enumerate(PROMPTS)]
    return dict(zip(PROMPTS, ids))


def ids(page) -> list[int]:
    return [i.id for i in page.items]


def test_text_requires_every_word_in_prompt_or_negative(store, alice, gallery):
    assert set(ids(store.search(alice, "red", mode="text"))) == {gallery[PROMPTS[0]], gallery[PROMPTS[3]]}
    assert ids(store.search(alice, "RED heart", mode="text")) == [gallery[PROMPTS[0]]]
    assert ids(store.search(alice, "blurry fisherman", mode="text")) == [gallery[PROMPTS[2]]]
    assert ids(store.search(alice, "café", mode="text")) == [gallery[PROMPTS[4]]]
    assert ids(store.search(alice, "green", mode="text")) == []


HOSTILE = ['"', "'", "-", "*", "(", ")", "NEAR", "AND", "OR", "NOT", ":", "@", "%", "_", "\\", "🙂", "",
           "x" * 10_000, 'hello"', "NEAR(door hello)", "door*", "^door", "-door", "door OR car", "50%",
           "sale*", "prompt:door", "\x00", "near door", "hello door", "'; DROP TABLE images; --",
           "door AND", "{door}", "door NEAR/2 hello", '"door" "', "ｄｏｏｒ", "%_%"]


def test_hostile_text_is_plain_text(store, alice, gallery):
    in_last = set(query_words(PROMPTS[5]))
    for q in HOSTILE:
        page = store.search(alice, q, mode="text")  # never a syntax error
        words = query_words(q)
        if words and set(words) <= in_last:  # operators and punctuation are plain text
            assert ids(page) == [gallery[PROMPTS[5]]], q
        elif words:
            assert gallery[PROMPTS[5]] not in ids(page), q
    assert len(store.search(alice, "", mode="text").items) == len(PROMPTS)


@given(text=st.text(max_size=60))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_text_searches_without_error(store, alice, gallery, text):
    page = store.search(alice, text + " fisherman", mode="text")
    words = query_words(text)
    if not words or all(w in "portrait of an old fisherman at dawn blurry".split() for w in words):
        assert ids(page) == [gallery[PROMPTS[2]]]
    assert isinstance(fts5_query(words), str)


def test_internal_error_raises_instead_of_zero_hits(store, alice, gallery):
    if store.dialect == "sqlite":
        break_it, mend = "ALTER TABLE images_fts RENAME TO broken_fts", "ALTER TABLE broken_fts RENAME TO images_fts"
    else:
        break_it = "ALTER TABLE images RENAME COLUMN search_tsv TO broken_tsv"
        mend = "ALTER TABLE images RENAME COLUMN broken_tsv TO search_tsv"
    with store.engine.begin() as conn:
        conn.exec_driver_sql(break_it)
    try:
        with pytest.raises(sa.exc.DatabaseError):
            store.search(alice, "red", mode="text")
        with pytest.raises(sa.exc.DatabaseError):
            store.search(alice, "red", mode="hybrid")
    finally:
        with store.engine.begin() as conn:
            conn.exec_driver_sql(mend)
    assert len(store.search(alice, "red", mode="text").items) == 2


def test_filters(store, alice, gallery, add):
    assert ids(store.search(alice, filters=Filters(sampler="heun", steps=13))) == [gallery[PROMPTS[3]]]
    assert ids(store.search(alice, filters=Filters(seed=4))) == [gallery[PROMPTS[4]]]
    assert len(store.search(alice, filters=Filters(model="run-a", family="diffusion")).items) == 6
    assert store.search(alice, filters=Filters(model="other")).items == []
    assert len(store.search(alice, filters=Filters(cfg=3.0)).items) == 6
    store.update_image(alice, gallery[PROMPTS[1]], rating=4)
    assert ids(store.search(alice, "heart", mode="text", filters=Filters(rating_min=3))) == [gallery[PROMPTS[1]]]
    later = time.time() + 1000
    newer = add(alice, "a red heart tomorrow", seed=99)
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE images SET created = :t WHERE id = :i"), {"t": later, "i": newer})
    assert ids(store.search(alice, filters=Filters(since=later - 1))) == [newer]
    assert newer not in ids(store.search(alice, filters=Filters(until=later - 1)))
    assert ids(store.search(alice, filters=Filters(owner="alice", seed=99))) == [newer]
    assert store.search(alice, filters=Filters(owner="nobody")).items == []


def test_semantic_and_hybrid_rank_by_meaning(store, alice, gallery):
    sem = store.search(alice, "red heart", mode="semantic", limit=3)
    assert ids(sem)[0] == gallery[PROMPTS[0]] and sem.items[0].score > sem.items[-1].score
    hyb = store.search(alice, "heart glowing", mode="hybrid", limit=3)
    assert ids(hyb)[0] == gallery[PROMPTS[1]]
    filtered = store.search(alice, "red heart", mode="semantic", filters=Filters(sampler="heun"))
    assert set(ids(filtered)) == {gallery[p] for i, p in enumerate(PROMPTS) if i % 2}


def test_semantic_needs_an_embedder(db_url, home, alice, gallery):
    plain = Store.open(db_url, home=home)
    try:
        with pytest.raises(SearchUnavailable):
            plain.search(alice, "red", mode="hybrid")
        assert len(plain.search(alice, "red", mode="text").items) == 2
    finally:
        plain.close()


@pytest.mark.parametrize("mode,q", [("text", ""), ("text", "heart"), ("semantic", "red heart"),
                                    ("hybrid", "red heart")])
def test_pages_are_stable_while_images_arrive(store, alice, add, mode, q):
    for i in range(9):
        add(alice, f"a red heart number {i}" if i % 3 else f"a blue square {i}", seed=100 + i)
    expected = _all_pages(store, alice, q, mode, limit=100)
    assert len(expected) == len(set(expected)) >= 6
    seen, cursor, n = [], None, 0
    while True:
        page = store.search(alice, q, mode=mode, cursor=cursor, limit=2)
        seen += ids(page)
        add(alice, f"a red heart arriving {n}", seed=500 + n)  # new matching images meanwhile
        n += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected  # no duplicates, no gaps, same order


def _all_pages(store, user, q, mode, limit):
    out, cursor = [], None
    while True:
        page = store.search(user, q, mode=mode, cursor=cursor, limit=limit)
        out += ids(page)
        if not (cursor := page.next_cursor):
            return out


def test_bad_cursor_limit_and_mode_name_the_field(store, alice, gallery):
    page = store.search(alice, "heart", mode="text", limit=1)
    assert page.next_cursor
    with pytest.raises(UsageError, match="cursor"):
        store.search(alice, "car", mode="text", cursor=page.next_cursor)
    with pytest.raises(UsageError, match="cursor"):
        store.search(alice, "heart", mode="text", cursor="not-a-cursor!")
    with pytest.raises(UsageError, match="limit"):
        store.search(alice, limit=0)
    with pytest.raises(UsageError, match="mode"):
        store.search(alice, "x", mode="fuzzy")


def test_semantic_filters_reach_past_the_first_candidates(store, alice):
    """A filter no probe candidate passes (only a few far-off images rated) still finds them."""
    from .conftest import fake_embedder

    prompts = [f"red heart {i}" for i in range(300)] + ["blue whale deep sea"] * 3
    entries = [{"path": f"images/bulk/{i}.png", "record": make_record(p, seed=i), "content_hash": f"h{i}",
                "vector": fake_embedder([p])[0]} for i, p in enumerate(prompts)]
    ids = store.bulk_add(alice, entries)
    for i in ids[-3:]:
        store.update_image(alice, i, rating=5)
    for mode in ("semantic", "hybrid"):
        page = store.search(alice, "red heart", mode=mode, filters=Filters(rating_min=4))
        assert sorted(i.id for i in page.items) == sorted(ids[-3:]), mode
    page = store.search(alice, "red heart", mode="semantic", limit=200)
    assert len(page.items) == 200 and all(i.prompt.startswith("red heart") for i in page.items)


def test_hybrid_pages_go_past_the_fused_window_to_the_last_match(store, alice, add):
    """More than 2 x RRF_WINDOW matches: hybrid pages reach every text hit and every image with
    an embedding, once each, in the same order whatever the page size, while images arrive."""
    from limner.store.search import RRF_WINDOW

    from .conftest import fake_embedder

    prompts = ([f"red heart {i}" for i in range(300)] + [f"a red kite over hills {i}" for i in range(250)]
               + [f"blue whale {i}" for i in range(300)])
    entries = [{"path": f"images/bulk/{i}.png", "record": make_record(p, seed=i), "content_hash": f"h{i}",
                "vector": fake_embedder([p])[0]} for i, p in enumerate(prompts)]
    # text hits without an embedding (stored while no embedder was configured) count too
    entries += [{"path": f"images/bulk/plain{i}.png", "record": make_record(f"red heart plain {i}", seed=i),
                 "content_hash": f"p{i}"} for i in range(40)]
    every = set(store.bulk_add(alice, entries))
    assert len(every) > 2 * RRF_WINDOW
    q = "red heart"
    whole = _all_pages(store, alice, q, "hybrid", limit=200)
    assert len(whole) == len(set(whole)) and set(whole) == every
    first = store.search(alice, q, mode="hybrid", limit=50)
    assert all("heart" in (i.prompt or "") for i in first.items[:10])  # still ranked by both lists

    seen, cursor, n = [], None, 0
    while True:
        page = store.search(alice, q, mode="hybrid", cursor=cursor, limit=37)
        seen += ids(page)
        add(alice, f"a red heart arriving {n}", seed=5000 + n)  # new matches meanwhile
        n += 1
        if not (cursor := page.next_cursor):
            break
    assert seen == whole  # no duplicates, no gaps, same order as with pages of 200
    assert n > 2 * RRF_WINDOW // 37
