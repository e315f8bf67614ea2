"""``board_additions``: what the studio relay reads to show members images added to their
boards through another studio process; ``add_to_board`` returns the time it added."""

from __future__ import annotations

import time


def test_board_additions_since_a_time_with_their_audience(store, add):
    alice = store.create_user("alice", None)
    bob = store.create_user("bob", None)
    carol = store.create_user("carol", None)
    shared = store.create_board(alice, "shared")
    private = store.create_board(alice, "private")
    store.share_board(alice, shared.id, "bob", "viewer")
    one, two, three = (add(alice, f"picture {i}", seed=i) for i in range(3))
    t0 = store.clock()
    first = store.add_to_board(alice, shared.id, one)
    assert first is not None and first >= t0
    assert store.add_to_board(alice, shared.id, one) is None  # already there: not an addition
    time.sleep(0.01)
    mid = store.clock()
    second = store.add_to_board(alice, shared.id, two)
    store.add_to_board(alice, private.id, three)

    got = store.board_additions([bob.id, carol.id], t0)
    assert [(a.board_id, a.image_id, a.added, a.audience) for a in got] == [
        (shared.id, one, first, (bob.id,)), (shared.id, two, second, (bob.id,))]  # oldest first
    assert [a.image_id for a in store.board_additions([bob.id], mid)] == [two]
    assert store.board_additions([carol.id], t0) == []  # not a member of any board
    everything = store.board_additions([alice.id, bob.id], t0)
    assert [(a.image_id, a.audience) for a in everything] == [
        (one, (alice.id, bob.id)), (two, (alice.id, bob.id)), (three, (alice.id,))]
    assert [a.image_id for a in store.board_additions([alice.id], t0, limit=2)] == [two, three]  # the newest
    assert store.board_additions([], t0) == []
