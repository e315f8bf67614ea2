"""Runs (a user's run folders), training and evaluation jobs, and datasets.

Training and evaluation run in workers through ``limner.workflows.train`` and
``limner.evaluation.evaluate_run``, the functions behind ``limner train`` and ``limner eval``.
Stopping a training job is cancelling it: the trainer saves a checkpoint first, and
``POST /api/runs/{name}/resume`` continues it.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Query, UploadFile
from fastapi.responses import FileResponse

from limner.errors import CheckpointError, UsageError
from limner.runs import checkpoint_dirs, checkpoint_step, read_metrics, sample_grids
from limner.server import runs as run_folders
from limner.server.deps import StudioDep, UserDep
from limner.server.errors import ApiError
from limner.server.routes.images import FILE_HEADERS
from limner.server.routes.jobs import IdempotencyKey, submit
from limner.server.routes import models as models_routes
from limner.server.schemas import (DataCheckBody, DataCheckOut, DataRootsOut, DatasetOut, EvalBody, JobAccepted,
                                   ResumeBody, RunOut, Step, TrainBody)

router = APIRouter(prefix="/api", tags=["runs"])

MAX_METRIC_ROWS = 20_000
DATASET_MAX_FILES = 50_000
DATASET_MAX_BYTES = 2 * 1024**3  # uncompressed, against zip bombs


def _run(studio, user, name: str) -> Path:
    folder = run_folders.run_dir(studio.settings.home, user.id, name)
    if not (folder / "config.json").is_file():
        raise ApiError(404, f"no run {name!r}")
    return folder


@router.get("/runs", response_model=list[RunOut])
def list_runs(user: UserDep, studio: StudioDep) -> list[dict[str, Any]]:
    """Your run folders; ``state`` is training while a training job for the run is active."""
    active = {j.payload.get("name") for j in studio.store.list_jobs(user, kind="train", limit=500)
              if j.state in ("queued", "running")}
    out = run_folders.list_runs(studio.settings.home, user.id)
    for r in out:
        if r["name"] in active:
            r["state"] = "training"
    return out


@router.get("/runs/{name}", response_model=dict[str, Any])
def get_run(name: str, user: UserDep, studio: StudioDep) -> dict[str, Any]:
    """A run's config, checkpoints (steps) and latest metrics."""
    folder = _run(studio, user, name)
    try:
        info = run_folders.describe(folder, name, "run")
    except CheckpointError:
        raise ApiError(409, f"run {name!r}: config.json is not a readable run config", field="name") from None
    steps = [checkpoint_step(d) for d in checkpoint_dirs(folder)]
    rows = read_metrics(folder, limit=1)
    return {**info, "config": run_folders.read_config(folder), "checkpoints": steps,
            "metrics": rows[-1] if rows else None}


@router.get("/runs/{name}/metrics", response_model=list[dict[str, Any]])
def run_metrics(name: str, user: UserDep, studio: StudioDep,
                limit: Annotated[int, Query(ge=1, le=MAX_METRIC_ROWS)] = MAX_METRIC_ROWS) -> list[dict[str, Any]]:
    """Rows of the run's metrics.jsonl (the last ``limit``)."""
    return read_metrics(_run(studio, user, name), limit)


@router.get("/runs/{name}/samples", response_model=list[dict[str, Any]])
def run_samples(name: str, user: UserDep, studio: StudioDep) -> list[dict[str, Any]]:
    """The fixed-seed sample grids written during training (a timeline), oldest first."""
    folder = _run(studio, user, name)
    return [{"step": step, "url": f"/api/runs/{name}/samples/{step}"} for step in sample_grids(folder)]


@router.get("/runs/{name}/samples/{step}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}})
def run_sample(name: str, step: Step, user: UserDep, studio: StudioDep) -> FileResponse:
    folder = _run(studio, user, name)
    path = sample_grids(folder).get(step)
    if path is None:
        raise ApiError(404, f"run {name!r} has no sample grid for step {step}")
    real = path.resolve()
    if folder.resolve() not in real.parents:
        raise ApiError(404, f"run {name!r} has no sample grid for step {step}")
    return FileResponse(real, media_type="image/png", headers=FILE_HEADERS)


# --------------------------------------------------------------------------------------------
# Training and evaluation jobs
# --------------------------------------------------------------------------------------------


def _dataset(studio, user, name: str) -> Path:
    folder = run_folders.contained(run_folders.user_folder(studio.settings.home, "datasets", user.id), name, "data")
    if not folder.is_dir():
        raise UsageError(f"no dataset {name!r} (upload one with POST /api/datasets)", field="data")
    return folder


def _folder_dataset(studio, user, raw: str, field: str = "data_path") -> Path:
    """A dataset folder on the studio's machine: admins only (the implicit local user of a
    studio without accounts is one), inside the configured roots (``run_folders.dataset_path``)."""
    if user.role != "admin":
        raise ApiError(403, "only an admin may use a folder on the studio's machine; upload a zip instead",
                       field=field)
    return run_folders.dataset_path(raw, studio.settings.dataset_roots(), field)


def _needed_runs(studio, user, family: str, given: dict[str, str]) -> dict[str, str]:
    """The runs a family is built on (``declaration.needs``), as ``family_options`` paths: each
    one of the user's runs, of the declared family, trained with the declared condition and
    holding a checkpoint; a 422 naming ``needs.OPTION`` otherwise."""
    from limner.models.registry import declaration
    from limner.runs import run_summary

    needs = {n.option: n for n in declaration(family).needs}
    for option in given:
        if option not in needs:
            takes = ", ".join(needs) or "none"
            raise UsageError(f"a {family} run is built on no {option!r} run (it needs: {takes})",
                             field=f"needs.{option}")
    out = {}
    for option, need in needs.items():
        field = f"needs.{option}"
        name = given.get(option)
        if not name:
            raise UsageError(f"a {family} run is built on one of your {need.family} runs: {need.help}", field=field)
        folder = run_folders.contained(run_folders.user_folder(studio.settings.home, "runs", user.id), name, field)
        try:
            info = run_summary(folder)
        except CheckpointError:
            raise UsageError(f"you have no readable run {name!r}", field=field) from None
        cond = models_routes.need_condition(need)
        if info["family"] != need.family:
            raise UsageError(f"{name!r} is a {info['family']} run; {option} needs a {need.family} run", field=field)
        if cond is not None and info["cond"] not in (cond, None):
            raise UsageError(f"{name!r} was trained with --cond {info['cond']}; {option} needs --cond {cond}",
                             field=field)
        if info["step"] is None:
            raise UsageError(f"{name!r} has no checkpoint yet", field=field)
        out[option] = str(folder)
    return out


@router.post("/train", response_model=JobAccepted, status_code=202)
def train(body: TrainBody, user: UserDep, studio: StudioDep, idempotency_key: IdempotencyKey = None) -> dict:
    """Start training a new run on one of your datasets, or (admins) a dataset folder on the
    studio's machine (``data_path``); a job: cancel it to stop and save. Families built on
    another run (GET /api/families ``needs``) name it in ``needs``."""
    from limner.models.registry import DEFAULT_FAMILY, family_class
    from limner.overrides import SECTIONS
    from limner.workflows import train_settings

    if (body.data is None) == (body.data_path is None):
        raise UsageError("give one of data (an uploaded dataset's name) or data_path (a folder)", field="data")
    data = (_dataset(studio, user, body.data) if body.data is not None
            else _folder_dataset(studio, user, body.data_path))
    out = run_folders.run_dir(studio.settings.home, user.id, body.name)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"a run named {body.name!r} exists; resume it or choose another name", field="name")
    if body.family is not None:
        family_class(body.family)  # UsageError naming the families when unknown
    family_options = _needed_runs(studio, user, body.family or DEFAULT_FAMILY, body.needs)
    for key in body.set:
        if key.split(".", 1)[0] not in SECTIONS or "." not in key:
            raise UsageError(f"settings are train.NAME or family.NAME, not {key!r}", field=f"set.{key}")
    train_settings({k.split(".", 1)[1]: v for k, v in body.set.items() if k.startswith("train.")})
    overrides = {k: v for k, v in (("steps", body.steps), ("batch_size", body.batch_size)) if v is not None}
    payload = {"name": body.name, "data": str(data), "out": str(out), "family": body.family, "preset": body.preset,
               "resolution": body.resolution, "cond": body.cond, "train": overrides, "set": body.set}
    if family_options:
        payload["family_options"] = family_options
    return submit(studio, user, "train", payload, idempotency_key)


@router.post("/runs/{name}/resume", response_model=JobAccepted, status_code=202)
def resume(name: str, body: ResumeBody, user: UserDep, studio: StudioDep,
           idempotency_key: IdempotencyKey = None) -> dict:
    """Continue a run to ``steps`` total steps from its newest valid checkpoint."""
    folder = _run(studio, user, name)
    data = (run_folders.read_config(folder).get("data") or {}).get("path")
    if not data or not Path(data).exists():
        raise UsageError(f"the run's training data {data} is not on this machine", field="data")
    payload = {"name": name, "data": data, "out": str(folder), "resume": True, "train": {"steps": body.steps}}
    return submit(studio, user, "train", payload, idempotency_key)


@router.post("/eval", response_model=JobAccepted, status_code=202)
def evaluate(body: EvalBody, user: UserDep, studio: StudioDep, idempotency_key: IdempotencyKey = None) -> dict:
    """Score a run against its training data (``limner eval``) as a job."""
    folder = _run(studio, user, body.run)
    out = run_folders.user_folder(studio.settings.home, "evals", user.id) / body.run
    payload = {"run": body.run, "run_path": str(folder), "num": body.num, "out": str(out)}
    return submit(studio, user, "eval", payload, idempotency_key)


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


@router.get("/datasets/roots", response_model=DataRootsOut)
def dataset_roots(user: UserDep, studio: StudioDep) -> dict[str, Any]:
    """Whether you may train from a folder on the studio's machine, and under which folders."""
    if user.role != "admin":
        return {"allowed": False, "roots": []}
    return {"allowed": True, "roots": [str(r) for r in studio.settings.dataset_roots()]}


@router.post("/datasets/check", response_model=DataCheckOut)
def check_folder(body: DataCheckBody, user: UserDep, studio: StudioDep) -> dict[str, Any]:
    """``limner data check`` on a dataset folder on the studio's machine (admins): every image
    decoded by the loader's own rule; usable and skipped files (with the reason), captions,
    classes. Train from it with ``data_path``."""
    from limner.data.check import check_dataset
    from limner.errors import DataError

    folder = _folder_dataset(studio, user, body.path, "path")
    try:
        report = check_dataset(folder, resolution=body.resolution)
    except DataError as e:
        raise UsageError(str(e), field="path") from None

    def rel(p: str) -> str:
        try:
            return Path(p).relative_to(folder).as_posix()
        except ValueError:
            return p

    return {"path": str(folder), "kind": report.source_kind, "images": report.usable, "total": report.total,
            "skipped": [{"path": rel(s.path), "reason": s.reason} for s in report.skipped[:1000]],
            "skipped_count": len(report.skipped), "captioned": report.captioned, "has_captions": report.has_captions,
            "classes": report.class_counts, "unlisted": len(report.unlisted), "smaller": report.smaller}


@router.get("/datasets", response_model=list[DatasetOut])
def list_datasets(user: UserDep, studio: StudioDep) -> list[dict[str, Any]]:
    root = run_folders.user_folder(studio.settings.home, "datasets", user.id)
    out = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and not d.is_symlink():
            count = sum(1 for p in d.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
            out.append({"name": d.name, "images": count})
    return out


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
_SIDE_FILES = {".txt", ".jsonl", ".json"}


@router.post("/datasets", response_model=DatasetOut, status_code=201)
async def upload_dataset(file: UploadFile, user: UserDep, studio: StudioDep,
                         name: Annotated[str, Query(min_length=1, max_length=128)]) -> dict[str, Any]:
    """A zip of images (with captions as metadata.jsonl or .txt files, or class sub-folders):
    each image is checked by the one decode function; unusable files are listed, not kept."""
    from limner.data.decode import decode_image
    from limner.errors import ImageDecodeError

    root = run_folders.user_folder(studio.settings.home, "datasets", user.id)
    dest = run_folders.contained(root, name, "name")
    if dest.exists():
        raise UsageError(f"a dataset named {name!r} exists", field="name")
    data = await file.read()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UsageError("not a zip file", field="file") from None
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) > DATASET_MAX_FILES or sum(m.file_size for m in members) > DATASET_MAX_BYTES:
        raise UsageError(f"too large (at most {DATASET_MAX_FILES} files, {DATASET_MAX_BYTES >> 30} GiB unpacked)",
                         field="file")
    tmp = root / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    kept, skipped = 0, []
    try:
        for m in members:
            rel = PurePosixPath(m.filename)
            if rel.is_absolute() or ".." in rel.parts or any(p.startswith(".") for p in rel.parts) \
                    or rel.parts[0] == "__MACOSX":
                skipped.append({"path": m.filename, "reason": "path outside the dataset or hidden"})
                continue
            suffix = rel.suffix.lower()
            if suffix not in _IMAGE_SUFFIXES | _SIDE_FILES:
                skipped.append({"path": m.filename, "reason": "not an image or caption file"})
                continue
            raw = archive.read(m)
            if suffix in _IMAGE_SUFFIXES:
                try:
                    decode_image(raw, name=m.filename)
                except ImageDecodeError as e:
                    skipped.append({"path": m.filename, "reason": e.reason})
                    continue
                kept += 1
            target = tmp / Path(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(raw)
        if kept == 0:
            raise UsageError("the zip holds no usable image", field="file")
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"name": name, "images": kept, "skipped": skipped[:1000]}
