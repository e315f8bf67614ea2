"""Request guards that sit in front of every route (pure ASGI, so WebSockets are covered too).

- Host check against the names the studio was bound to: a DNS-rebinding page (evil.example
  resolving to 127.0.0.1) sends ``Host: evil.example`` and is refused (OWASP, "DNS rebinding";
  the Jupyter server's ``allow_remote_access`` check follows the same rule).
- Origin check (CSRF) on state-changing requests and WebSocket handshakes: an ``Origin``
  header must name this studio; ``Origin: null`` (sandboxed frames, file://, some redirects) is
  refused; without an Origin, a browser's ``Sec-Fetch-Site: cross-site`` is refused. Clients
  that are not browsers (``limner.client``, curl with a bearer key) send neither.
- Body cap: ``Content-Length`` over the limit is 413 before the body is read, and a streamed
  body is counted as it arrives.
- Response headers: ``nosniff``, no framing, no referrer, and a CSP for the page.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import urlsplit

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def is_loopback(host: str) -> bool:
    """Whether a bind address only listens on this machine."""
    h = host.strip("[]")
    return h in LOOPBACK_NAMES or h.startswith("127.")


def allowed_host_names(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names (without port) a request may name: the bound one, loopback names when bound to
    loopback or all interfaces, and ``extra`` (LIMNER_STUDIO_ALLOWED_HOSTS)."""
    names = {bind_host.strip("[]").lower()}
    if is_loopback(bind_host) or bind_host in ("0.0.0.0", "::"):
        names.update(LOOPBACK_NAMES)
    names.update(e.strip().strip("[]").lower() for e in extra if e.strip())
    names.discard("0.0.0.0")
    names.discard("::")
    return frozenset(names)


def split_host(value: str) -> str:
    """``Host`` header value -> the name without port, lower case (IPv6 brackets removed)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class SecurityMiddleware:
    """Host, Origin and body-size guards plus security headers (see the module docstring)."""

    def __init__(self, app: Any, *, hosts: frozenset[str], max_body: int) -> None:
        self.app = app
        self.hosts = hosts
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = self.check(scope, headers)
        if problem is not None:
            status, detail = problem
            await _refuse(scope, send, status, detail)
            return
        if scope["type"] == "http":
            if int(headers.get("content-length", "0") or 0) > self.max_body:
                await _refuse(scope, send, 413, f"request body over the {self.max_body} byte limit")
                return
            await self._capped_call(scope, receive, _with_headers(send, scope.get("path", "")))
            return
        await self.app(scope, receive, send)

    def check(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, reason) when the request must be refused, else None."""
        host = split_host(headers.get("host", ""))
        if host not in self.hosts:
            return 421 if scope["type"] == "http" else 403, f"Host {host or '(none)'!r} is not this studio's"
        method = scope.get("method", "GET")
        if scope["type"] == "http" and method in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is not None:
            if origin.strip().lower() == "null":
                return 403, "Origin 'null' is refused on state-changing requests"
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or (parts.hostname or "").lower() not in self.hosts:
                return 403, f"cross-origin request from {origin!r} refused"
            return None
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            return 403, "cross-site request refused"
        return None

    async def _capped_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with the body counted as it streams in: past the cap the client gets 413
        at once, the app sees a disconnect, and whatever it answers then is dropped."""
        seen = 0
        over = False

        async def capped() -> dict[str, Any]:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    over = True
                    await _refuse(scope, send, 413, f"request body over the {self.max_body} byte limit")
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: dict[str, Any]) -> None:
            if not over:
                await send(message)

        try:
            await self.app(scope, capped, guarded)
        except Exception:
            if not over:
                raise


def _with_headers(send: Send, path: str) -> Send:
    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {k.lower() for k, _ in headers}
            for name, value in _security_headers(path):
                if name not in present:
                    headers.append((name, value))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


def _security_headers(path: str) -> list[tuple[bytes, bytes]]:
    out = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"no-referrer"), (b"cross-origin-opener-policy", b"same-origin")]
    if not path.startswith("/docs"):  # Swagger UI loads its assets from a CDN
        out.append((b"content-security-policy", CSP.encode()))
    return out


async def _refuse(scope: Scope, send: Send, status: int, detail: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
        return
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *_security_headers("")]})
    await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (sliding window, in memory).

    Used for failed logins per (client address, user name) and per address: a guesser is slowed
    to ``limit`` tries per window, an honest typo costs nothing.
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str, now: float | None = None) -> int:
        """Seconds until ``key`` may try again (0 = now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            hits = self._prune(key, now)
            if len(hits) < self.limit:
                return 0
            return max(1, int(hits[0] + self.window - now + 0.999))

    def hit(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._prune(key, now).append(now)

    def reset(self, key: str) -> None:
        with self._lock:
            self._hits.pop(key, None)

    def _prune(self, key: str, now: float) -> deque[float]:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(self._hits) > 10_000:  # bound memory under a spray of names
            for k in [k for k, v in self._hits.items() if not v][:5_000]:
                del self._hits[k]
        return hits
