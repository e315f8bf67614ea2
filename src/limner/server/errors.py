"""Library and store errors -> HTTP answers, one place.

Every error body is ``{"detail": "...", "field": "<name>" | null}``. A usage error from the
library (the same check the CLI runs) is 422 naming its field; another user's object is 404 like
a missing one (ids cannot be probed); a full queue is 429 with ``Retry-After``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from limner.errors import CheckpointError, DataError, ImageDecodeError, LimnerError, UsageError

log = logging.getLogger(__name__)


def error_response(status: int, detail: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field}, status_code=status, headers=headers)


class ApiError(StarletteHTTPException):
    """An HTTP error with the field it is about (raised by routes)."""

    def __init__(self, status: int, detail: str, field: str | None = None, headers: dict | None = None):
        super().__init__(status, detail, headers)
        self.field = field


def usage_field(exc: UsageError) -> tuple[str, str | None]:
    """(message, field) of a usage error; the field attribute when the library set one."""
    field = getattr(exc, "field", None)
    reason = getattr(exc, "reason", None) or str(exc)
    return (reason if field else str(exc)), field


def _store_errors():
    try:
        from limner.store import errors
    except ImportError:  # pragma: no cover - the studio extra is part of the server's install
        return None
    return errors


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    store_errors = _store_errors()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "field", None), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or None
        return error_response(422, str(first.get("msg", "invalid request")), field)

    @app.exception_handler(UsageError)
    async def usage_error(request: Request, exc: UsageError):
        detail, field = usage_field(exc)
        return error_response(422, detail, field)

    @app.exception_handler(ImageDecodeError)
    async def decode_error(request: Request, exc: ImageDecodeError):
        return error_response(422, f"not a usable image: {exc.reason}", "file")

    if store_errors is not None:
        statuses = {store_errors.NotFound: 404, store_errors.Forbidden: 403, store_errors.Conflict: 409,
                    store_errors.IdempotencyMismatch: 422, store_errors.AuthError: 401,
                    store_errors.SearchUnavailable: 422}

        @app.exception_handler(store_errors.QueueFull)
        async def queue_full(request: Request, exc):
            return error_response(429, str(exc), None, {"Retry-After": str(int(exc.retry_after))})

        @app.exception_handler(store_errors.StoreError)
        async def store_down(request: Request, exc):
            log.error("store error: %s", exc)
            return error_response(503, f"the gallery database is unavailable: {exc}")

        for cls, status in statuses.items():
            app.add_exception_handler(cls, _fixed(status, "mode" if cls is store_errors.SearchUnavailable else None))

    @app.exception_handler(CheckpointError)
    async def checkpoint_error(request: Request, exc: CheckpointError):
        return error_response(409, str(exc), "model")

    @app.exception_handler(DataError)
    async def data_error(request: Request, exc: DataError):
        return error_response(422, str(exc), "data")

    @app.exception_handler(LimnerError)
    async def limner_error(request: Request, exc: LimnerError):
        return error_response(400, str(exc))


def _fixed(status: int, field: str | None):
    async def handler(request: Request, exc: Exception):
        return error_response(status, str(exc), field)

    return handler
