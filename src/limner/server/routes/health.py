"""``GET /api/health``: answers without a login (load balancers, the page's first call)."""

from __future__ import annotations

from fastapi import APIRouter

from limner import __version__
from limner.server import accounts
from limner.server.deps import StudioDep
from limner.server.schemas import Health

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health", response_model=Health)
def health(studio: StudioDep) -> Health:
    """Liveness, version, and whether accounts are on (the page shows a login form then)."""
    return Health(ok=True, version=__version__, accounts=accounts.accounts_on(studio))
