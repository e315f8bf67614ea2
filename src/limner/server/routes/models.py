"""``GET /api/models``: what a user can generate from: the bundled models and their own runs,
each with the options and capabilities its family declares (``limner.models.declaration``)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter

from limner.errors import CheckpointError
from limner.server import runs as run_folders
from limner.server.deps import StudioDep, UserDep
from limner.server.schemas import FamilyOut, ModelOut, TrainBody

router = APIRouter(prefix="/api", tags=["models"])
log = logging.getLogger(__name__)


@router.get("/models", response_model=list[ModelOut])
def list_models(user: UserDep, studio: StudioDep) -> list[dict[str, Any]]:
    """Bundled models first, then your runs that have a checkpoint."""
    out = []
    for name, path in run_folders.bundled_models().items():
        try:
            out.append({**run_folders.describe(path, name, "bundled"),
                        "description": run_folders.bundled_description(name)})
        except CheckpointError:
            log.warning("bundled model %s has no readable config; not listed", name)
    own = [r for r in run_folders.list_runs(studio.settings.home, user.id) if r["step"] is not None]
    names = {m["name"] for m in out}
    out.extend(r for r in own if r["name"] not in names)
    return out


@router.get("/families", response_model=list[FamilyOut])
def list_families(user: UserDep) -> list[dict[str, Any]]:
    """Every family ``POST /api/train`` can build, from its declaration
    (``limner.models.registry.declarations``): its presets, the condition kinds it trains on,
    the other runs it needs (``needs``: give one of your runs of that family, trained with the
    condition the need names, as ``needs.OPTION`` when training) and its generation options."""
    from limner.conditioning import CondKind
    from limner.models.registry import DEFAULT_FAMILY, declarations

    conditions = [c.value for c in CondKind]
    out = []
    for name, decl in declarations().items():
        data = decl.to_json()
        out.append({"name": name, "summary": data["summary"], "default": name == DEFAULT_FAMILY,
                    "presets": data["presets"], "default_preset": TrainBody.model_fields["preset"].default,
                    "conditions": conditions, "needs": [_need(n) for n in decl.needs],
                    "options": data["options"], "capabilities": data["capabilities"]})
    return out


def _need(need: Any) -> dict[str, Any]:
    return {**need.to_json(), "cond": need_condition(need)}


def need_condition(need: Any) -> str | None:
    """The condition a declared run need asks of that run (``--cond`` in its ``train_args``)."""
    args = list(need.train_args)
    return args[args.index("--cond") + 1] if "--cond" in args[:-1] else None
