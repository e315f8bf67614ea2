"""Users, sessions and API keys: hashed at rest, checked, revocable."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from limner.errors import UsageError
from limner.store import AuthError, Conflict, Forbidden, NotFound


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
