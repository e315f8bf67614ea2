"""The gallery: search, one image, its file and thumbnail, rating and tags, soft delete,
regeneration (a job whose new image links to the old one), and uploads.

Files are served only through the store's contained paths (real path inside the home). Gallery
PNGs went through the one decode function when they were added and are sent as ``image/png``
with ``nosniff`` and a sandboxing CSP, so a crafted file is never rendered as a page; uploads are
decoded and re-encoded as PNG before they are kept.
"""

from __future__ import annotations

import io
import re
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, UploadFile
from fastapi.responses import FileResponse

from limner.jobs.views import image_summary
from limner.server.deps import StudioDep, UserDep
from limner.server.errors import ApiError
from limner.server.schemas import Id, ImageDetail, ImageOut, ImagePage, ImagePatch, JobAccepted, UploadOut

router = APIRouter(prefix="/api", tags=["images"])

FILE_HEADERS = {"Content-Security-Policy": "default-src 'none'; sandbox", "Cache-Control": "private, max-age=3600"}
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


def image_out(image: Any) -> dict[str, Any]:
    out = image_summary(image)
    out["score"] = getattr(image, "score", None)
    return out


@router.get("/images", response_model=ImagePage)
def search_images(
    user: UserDep, studio: StudioDep,
    q: Annotated[str | None, Query(max_length=1000)] = None,
    mode: Literal["hybrid", "text", "semantic"] | None = None,
    model: Annotated[str | None, Query(max_length=256)] = None,
    family: Annotated[str | None, Query(max_length=64)] = None,
    seed: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    sampler: Annotated[str | None, Query(max_length=64)] = None,
    steps: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    cfg: Annotated[float | None, Query(ge=0, le=1000)] = None,
    rating_min: Annotated[int | None, Query(ge=0, le=5)] = None,
    board: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    owner: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    until: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    parent: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    deleted: bool = False,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """Full text, semantic or hybrid search with filters; keyset pages (``next_cursor``).
    ``mode`` defaults to hybrid, or text where semantic search is off (no MiniLM installed);
    asking for semantic or hybrid there is a 422 naming ``mode``."""
    from limner.store.search import Filters

    if mode is None:
        mode = "hybrid" if studio.store.embedder is not None else "text"
    filters = Filters(model=model, family=family, seed=seed, sampler=sampler, steps=steps, cfg=cfg, since=since,
                      until=until, rating_min=rating_min, board=board, owner=owner, parent_id=parent,
                      deleted=deleted)
    page = studio.store.search(user, q, mode=mode, filters=filters, cursor=cursor, limit=limit)
    return {"items": [image_out(i) for i in page.items], "next_cursor": page.next_cursor}


@router.get("/images/{image_id}", response_model=ImageDetail)
def get_image(image_id: Id, user: UserDep, studio: StudioDep) -> dict[str, Any]:
    """One image with its full generation record and its version chain (ids, oldest first)."""
    image = studio.store.get_image(user, image_id)
    out = image_out(image)
    out["record"] = image.record
    out["versions"] = [v.id for v in studio.store.versions(user, image_id)]
    return out


@router.get("/images/{image_id}/file", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}})
def image_file(image_id: Id, user: UserDep, studio: StudioDep, download: bool = False) -> FileResponse:
    """The PNG with its embedded record (``?download=1``: as an attachment)."""
    path = studio.store.image_file(user, image_id)
    disposition = "attachment" if download else "inline"
    return FileResponse(path, media_type="image/png", headers=FILE_HEADERS,
                        content_disposition_type=disposition, filename=f"limner-{image_id}.png")


@router.get("/images/{image_id}/thumb", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}})
def image_thumb(image_id: Id, user: UserDep, studio: StudioDep) -> FileResponse:
    path = studio.store.image_file(user, image_id, thumb=True)
    return FileResponse(path, media_type="image/png", headers=FILE_HEADERS)


@router.patch("/images/{image_id}", response_model=ImageOut)
def update_image(image_id: Id, body: ImagePatch, user: UserDep, studio: StudioDep) -> dict[str, Any]:
    """Set the rating (0-5, null clears it) and/or replace the tags."""
    fields = body.model_dump(exclude_unset=True)
    kwargs: dict[str, Any] = {}
    if "rating" in fields:
        kwargs["rating"] = fields["rating"]
    if fields.get("tags") is not None:
        kwargs["tags"] = fields["tags"]
    return image_out(studio.store.update_image(user, image_id, **kwargs))


@router.delete("/images/{image_id}", status_code=204)
def delete_image(image_id: Id, user: UserDep, studio: StudioDep) -> Response:
    """Soft delete (``POST /api/images/{id}/restore`` undoes it)."""
    studio.store.delete_image(user, image_id)
    return Response(status_code=204)


@router.post("/images/{image_id}/restore", response_model=ImageOut)
def restore_image(image_id: Id, user: UserDep, studio: StudioDep) -> dict[str, Any]:
    studio.store.restore_image(user, image_id)
    return image_out(studio.store.get_image(user, image_id))


@router.post("/images/{image_id}/regenerate", response_model=JobAccepted, status_code=202)
def regenerate(image_id: Id, user: UserDep, studio: StudioDep, overrides: dict[str, Any] | None = None) -> dict:
    """Regenerate from the image's record (optionally changing seed, steps, cfg, sampler, prompt
    or negative); the new image links to this one as a version."""
    from limner.server.routes.jobs import submit_regeneration

    image = studio.store.get_image(user, image_id)
    return submit_regeneration(studio, user, image, overrides or {})


@router.post("/uploads", response_model=UploadOut, status_code=201)
async def upload(file: UploadFile, user: UserDep, studio: StudioDep) -> dict[str, Any]:
    """An init image or mask: decoded by the one decode function, kept re-encoded as PNG."""
    from limner.data.decode import decode_image

    data = await file.read()
    img = decode_image(data, name=file.filename or "upload")
    upload_id = uuid.uuid4().hex
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    from limner.fsutil import atomic_write

    atomic_write(_upload_dir(studio, user) / f"{upload_id}.png", lambda f: f.write(buf.getvalue()))
    return {"id": upload_id, "width": img.width, "height": img.height}


@router.get("/uploads/{upload_id}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}})
def get_upload(upload_id: str, user: UserDep, studio: StudioDep) -> FileResponse:
    """An upload, re-encoded PNG, always as an attachment."""
    if not UPLOAD_ID.match(upload_id):
        raise ApiError(404, f"no upload {upload_id}")
    path = _upload_dir(studio, user) / f"{upload_id}.png"
    if not path.is_file():
        raise ApiError(404, f"no upload {upload_id}")
    return FileResponse(path, media_type="image/png", headers=FILE_HEADERS, content_disposition_type="attachment",
                        filename=f"{upload_id}.png")


def _upload_dir(studio, user):
    path = studio.settings.home / "uploads" / f"u{int(user.id)}"
    path.mkdir(parents=True, exist_ok=True)
    return path
