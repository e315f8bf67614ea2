"""The store's exceptions. The server maps them to HTTP statuses: ``NotFound`` 404 (also for
another user's object, so ids are not probed), ``Forbidden`` 403, ``Conflict`` 409,
``IdempotencyMismatch`` 422, ``QueueFull`` 429 with ``Retry-After``, ``AuthError`` 401."""

from __future__ import annotations

from limner.errors import LimnerError, UsageError
from limner.store.db import StoreError

__all__ = ["StoreError", "NotFound", "Forbidden", "Conflict", "IdempotencyMismatch", "QueueFull",
           "AuthError", "SearchUnavailable", "UsageError"]


class NotFound(LimnerError):
    """No such object, or not one the acting user may see."""


class Forbidden(LimnerError):
    """The acting user may see the object but not change it."""


class Conflict(LimnerError):
    """The request clashes with the current state (e.g. a username already taken)."""


class IdempotencyMismatch(LimnerError):
    """An idempotency key was reused with a different request body."""


class AuthError(LimnerError):
    """Wrong username/password, unknown or revoked key, expired session."""


class SearchUnavailable(LimnerError):
    """Semantic or hybrid search was asked for but no prompt embedder is configured."""


class QueueFull(LimnerError):
    """The job queue is at its limit; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after
