"""Plain records the store returns (frozen dataclasses; the server turns them into JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

Role = Literal["admin", "user"]
BoardRole = Literal["viewer", "editor"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
SearchMode = Literal["hybrid", "text", "semantic"]


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: Role
    created: float
    disabled: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class ApiKey:
    id: int
    user_id: int
    name: str
    prefix: str
    created: float
    last_used: float | None
    revoked: float | None


@dataclass(frozen=True)
class Image:
    """One gallery image; ``path`` and ``thumb_path`` are relative to the studio home."""

    id: int
    owner_id: int
    path: str
    thumb_path: str | None
    created: float
    content_hash: str
    rating: int | None
    tags: list[str]
    parent_id: int | None
    deleted_at: float | None
    missing_at: float | None
    scores: dict[str, Any] | None
    model: str | None
    family: str | None
    seed: int | None
    sampler: str | None
    steps: int | None
    cfg: float | None
    width: int | None
    height: int | None
    prompt: str | None
    negative: str | None
    record: dict[str, Any] | None = None  # only filled by get_image (listings skip it)
    score: float | None = None  # search relevance when the listing was ranked


@dataclass(frozen=True)
class Board:
    id: int
    owner_id: int
    name: str
    created: float
    role: Literal["owner", "viewer", "editor", "admin"] = "owner"  # the acting user's role


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    payload: dict[str, Any]
    owner_id: int
    state: JobState
    priority: int
    idempotency_key: str | None
    attempts: int
    cancel_requested: bool
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    created: float
    started: float | None
    finished: float | None
    lease_owner: str | None = None
    lease_expires: float | None = None


@dataclass(frozen=True)
class Lease:
    """A claimed job: ``token`` must accompany heartbeat/complete/fail for this claim."""

    job: Job
    worker_id: str
    token: str
    expires: float


class Beat(str, Enum):
    """What a heartbeat found (``Store.heartbeat``); the worker acts differently on each.

    - ``OK``: the lease was extended; keep going.
    - ``LEASE_LOST``: this claim no longer holds the job (its lease expired and the job was
      queued again, perhaps claimed by another worker, or it was finished): stop at once and
      write nothing for it: no images, no final state.
    - ``CANCEL_REQUESTED``: the lease was extended, but the owner cancelled the job: stop at the
      next step and record it with ``finish_cancelled``.

    Only ``OK`` is truthy, so ``if not beat`` still reads "stop"; compare with ``is`` to know why.
    """

    OK = "ok"
    LEASE_LOST = "lease_lost"
    CANCEL_REQUESTED = "cancel_requested"

    def __bool__(self) -> bool:
        return self is Beat.OK


@dataclass(frozen=True)
class Page:
    items: list[Image]
    next_cursor: str | None
    total_hint: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
