"""Users, login sessions and API keys (the ``users``, ``sessions`` and ``api_keys`` tables).

A studio without accounts acts as the implicit ``local`` admin, which cannot log in. Creating
the first admin with a password turns accounts on; in the same transaction everything ``local``
owns (images, boards and board memberships, jobs) moves to that admin, so a user who turns
accounts on finds their gallery, boards and jobs under their new login instead of under an
account nobody can use. It happens once: later admins adopt nothing.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import sqlalchemy as sa

from limner.errors import UsageError
from limner.store import auth, db
from limner.store.errors import AuthError, Conflict, Forbidden, NotFound
from limner.store.models import ApiKey, Role, User
from limner.store.tables import api_keys, board_images, board_members, boards, images, jobs, sessions, users

log = logging.getLogger(__name__)

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SESSION_SECONDS = 14 * 24 * 3600
LAST_USED_EVERY_S = 60.0  # resolution of an API key's last_used time
LOCAL_USER = "local"  # the implicit admin of a loopback studio with no accounts
_ACCOUNTS_LOCK = 7254192  # pg advisory lock id serialising the first admin's creation


@dataclass(frozen=True)
class Adoption:
    """What moved from the implicit local user to the first admin when accounts were turned on."""

    images: int = 0
    boards: int = 0
    memberships: int = 0
    jobs: int = 0

    @property
    def total(self) -> int:
        return self.images + self.boards + self.memberships + self.jobs


def _user(row: sa.Row) -> User:
    return User(id=row.id, username=row.username, role=row.role, created=row.created,
                disabled=bool(row.disabled))


class AccountsPart:
    """Mixed into ``Store``: users, sessions, API keys."""

    # ---- users ---------------------------------------------------------------------------

    def create_user(self, username: str, password: str | None, role: Role = "user") -> User:
        """A new user; ``password`` None makes an account that cannot log in (the local user).
        The first admin with a password adopts what the local user owns (see the module)."""
        return self.create_user_adopting(username, password, role)[0]

    def create_user_adopting(self, username: str, password: str | None,
                             role: Role = "user") -> tuple[User, Adoption | None]:
        """``create_user``, also returning what the new user adopted from the implicit local
        user: an ``Adoption`` when this is the first admin with a password, else None."""
        if not USERNAME_RE.match(username or ""):
            raise UsageError("username: 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
        if role not in ("admin", "user"):
            raise UsageError(f"role: must be 'admin' or 'user', not {role!r}")
        if password is not None and len(password) < 8:
            raise UsageError("password: at least 8 characters")
        hashed = auth.hash_password(password) if password is not None else None
        with self._write() as conn:
            if conn.dialect.name == "postgresql" and hashed is not None and role == "admin":
                # Two first admins created at once: the second waits, then sees the first.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ACCOUNTS_LOCK})
            if conn.execute(sa.select(users.c.id).where(users.c.username == username)).first():
                raise Conflict(f"user {username!r} already exists")
            first_admin = hashed is not None and role == "admin" and conn.execute(
                sa.select(users.c.id).where(users.c.role == "admin", users.c.password_hash.is_not(None)).limit(1)
            ).first() is None
            uid = conn.execute(users.insert().values(
                username=username, password_hash=hashed, role=role, created=db.now(conn),
            ).returning(users.c.id)).scalar_one()
            adopted = _adopt_local(conn, uid) if first_admin else None
            user = _user(conn.execute(sa.select(users).where(users.c.id == uid)).one())
        if adopted is not None and adopted.total:
            log.warning("accounts turned on: %d images, %d boards, %d board memberships and %d jobs of the "
                        "implicit %r user now belong to the first admin %r", adopted.images, adopted.boards,
                        adopted.memberships, adopted.jobs, LOCAL_USER, username)
        return user, adopted

    def ensure_local_user(self) -> User:
        """The implicit local admin (created on first use) for a studio without accounts."""
        try:
            return self.user_by_name(LOCAL_USER)
        except NotFound:
            try:
                return self.create_user(LOCAL_USER, None, "admin")
            except Conflict:  # another process created it first
                return self.user_by_name(LOCAL_USER)

    def has_accounts(self) -> bool:
        """True once any user with a password exists (accounts are "on")."""
        with self._read() as conn:
            return conn.execute(sa.select(users.c.id).where(users.c.password_hash.is_not(None)).limit(1)).first() is not None

    def first_admin(self) -> User | None:
        """The first admin created with a password (the one who adopted the local user's
        things), or None while accounts are off."""
        with self._read() as conn:
            row = conn.execute(sa.select(users).where(users.c.role == "admin", users.c.password_hash.is_not(None))
                               .order_by(users.c.id).limit(1)).first()
        return None if row is None else _user(row)

    def user_by_name(self, username: str) -> User:
        with self._read() as conn:
            row = conn.execute(sa.select(users).where(users.c.username == username)).first()
        if row is None:
            raise NotFound(f"no user {username!r}")
        return _user(row)

    def user_by_id(self, user_id: int) -> User:
        with self._read() as conn:
            row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
        if row is None:
            raise NotFound(f"no user {user_id}")
        return _user(row)

    def list_users(self, actor: User) -> list[User]:
        _require_admin(actor)
        with self._read() as conn:
            return [_user(r) for r in conn.execute(sa.select(users).order_by(users.c.id))]

    def set_password(self, actor: User, user_id: int, password: str) -> None:
        """Change a password (self or admin) and end that user's sessions."""
        if actor.id != user_id:
            _require_admin(actor)
        if len(password) < 8:
            raise UsageError("password: at least 8 characters")
        with self._write() as conn:
            n = conn.execute(users.update().where(users.c.id == user_id)
                             .values(password_hash=auth.hash_password(password))).rowcount
            if not n:
                raise NotFound(f"no user {user_id}")
            conn.execute(sessions.delete().where(sessions.c.user_id == user_id))

    def set_disabled(self, actor: User, user_id: int, disabled: bool) -> None:
        _require_admin(actor)
        with self._write() as conn:
            conn.execute(users.update().where(users.c.id == user_id).values(disabled=disabled))
            if disabled:
                conn.execute(sessions.delete().where(sessions.c.user_id == user_id))
                conn.execute(api_keys.update().where(api_keys.c.user_id == user_id,
                                                     api_keys.c.revoked.is_(None))
                             .values(revoked=db.now(conn)))

    def authenticate(self, username: str, password: str) -> User:
        """The user whose password this is, or ``AuthError`` (same message, similar time, for
        an unknown user and a wrong password)."""
        with self._read() as conn:
            row = conn.execute(sa.select(users).where(users.c.username == username)).first()
        stored = row.password_hash if row is not None else None
        if not auth.verify_password(stored, password) or row is None or row.disabled:
            raise AuthError("wrong username or password")
        if auth.needs_rehash(stored):
            with self._write() as conn:
                conn.execute(users.update().where(users.c.id == row.id)
                             .values(password_hash=auth.hash_password(password)))
        return _user(row)

    # ---- sessions ------------------------------------------------------------------------

    def create_session(self, user: User, seconds: int = SESSION_SECONDS) -> str:
        """A new session token for ``user`` (the cookie value; only its hash is stored)."""
        token = auth.new_token()
        with self._write() as conn:
            t = db.now(conn)
            conn.execute(sessions.insert().values(token_hash=auth.token_hash(token), user_id=user.id,
                                                  created=t, expires=t + seconds, last_seen=t))
        return token

    def session_user(self, token: str) -> User:
        """The user of a live session, or ``AuthError``."""
        with self._read() as conn:
            t = db.now(conn)
            row = conn.execute(
                sa.select(users).join(sessions, sessions.c.user_id == users.c.id)
                .where(sessions.c.token_hash == auth.token_hash(token), sessions.c.expires > t)
            ).first()
        if row is None or row.disabled:
            raise AuthError("not logged in (session expired or unknown)")
        return _user(row)

    def end_session(self, token: str) -> None:
        with self._write() as conn:
            conn.execute(sessions.delete().where(sessions.c.token_hash == auth.token_hash(token)))

    def purge_sessions(self) -> int:
        """Delete expired sessions; returns how many."""
        with self._write() as conn:
            return conn.execute(sessions.delete().where(sessions.c.expires <= db.now(conn))).rowcount

    # ---- API keys ------------------------------------------------------------------------

    def create_api_key(self, user: User, name: str) -> tuple[ApiKey, str]:
        """A new key for ``user``: the record and the key itself (shown once, stored hashed)."""
        name = (name or "").strip()
        if not name or len(name) > 128:
            raise UsageError("name: 1-128 characters")
        key = auth.new_api_key()
        with self._write() as conn:
            kid = conn.execute(api_keys.insert().values(
                user_id=user.id, name=name, key_hash=auth.token_hash(key), prefix=key[:10],
                created=db.now(conn)).returning(api_keys.c.id)).scalar_one()
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == kid)).one()
        return _key(row), key

    def list_api_keys(self, user: User) -> list[ApiKey]:
        with self._read() as conn:
            rows = conn.execute(sa.select(api_keys).where(api_keys.c.user_id == user.id)
                                .order_by(api_keys.c.id))
            return [_key(r) for r in rows]

    def revoke_api_key(self, user: User, key_id: int) -> None:
        """Revoke one of ``user``'s keys (idempotent; another user's key is NotFound)."""
        with self._write() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
            if row is None or (row.user_id != user.id and not user.is_admin):
                raise NotFound(f"no API key {key_id}")
            if row.revoked is None:
                conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(revoked=db.now(conn)))

    def api_key_user(self, key: str) -> User:
        """The user a live API key belongs to, or ``AuthError``."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(users, api_keys.c.id.label("key_id"), api_keys.c.last_used)
                .join(api_keys, api_keys.c.user_id == users.c.id)
                .where(api_keys.c.key_hash == auth.token_hash(key), api_keys.c.revoked.is_(None))
            ).first()
        if row is None or row.disabled:
            raise AuthError("unknown or revoked API key")
        if row.last_used is None or time.time() - row.last_used > LAST_USED_EVERY_S:
            # Not on every request: on SQLite each update takes the database's write lock.
            with self._write() as conn:
                conn.execute(api_keys.update().where(api_keys.c.id == row.key_id).values(last_used=db.now(conn)))
        return _user(row)


def _adopt_local(conn: sa.Connection, admin_id: int) -> Adoption:
    """Move the implicit local user's images, boards, board memberships and jobs to
    ``admin_id`` (a user created in this transaction, so it owns nothing that could clash)."""
    local = conn.execute(sa.select(users.c.id).where(users.c.username == LOCAL_USER)).scalar()
    if local is None:
        return Adoption()

    def move(table: sa.Table, column: str = "owner_id") -> int:
        return conn.execute(table.update().where(table.c[column] == local).values({column: admin_id})).rowcount

    moved = Adoption(images=move(images), boards=move(boards), memberships=move(board_members, "user_id"),
                     jobs=move(jobs))
    move(board_images, "added_by")
    return moved


def _key(row: sa.Row) -> ApiKey:
    return ApiKey(id=row.id, user_id=row.user_id, name=row.name, prefix=row.prefix,
                  created=row.created, last_used=row.last_used, revoked=row.revoked)


def _require_admin(actor: User) -> None:
    if not actor.is_admin:
        raise Forbidden("only an admin can do this")
