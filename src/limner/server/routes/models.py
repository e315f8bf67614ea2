"""``GET /api/models``: what a user can generate from: the bundled models and their own runs,
each with the options and capabilities its family declares (``limner.models.declaration``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from limner.server import runs as run_folders
from limner.server.deps import StudioDep, UserDep
from limner.server.schemas import ModelOut

router = APIRouter(prefix="/api", tags=["models"])


@router.get("/models", response_model=list[ModelOut])
def list_models(user: UserDep, studio: StudioDep) -> list[dict[str, Any]]:
    """Bundled models first, then your runs that have a checkpoint."""
    out = [{**run_folders.describe(path, name, "bundled"), "description": run_folders.bundled_description(name)}
           for name, path in run_folders.bundled_models().items()]
    own = [r for r in run_folders.list_runs(studio.settings.home, user.id) if r["step"] is not None]
    names = {m["name"] for m in out}
    out.extend(r for r in own if r["name"] not in names)
    return out
