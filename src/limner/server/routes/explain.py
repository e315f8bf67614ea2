"""``GET /api/runs/{name}/explain/{view}``: the "how it learns" views of a user's own run or a
bundled model (``limner.explain.compute_view``, the function behind ``limner explain``).

A view's numbers come back as JSON; its pictures and animations are written once into the
user's explain folder under the home (keyed by run, view, options and the run's newest
checkpoint) and served from there. Options that name files on the server (``image``,
``compare``) and the run options (``device``, ``data``, ``cache_dir``) are not accepted over
HTTP. Instead of ``image`` (the filmstrip's PNG) a request names a gallery image by
``image_id``: the server resolves its file through the store, so only an image the user may see
(their own, or one on a board shared with them) is replayed, and only with the run that made it
(its record's run id must be this run's).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from limner.errors import CheckpointError, UsageError
from limner.runs import newest_checkpoint_step
from limner.server import runs as run_folders
from limner.server.deps import StudioDep, UserDep
from limner.server.errors import ApiError

router = APIRouter(prefix="/api", tags=["explain"])

NOT_OVER_HTTP = {"image", "compare", "indices"}
IMAGE_ID = "image_id"  # stands for ``image`` over HTTP: a gallery image's id
FILE = re.compile(r"^[A-Za-z0-9_.-]+\.(png|gif)$")


def _options(view: Any, query: dict[str, str]) -> dict[str, Any]:
    defaults = view.defaults()
    out: dict[str, Any] = {}
    for key, raw in query.items():
        if key == IMAGE_ID and "image" in view.params:
            continue
        if key not in view.params or key in NOT_OVER_HTTP:
            allowed = ", ".join([p for p in view.params if p not in NOT_OVER_HTTP]
                                + ([IMAGE_ID] if "image" in view.params else []))
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

    from limner.store.errors import NotFound

    try:
        folder, _ = run_folders.resolve_model(studio.settings.home, user.id, name)
    except NotFound:
        raise ApiError(404, f"no run {name!r}") from None
    if view not in VIEWS:
        raise UsageError(f"unknown view {view!r}; views: {', '.join(VIEWS)}", field="view")
    query = dict(request.query_params)
    options = _options(VIEWS[view], query)
    image_id = _image_id(query.get(IMAGE_ID)) if IMAGE_ID in query else None
    # the folder's run id too: a name can stand for a bundled model, then for a run of yours
    key_parts = [view, options, newest_checkpoint_step(folder), image_id, _run_id(folder)]
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = _explain_dir(studio, user, name) / f"{view}-{key}"
    data_file = out / f"{view}.json"
    if not data_file.is_file():
        extra = {"image": str(_image_of_run(studio, user, folder, name, image_id))} if image_id is not None else {}
        result = compute_view(folder, view, device="cpu", **options, **extra)
        if image_id is not None:  # the image's server path never leaves the server
            result.data["image"] = f"gallery image {image_id}"
            result.data["image_id"] = image_id
        result.write(out)
    elif image_id is not None:
        studio.store.get_image(user, image_id)  # a cached replay is still only for who may see the image
    data = json.loads(data_file.read_text(encoding="utf-8"))
    if image_id is not None:
        options = {**options, IMAGE_ID: image_id}
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


def _run_id(folder: Path) -> str | None:
    from limner.runs import run_summary

    try:
        return run_summary(folder)["run_id"]
    except CheckpointError:
        return None


def _image_id(raw: str | None) -> int:
    try:
        value = int(raw or "")
    except ValueError:
        raise UsageError(f"expected an image id, got {raw!r}", field=IMAGE_ID) from None
    if not 1 <= value <= 2**53:
        raise UsageError(f"expected an image id, got {raw!r}", field=IMAGE_ID)
    return value


def _image_of_run(studio, user, folder: Path, name: str, image_id: int) -> Path:
    """The PNG of a gallery image the user may see (store: their own or shared; 404 otherwise),
    made by the run in ``folder`` (422 naming image_id when another run made it)."""
    from limner.runs import run_summary

    image = studio.store.get_image(user, image_id)
    run_id = run_summary(folder)["run_id"]
    if image.model != run_id:
        raise UsageError(f"image {image_id} was made by another model (run id {image.model}), not {name!r} "
                         f"(run id {run_id})", field=IMAGE_ID)
    return studio.store.image_file(user, image_id)


def _explain_dir(studio, user, name: str) -> Path:
    run_folders.check_name(name)
    path = run_folders.user_folder(studio.settings.home, "explain", user.id) / name
    path.mkdir(parents=True, exist_ok=True)
    return path
