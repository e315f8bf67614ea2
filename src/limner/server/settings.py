"""The studio's settings: one typed object, from command-line options and the environment.

Environment variables (all optional) follow the FastAPI template's ``core/config.py`` habit of
one settings object: ``LIMNER_STUDIO_ALLOWED_HOSTS`` (comma-separated extra Host names, e.g.
a reverse proxy's), ``LIMNER_STUDIO_QUEUE_LIMIT``, ``LIMNER_STUDIO_MAX_BODY_MB``,
``LIMNER_STUDIO_WORKERS`` (embedded worker threads; 0 = none, use ``limner worker``),
``LIMNER_STUDIO_DEVICE``, ``LIMNER_STUDIO_NPROC_PER_NODE`` (processes per training job of the
embedded workers), ``LIMNER_STUDIO_DATA_ROOTS`` (extra dataset folders, separated like
``PATH``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from limner.errors import UsageError


def default_home() -> Path:
    """``$LIMNER_HOME`` or ``~/.limner``: the studio's database, images, runs and uploads."""
    return Path(os.environ.get("LIMNER_HOME") or Path.home() / ".limner")


@dataclass
class StudioSettings:
    """Everything a studio process needs to know.

    Attributes:
        home: folder holding the images, thumbnails, runs, uploads, datasets and the SQLite file.
        db_url: SQLAlchemy URL; None = SQLite in ``home`` (``gallery.db``).
        host / port: where uvicorn listens (loopback by default).
        allowed_hosts: extra Host header names accepted besides the bound and loopback names.
        queue_limit: queued jobs past which a submit answers 429 with Retry-After.
        max_body: request body cap in bytes (uploads and dataset zips included).
        workers: worker threads run inside the studio (0 = only ``limner worker`` processes).
        device: where embedded workers run models (cpu, cuda, auto).
        nproc_per_node: processes per training job of the embedded workers (a count or ``auto``;
            above 1 training runs under torchrun, ``limner.jobs.torchrun``).
        login_limit / login_window: failed logins allowed per client and name per window (s).
        session_days: how long a login cookie lasts.
        secure_cookies: mark cookies Secure (behind HTTPS); default: when not on loopback.
        data_roots: folders besides ``home/datasets`` under which an admin may train from a
            folder path typed in the page (``limner studio --data-root DIR``).
    """

    home: Path = field(default_factory=default_home)
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    allowed_hosts: tuple[str, ...] = ()
    queue_limit: int = 100
    max_body: int = 64 * 1024 * 1024
    workers: int = 1
    device: str = "cpu"
    nproc_per_node: int | str = 1
    login_limit: int = 10
    login_window: float = 300.0
    session_days: int = 14
    secure_cookies: bool | None = None
    data_roots: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser()
        roots = []
        for root in self.data_roots:
            root = Path(root).expanduser()
            if not root.is_absolute():
                raise UsageError(f"{root} is not an absolute path", field="data_root")
            roots.append(root)
        self.data_roots = tuple(roots)
        if self.queue_limit < 1:
            raise UsageError("must be at least 1", field="queue_limit")
        if self.workers < 0:
            raise UsageError("must be 0 or more", field="workers")
        if str(self.nproc_per_node).strip().lower() != "auto":  # auto is counted where workers start
            from limner.jobs.torchrun import resolve_nproc

            self.nproc_per_node = resolve_nproc(self.nproc_per_node)

    @classmethod
    def from_env(cls, **overrides) -> "StudioSettings":
        """Settings from LIMNER_STUDIO_* variables, then ``overrides`` (non-None values win)."""
        env = os.environ
        values: dict = {}
        if env.get("LIMNER_STUDIO_ALLOWED_HOSTS"):
            values["allowed_hosts"] = tuple(h for h in env["LIMNER_STUDIO_ALLOWED_HOSTS"].split(",") if h.strip())
        for name, key, conv in (("queue_limit", "LIMNER_STUDIO_QUEUE_LIMIT", int),
                                ("workers", "LIMNER_STUDIO_WORKERS", int),
                                ("device", "LIMNER_STUDIO_DEVICE", str),
                                ("nproc_per_node", "LIMNER_STUDIO_NPROC_PER_NODE", str)):
            if env.get(key):
                try:
                    values[name] = conv(env[key])
                except ValueError:
                    raise UsageError(f"{key}={env[key]!r} is not a number", field=name) from None
        if env.get("LIMNER_STUDIO_DATA_ROOTS"):
            values["data_roots"] = tuple(Path(p) for p in env["LIMNER_STUDIO_DATA_ROOTS"].split(os.pathsep) if p.strip())
        if env.get("LIMNER_STUDIO_MAX_BODY_MB"):
            values["max_body"] = int(float(env["LIMNER_STUDIO_MAX_BODY_MB"]) * 1024 * 1024)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def dataset_roots(self) -> list[Path]:
        """Where folder-path datasets may live: ``home/datasets`` (created), then ``data_roots``."""
        return [self.folder("datasets"), *self.data_roots]

    def folder(self, name: str) -> Path:
        """A sub-folder of home (created): images, thumbs, runs, uploads, datasets, evals."""
        path = self.home / name
        path.mkdir(parents=True, exist_ok=True)
        return path
