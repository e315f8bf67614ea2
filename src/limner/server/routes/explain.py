"""``GET /api/runs/{name}/explain/{view}``: the "how it learns" views of a user's own run
(``limner.explain.compute_view``, the function behind ``limner explain``).

A view's numbers come back as JSON; its pictures and animations are written once into the
user's explain folder under the home (keyed by run, view, options and the run's newest
checkpoint) and served from there. Options that name files on the server (``image``,
``compare``) and the run options (``device``, ``data``, ``cache_dir``) are not accepted over
HTTP.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from limner.errors import UsageError
from limner.runs import newest_checkpoint_step
from limner.server import runs as run_folders
from limner.server.deps import StudioDep, UserDep
from limner.server.errors import ApiError

router = APIRouter(prefix="/api", tags=["explain"])

NOT_OVER_HTTP = {"image", "compare", "indices"}
FILE = re.compile(r"^[A-Za-z0-9_.-]+\.(png|gif)$")


def _options(view: Any, query: dict[str, str]) -> dict[str, Any]:
    defaults = view.defaults()
    out: dict[str, Any] = {}
    for key, raw in query.items():
        if key not in view.params or key in NOT_OVER_HTTP:
            allowed = ", ".join(p for p in view.params if p not in NOT_OVER_HTTP)
            raise UsageError(f"view {view.name!r} takes no option {key!r} over HTTP (options: {allowed})", field=key)
        out[key] = _convert(key, raw, defaults.get(key))
    return out


def _convert(key: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false"):
                raise ValueError
            return raw.lower() in ("1", "true")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if default is None and re.fullmatch(r"-?\d{1,12}", raw):
            return int(raw)
    except ValueError:
        raise UsageError(f"expected a {type(default).__name__}, got {raw!r}", field=key) from None
    if len(raw) > 500:
        raise UsageError("at most 500 characters", field=key)
    return raw


@router.get("/runs/{name}/explain/{view}", response_model=dict[str, Any])
def explain(name: str, view: str, request: Request, user: UserDep, studio: StudioDep) -> dict[str, Any]:
    """Compute (or reuse) a view: ``{view, data, images: {name: url}, animations: {name: url}}``."""
    from limner.explain import VIEWS, compute_view

    folder = run_folders.run_dir(studio.settings.home, user.id, name)
    if not (folder / "config.json").is_file():
        raise ApiError(404, f"no run {name!r}")
    if view not in VIEWS:
        raise UsageError(f"unknown view {view!r}; views: {', '.join(VIEWS)}", field="view")
    options = _options(VIEWS[view], dict(request.query_params))
    key = hashlib.sha256(json.dumps([view, options, newest_checkpoint_step(folder)], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    out = _explain_dir(studio, user, name) / f"{view}-{key}"
    data_file = out / f"{view}.json"
    if not data_file.is_file():
        result = compute_view(folder, view, device="cpu", **options)
        result.write(out)
    data = json.loads(data_file.read_text(encoding="utf-8"))
    base = f"/api/runs/{name}/explain/{view}/files/{out.name}"
    files = sorted(p.name for p in out.iterdir() if FILE.match(p.name))
    return {"view": view, "options": options, "data": data,
            "images": {Path(f).stem: f"{base}/{f}" for f in files if f.endswith(".png")},
            "animations": {Path(f).stem: f"{base}/{f}" for f in files if f.endswith(".gif")}}


@router.get("/runs/{name}/explain/{view}/files/{key}/{file}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}, "image/gif": {}}}})
def explain_file(name: str, view: str, key: str, file: str, user: UserDep, studio: StudioDep) -> FileResponse:
    if not FILE.match(file) or not re.fullmatch(r"[A-Za-z0-9_-]{1,80}", key):
        raise ApiError(404, "no such file")
    root = _explain_dir(studio, user, name)
    path = (root / key / file).resolve()
    if root.resolve() not in path.parents or not path.is_file():
        raise ApiError(404, "no such file")
    media = "image/gif" if file.endswith(".gif") else "image/png"
    return FileResponse(path, media_type=media, headers={"Content-Security-Policy": "default-src 'none'; sandbox"})


def _explain_dir(studio, user, name: str) -> Path:
    run_folders.check_name(name)
    path = run_folders.user_folder(studio.settings.home, "explain", user.id) / name
    path.mkdir(parents=True, exist_ok=True)
    return path
