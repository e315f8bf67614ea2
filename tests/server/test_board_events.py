"""Shared boards across studio processes: an image added to a board through one studio reaches
a member whose ``/api/events`` socket is on another studio on the same database (through the
store relay), once; a member on the same studio gets it once too (the route's own event and the
relay's re-read are one event). Two apps in this process stand for two ``limner studio``
processes: they share nothing but the database and the home folder. Run on SQLite (one file,
WAL) and on PostgreSQL."""

from __future__ import annotations

import pytest

from limner.server import accounts
from tests.server.conftest import receive_json


@pytest.fixture(params=["sqlite", "postgresql"])
def two_studios(request, studio_factory, tmp_path):
    """Two studio apps (no workers) on one database and one home: (A, B)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    home = tmp_path / "shared-home"
    a = studio_factory(workers=0, home=home, db_url=url)
    b = studio_factory(workers=0, home=home, db_url=url)
    return a, b


def add_image(studio, user, prompt: str, seed: int) -> int:
    """An image of ``user`` stored as a worker stores one (file under the home, then the row)."""
    from tests.store.conftest import make_record, write_png

    record = make_record(prompt, seed)
    return studio.store.add_image(write_png(studio.store.new_image_path(user), record), record, user)


def board_events(ws, timeout: float) -> list[dict]:
    """``board_image`` messages arriving on ``ws`` until ``timeout`` seconds pass without one."""
    got = []
    while True:
        try:
            msg = receive_json(ws, timeout)
        except TimeoutError:
            return got
        if msg["type"] == "board_image":
            got.append(msg)


def test_board_additions_reach_members_on_another_studio_once(two_studios):
    a_studio, b_studio = two_studios
    alice, a = a_studio.add_user("alice", role="admin")
    bob, _ = a_studio.add_user("bob")
    _, bob_key = a_studio.store.create_api_key(bob, "on studio B")
    accounts.forget(b_studio.app.state.studio)
    board = a.create_board("team")
    a.share_board(board["id"], "bob", "viewer")
    first = add_image(a_studio, alice, "sunset over the bay", 1)
    second = add_image(a_studio, alice, "dawn over the hills", 2)
    auth = {"Authorization": f"Bearer {bob_key}"}
    with b_studio.http.websocket_connect("/api/events", headers=auth) as on_b, \
            a_studio.http.websocket_connect("/api/events", headers=auth) as on_a:
        a.add_to_board(board["id"], first)
        msg = next(m for m in iter(lambda: receive_json(on_b, 10), None) if m["type"] == "board_image")
        assert (msg["board_id"], msg["image"]["id"]) == (board["id"], first)
        assert msg["image"]["prompt"] == "sunset over the bay"
        a.add_to_board(board["id"], first)  # already there: no news
        a.add_to_board(board["id"], second)
        later_b = board_events(on_b, 2.0)
        same_process = board_events(on_a, 0.5)
    assert [m["image"]["id"] for m in later_b] == [second]  # each addition once, none twice
    assert [m["image"]["id"] for m in same_process] == [first, second]
    # removing and adding again is news again
    with b_studio.http.websocket_connect("/api/events", headers=auth) as on_b:
        a.remove_from_board(board["id"], first)
        a.add_to_board(board["id"], first)
        assert [m["image"]["id"] for m in board_events(on_b, 2.0)] == [first]


def test_board_events_on_another_studio_go_to_members_only(two_studios):
    a_studio, b_studio = two_studios
    alice, a = a_studio.add_user("alice", role="admin")
    bob, _ = a_studio.add_user("bob")
    carol, _ = a_studio.add_user("carol")
    _, carol_key = a_studio.store.create_api_key(carol, "on studio B")
    _, bob_key = a_studio.store.create_api_key(bob, "on studio B")
    accounts.forget(b_studio.app.state.studio)
    board = a.create_board("bob only")
    a.share_board(board["id"], "bob", "editor")
    image = add_image(a_studio, alice, "a private sketch", 3)
    with b_studio.http.websocket_connect("/api/events", headers={"Authorization": f"Bearer {carol_key}"}) as carol_ws, \
            b_studio.http.websocket_connect("/api/events", headers={"Authorization": f"Bearer {bob_key}"}) as bob_ws:
        a.add_to_board(board["id"], image)
        assert [m["image"]["id"] for m in board_events(bob_ws, 2.0)] == [image]
        assert board_events(carol_ws, 0.5) == []  # not a member: nothing, not even the id
