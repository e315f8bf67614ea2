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
    if adopted is not None and adopted.from_user_id is not None and home is not None:
        from limner.server.runs import hand_over

        hand_over(home, adopted.from_user_id, user.id)
    return user, adopted


def finish_hand_over(studio: Any) -> list[str]:
    """At start-up: with accounts on, move what is still a real folder of the local user under
    the home (runs, datasets, ...) to the first admin. ``add_user`` moves them right after the
    transaction that creates that admin; a process stopped in between leaves them behind, and
    this finishes the move. Returns the kinds moved."""
    from limner.server.runs import hand_over

    if not accounts_on(studio, fresh=True):
        return []
    admin = studio.store.first_admin()
    local = local_user(studio)
    if admin is None or admin.id == local.id:
        return []
    return hand_over(studio.settings.home, local.id, admin.id)
