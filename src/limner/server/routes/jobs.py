"""Submitting generation jobs, listing and cancelling jobs.

A submit checks what can be checked without loading the model (the model exists and is the
user's, the options are ones its family declares, in range), fixes a random seed (so a job
retried after its worker died makes the same pixels), and queues the job. Past the queue limit
the answer is 429 with Retry-After; an ``Idempotency-Key`` header returns the same job for a
retried submit.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query

from limner.errors import UsageError
from limner.jobs.events import job_event
from limner.jobs.views import job_summary
from limner.server import runs as run_folders
from limner.server.deps import StudioDep, UserDep
from limner.server.schemas import GenerateBody, JobAccepted, JobOut

router = APIRouter(prefix="/api", tags=["jobs"])

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=256)]
REGENERATE_OVERRIDES = ("seed", "steps", "cfg", "sampler", "prompt", "negative")


def submit(studio, user, kind: str, payload: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
    """Queue a job for ``user`` (429 past the limit) and tell the owner's sockets."""
    job, created = studio.store.submit_job(user, kind, payload, idempotency_key=idempotency_key or None,
                                           limit=studio.settings.queue_limit)
    summary = job_summary(job)
    if created:
        studio.hub.publish([user.id], job_event(summary))
    return {"job": summary}


def check_request(folder, request: dict[str, Any]) -> None:
    """The checks the library makes before sampling that need no model: sampler name and the
    family's declared options (UsageError naming the field)."""
    from limner.samplers import SAMPLERS

    sampler = request.get("sampler")
    cfg = run_folders.read_config(folder)
    family = (cfg.get("family") or {}).get("name")
    if family is None:
        raise UsageError(f"{folder.name} has no readable config.json", field="model")
    if sampler is not None and sampler not in SAMPLERS and family.endswith("diffusion"):
        raise UsageError(f"unknown sampler {sampler!r}; choose one of {', '.join(sorted(SAMPLERS))}", field="sampler")
    try:
        from limner.models.registry import family_class

        decl = getattr(family_class(family), "declaration", None)
    except UsageError:
        return
    if decl is not None and request.get("options"):
        request["options"] = decl.check_options(request["options"], family=family)


@router.post("/generate", response_model=JobAccepted, status_code=202)
def generate(body: GenerateBody, user: UserDep, studio: StudioDep, idempotency_key: IdempotencyKey = None) -> dict:
    """Queue a generation job (202 with the job; watch it on /api/events or GET /api/jobs/{id})."""
    folder, _ = run_folders.resolve_model(studio.settings.home, user.id, body.model)
    request = body.model_dump(exclude={"model"})
    if not request.get("options"):
        request.pop("options", None)
    check_request(folder, request)
    edit_inputs(studio, user, folder, request)
    if request.get("seed") in (None, -1):
        # fixed now, so a job retried after its worker died makes the same pixels; with an
        # Idempotency-Key, derived from it, so a retried submit is the same request
        request["seed"] = (_key_seed(user.id, idempotency_key) if idempotency_key
                           else secrets.randbelow(2**32))
    request["run"] = str(folder)
    return submit(studio, user, "generate", {"model": body.model, "request": request}, idempotency_key)


EDIT_FIELDS = {"init_image_id": ("init_image", "img2img", "start from an image"),
               "mask_image_id": ("mask", "inpaint", "inpaint")}


def upload_folder(home, user_id: int):
    """A user's uploads (``POST /api/uploads``); its ``inputs/`` keeps exact copies of the inputs
    of generated images by sha256, so a regeneration finds them after the upload is gone."""
    return home / "uploads" / f"u{int(user_id)}"


def edit_inputs(studio, user, folder, request: dict[str, Any]) -> None:
    """Upload ids -> the acting user's upload files as the request's ``init_image`` / ``mask``
    (404 for an id that is not one of theirs; 422 naming the field when the model's family does
    not declare img2img / inpaint, for a mask or strength without a start image, or for
    ``resample`` without a mask)."""
    from limner.server.errors import ApiError

    ids = {name: request.pop(name, None) for name in EDIT_FIELDS}
    if request.get("resample") is not None and ids["mask_image_id"] is None:
        raise UsageError("resampling is for inpainting: it needs a mask (mask_image_id)", field="resample")
    if ids["init_image_id"] is None:
        for name, value in (("mask_image_id", ids["mask_image_id"]), ("strength", request.get("strength"))):
            if value is not None:
                raise UsageError("needs a start image (init_image_id)", field=name)
        return
    family = (run_folders.read_config(folder).get("family") or {}).get("name")
    from limner.models.registry import family_class

    declaration = getattr(family_class(family), "declaration", None)
    for name, upload_id in ids.items():
        if upload_id is None:
            continue
        key, capability, verb = EDIT_FIELDS[name]
        if declaration is None or not declaration.supports(capability):
            raise UsageError(f"a {family} model cannot {verb}", field=name)
        path = upload_folder(studio.settings.home, user.id) / f"{upload_id}.png"
        if not path.is_file():
            raise ApiError(404, f"no upload {upload_id}", field=name)
        request[key] = str(path)


def _key_seed(user_id: int, key: str) -> int:
    digest = hashlib.sha256(f"{user_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def submit_regeneration(studio, user, image, overrides: dict[str, Any]) -> dict:
    """A generation job replaying ``image``'s record (with ``overrides``), linked as a version."""
    record = image.record or {}
    bad = sorted(set(overrides) - set(REGENERATE_OVERRIDES))
    if bad:
        raise UsageError(f"cannot change {bad[0]!r} when regenerating (only {', '.join(REGENERATE_OVERRIDES)})",
                         field=bad[0])
    batch = record.get("batch_seeds") or [record.get("seed", 0)]
    request = {
        "run": record.get("run_path"), "prompt": record.get("prompt"), "negative": record.get("negative"),
        "label": record.get("label"), "seed": batch[0], "num": len(batch), "sampler": record.get("sampler"),
        "steps": record.get("steps"), "cfg": record.get("cfg"), "truncation": record.get("truncation"),
        "sigma_max": record.get("sigma_max"), "step": record.get("step"), "batch_size": len(batch),
        "precision": {"bfloat16": "bf16"}.get(record.get("dtype"), "fp32"),
    }
    if record.get("options"):
        request["options"] = record["options"]
    if record.get("init_image"):  # an edit: its inputs by sha256 from the owner's inputs store
        from limner.generation.editing import find_stored

        for name in ("init_image", "mask"):
            entry = record.get(name)
            if entry:
                request[name] = str(find_stored(entry["sha256"], entry["name"],
                                                [upload_folder(studio.settings.home, image.owner_id)], field=name))
        request.update(strength=record.get("strength"), resample=record.get("resample"))
    if overrides:
        request.update({k: v for k, v in overrides.items()})
        request.update(num=1, batch_size=1)
        keep = None
    else:
        keep = record.get("index", 0)  # the same batch, keep only this image
    if not request["run"]:
        raise UsageError("the image's record names no run", field="record")
    payload = {"model": record.get("run_id"), "request": request, "parent_id": image.id}
    if keep is not None:
        payload["keep_index"] = keep
    return submit(studio, user, "generate", payload, None)


@router.get("/jobs", response_model=list[JobOut])
def list_jobs(user: UserDep, studio: StudioDep,
              state: Literal["queued", "running", "done", "failed", "cancelled"] | None = None,
              kind: Annotated[str | None, Query(max_length=32)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[dict]:
    """Your jobs, newest first."""
    return [job_summary(j) for j in studio.store.list_jobs(user, state=state, kind=kind, limit=limit)]


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, user: UserDep, studio: StudioDep) -> dict:
    out = job_summary(studio.store.get_job(user, job_id))
    if out["state"] == "queued":
        out["progress"]["queue_position"] = studio.store.queue_position(job_id)
    return out


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, user: UserDep, studio: StudioDep) -> dict:
    """Cancel (idempotent): a queued job at once, a running one at its next step (a training
    job saves a checkpoint first); a finished job is returned unchanged."""
    summary = job_summary(studio.store.cancel_job(user, job_id))
    studio.hub.publish([user.id], job_event(summary), once=True)
    return summary
