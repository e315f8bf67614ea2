"""Users, sessions and API keys: hashed at rest, checked, revocable."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from limner.errors import UsageError
from limner.store import AuthError, Conflict, Filters, Forbidden, NotFound


def test_password_login_and_hash_at_rest(store):
    user = store.create_user("alice", "correct horse")
    assert store.authenticate("alice", "correct horse").id == user.id
    with pytest.raises(AuthError) as wrong:
        store.authenticate("alice", "wrong password")
    with pytest.raises(AuthError) as unknown:
        store.authenticate("nobody", "correct horse")
    assert str(wrong.value) == str(unknown.value)  # no user enumeration through the message
    with store.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT password_hash FROM users")).scalar_one()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert store.has_accounts()


def test_usernames_roles_and_duplicates(store):
    store.create_user("alice", "password-1")
    with pytest.raises(Conflict):
        store.create_user("alice", "password-2")
    for bad in ("", "../x", "a b", "x" * 65):
        with pytest.raises(UsageError, match="username"):
            store.create_user(bad, "password-1")
    with pytest.raises(UsageError, match="password"):
        store.create_user("bob", "short")
    with pytest.raises(UsageError, match="role"):
        store.create_user("bob", "password-1", role="root")


def test_local_user_is_an_admin_without_password(store):
    local = store.ensure_local_user()
    assert local.is_admin and store.ensure_local_user().id == local.id
    assert not store.has_accounts()
    with pytest.raises(AuthError):
        store.authenticate("local", "")


def test_sessions_expire_and_end_on_password_change(store):
    alice = store.create_user("alice", "password-1")
    token = store.create_session(alice)
    assert store.session_user(token).id == alice.id
    short = store.create_session(alice, seconds=-1)
    with pytest.raises(AuthError):
        store.session_user(short)
    assert store.purge_sessions() == 1
    store.set_password(alice, alice.id, "password-2")
    with pytest.raises(AuthError):
        store.session_user(token)
    other = store.create_session(alice)
    store.end_session(other)
    with pytest.raises(AuthError):
        store.session_user(other)
    with store.engine.connect() as conn:
        assert token not in str(conn.execute(sa.text("SELECT token_hash FROM sessions")).all())


def test_api_keys_hashed_shown_once_and_revocable(store):
    alice = store.create_user("alice", "password-1")
    bob = store.create_user("bob", "password-1")
    record, key = store.create_api_key(alice, "laptop")
    assert key.startswith("lmn_") and record.prefix == key[:10]
    assert store.api_key_user(key).id == alice.id
    assert store.list_api_keys(alice)[0].last_used is not None
    with store.engine.connect() as conn:
        assert key not in str(conn.execute(sa.text("SELECT * FROM api_keys")).all())
    with pytest.raises(NotFound):
        store.revoke_api_key(bob, record.id)
    store.revoke_api_key(alice, record.id)
    store.revoke_api_key(alice, record.id)  # idempotent
    with pytest.raises(AuthError):
        store.api_key_user(key)
    with pytest.raises(AuthError):
        store.api_key_user(key + "x")


def test_admin_only_user_management(store):
    admin = store.create_user("root", "password-1", role="admin")
    alice = store.create_user("alice", "password-1")
    with pytest.raises(Forbidden):
        store.list_users(alice)
    assert [u.username for u in store.list_users(admin)] == ["root", "alice"]
    token = store.create_session(alice)
    _, key = store.create_api_key(alice, "k")
    store.set_disabled(admin, alice.id, True)
    for check in (lambda: store.session_user(token), lambda: store.api_key_user(key),
                  lambda: store.authenticate("alice", "password-1")):
        with pytest.raises(AuthError):
            check()


def test_first_admin_adopts_what_the_local_user_made_once(store, add, caplog):
    """Turning accounts on moves the local user's images, boards (with their images and
    members) and jobs to the first admin, in one transaction, once, with a log line."""
    import logging

    local = store.ensure_local_user()
    images = [add(local, f"local picture {i}", seed=i) for i in range(3)]
    board = store.create_board(local, "mine")
    store.add_to_board(local, board.id, images[0])
    job, _ = store.submit_job(local, "generate", {"prompt": "queued before accounts"}, idempotency_key="k")
    # a user without admin rights does not turn the studio's ownership over
    bob = store.create_user("bob", "password-bob", "user")
    store.share_board(local, board.id, "bob", "viewer")
    with caplog.at_level(logging.WARNING, logger="limner.store.accounts"):
        alice, adopted = store.create_user_adopting("alice", "password-alice", "admin")
    assert (adopted.images, adopted.boards, adopted.jobs) == (3, 1, 1)
    assert any("accounts turned on" in r.getMessage() and "'alice'" in r.getMessage() for r in caplog.records)
    assert {i.id for i in store.search(alice, filters=Filters(owner="alice")).items} == set(images)
    assert store.search(alice, filters=Filters(owner="local")).items == []
    assert [b.id for b in store.list_boards(alice)] == [board.id] and store.get_board(alice, board.id).role == "owner"
    assert store.board_members(alice, board.id) == [("alice", "owner"), ("bob", "viewer")]
    assert [i.id for i in store.search(bob, filters=Filters(board=board.id)).items] == [images[0]]
    assert [j.id for j in store.list_jobs(alice)] == [job.id] and store.list_jobs(local) == []
    # the idempotency key moved with the job: a retried submit finds it under the new owner
    assert store.submit_job(alice, "generate", {"prompt": "queued before accounts"}, idempotency_key="k")[0].id == job.id
    # once: another admin adopts nothing, and what local makes later stays local's
    later = add(local, "made after", seed=9)
    carol, again = store.create_user_adopting("carol", "password-carol", "admin")
    assert again is None
    assert store.get_image(alice, later).owner_id == local.id
    assert store.search(carol, filters=Filters(owner="carol")).items == []


def test_first_admin_without_a_local_user_adopts_nothing(store):
    alice, adopted = store.create_user_adopting("alice", "password-alice", "admin")
    assert adopted is not None and adopted.total == 0
    assert store.create_user_adopting("bob", None, "admin")[1] is None  # no password: accounts stay off
