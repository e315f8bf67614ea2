"""What routes get injected: the studio (settings, store, event hub) and the acting user, as
``Annotated`` aliases (the FastAPI template's ``api/deps.py`` habit).

Authentication, in order: the ``limner_session`` cookie (the page), ``Authorization: Bearer``
with an API key (scripts, ``limner.client``), ``?key=`` on the WebSocket only (browsers cannot
set headers there; the page uses its cookie). With no accounts set up (no user has a password)
on a loopback studio, every request acts as the implicit local admin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from limner.jobs.events import EventHub
from limner.server.errors import ApiError
from limner.server.security import RateLimiter
from limner.server.settings import StudioSettings

SESSION_COOKIE = "limner_session"


@dataclass
class Studio:
    """One studio process: its settings, store, event hub, workers and login limiter."""

    settings: StudioSettings
    store: Any
    hub: EventHub = field(default_factory=EventHub)
    workers: list[Any] = field(default_factory=list)
    login_limiter: RateLimiter | None = None
    local_user: Any = None  # the implicit admin while no account has a password
    relay: Any = None  # the store relay (limner.server.relay), started with the app

    def __post_init__(self) -> None:
        if self.login_limiter is None:
            self.login_limiter = RateLimiter(self.settings.login_limit, self.settings.login_window)


def get_studio(conn: HTTPConnection) -> Studio:
    return conn.app.state.studio


StudioDep = Annotated[Studio, Depends(get_studio)]


def _credential(conn: HTTPConnection) -> tuple[str, str] | None:
    auth = conn.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return "key", auth[7:].strip()
    cookie = conn.cookies.get(SESSION_COOKIE)
    if cookie:
        return "session", cookie
    if conn.scope["type"] == "websocket" and conn.query_params.get("key"):
        return "key", conn.query_params["key"]
    return None


def authenticate(conn: HTTPConnection, studio: Studio) -> Any | None:
    """The user a request acts as, or None (no or bad credentials with accounts on)."""
    from limner.server import accounts

    cred = _credential(conn)
    if cred is not None:
        user = accounts.user_for_credential(studio, *cred)
        if user is not None:
            return user
        if cred[0] == "key":
            return None  # a wrong key never falls back to the implicit user
    if not accounts.accounts_on(studio):
        return accounts.local_user(studio)
    return None


def current_user(request: Request, studio: StudioDep) -> Any:
    user = authenticate(request, studio)
    if user is None:
        raise ApiError(401, "log in first (POST /api/auth/login) or send an API key (Authorization: Bearer)",
                       headers={"WWW-Authenticate": "Bearer"})
    request.state.user = user
    return user


UserDep = Annotated[Any, Depends(current_user)]


def admin_user(user: UserDep) -> Any:
    if user.role != "admin":
        raise ApiError(403, "only an admin may do this")
    return user


AdminDep = Annotated[Any, Depends(admin_user)]
