"""Who a request acts as: thin calls into the store's accounts (users, sessions, API keys).

"Accounts on" means some user has a password (``Store.has_accounts``); the answer is cached for a
couple of seconds per studio process, so a user created by ``limner user add`` or by another
studio process is noticed quickly without a query per request.
"""

from __future__ import annotations

import time
from typing import Any

ACCOUNTS_TTL = 2.0


def accounts_on(studio: Any, *, fresh: bool = False) -> bool:
    cached = getattr(studio, "_accounts_on", None)
    now = time.monotonic()
    if fresh or cached is None or (not cached[0] and now - cached[1] > ACCOUNTS_TTL):
        cached = (bool(studio.store.has_accounts()), now)  # once on, accounts stay on
        studio._accounts_on = cached
    return cached[0]


def forget(studio: Any) -> None:
    """Drop the cached answer (after creating a user in this process)."""
    studio._accounts_on = None


def ensure_local_user(studio: Any) -> Any:
    studio.local_user = studio.store.ensure_local_user()
    return studio.local_user


def local_user(studio: Any) -> Any:
    return studio.local_user or ensure_local_user(studio)


def user_for_credential(studio: Any, kind: str, value: str) -> Any | None:
    """The user of a session cookie or API key; None when it is unknown, expired or revoked.
    Keys the implicit local admin made while accounts were off stop working once they are on
    (they were made without a login; a studio opened to the network must not honour them)."""
    from limner.store.accounts import LOCAL_USER
    from limner.store.errors import AuthError

    try:
        user = studio.store.session_user(value) if kind == "session" else studio.store.api_key_user(value)
    except AuthError:
        return None
    if user.username == LOCAL_USER and accounts_on(studio):
        return None
    return user


def add_user(store: Any, username: str, password: str, role: str = "user",
             home: Any = None) -> tuple[Any, Any]:
    """Create an account (``limner user add``, ``POST /api/users``); returns (user, adoption):
    the first admin takes over what the implicit local user owned, and ``adoption``
    (``limner.store.accounts.Adoption``) says how much moved; None for every other account.
    With ``home``, the local user's run folders, datasets, evaluations and explain files under
    it move to the first admin as well (``limner.server.runs.hand_over``)."""
    user, adopted = store.create_user_adopting(username, password, role)
    if adopted is not None and home is not None:
        _hand_over_local(store, home)
    return user, adopted


def finish_hand_over(studio: Any) -> list[str]:
    """At start-up: with accounts on, move what is still a real folder of the local user under
    the home (runs, datasets, ...) to the first admin. ``add_user`` moves them right after the
    transaction that creates that admin; a process stopped in between leaves them behind, and
    this finishes the move. Returns the kinds moved."""
    if not accounts_on(studio, fresh=True):
        return []
    return _hand_over_local(studio.store, studio.settings.home)


def _hand_over_local(store: Any, home: Any) -> list[str]:
    """The local user's folders under ``home`` to the first admin (the one who adopted the
    rest of what the local user owned); [] when either does not exist."""
    from limner.server.runs import hand_over
    from limner.store.accounts import LOCAL_USER
    from limner.store.errors import NotFound

    admin = store.first_admin()
    try:
        local = store.user_by_name(LOCAL_USER)
    except NotFound:
        return []
    return [] if admin is None else hand_over(home, local.id, admin.id)
