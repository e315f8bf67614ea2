"""The JSON shapes of jobs and images that the HTTP API, the WebSocket and the worker share
(docs/studio-api.md): one function each, so an event and a GET never disagree."""

from __future__ import annotations

import json
from typing import Any

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")


def _fields(obj: Any) -> dict[str, Any]:
    """A store record (frozen dataclass) or a dict -> a dict."""
    if isinstance(obj, dict):
        return obj
    from dataclasses import is_dataclass

    if is_dataclass(obj):
        return {f: getattr(obj, f) for f in obj.__dataclass_fields__}
    return dict(vars(obj))


def _json(value: Any, default: Any) -> Any:
    if value is None:
        return default
    if isinstance(value, (dict, list)):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return default


def job_summary(job: dict[str, Any]) -> dict[str, Any]:
    """``{id, kind, state, progress: {step, total}, error?, result, created, started, finished}``."""
    job = _fields(job)
    progress = _json(job.get("progress"), {}) or {}
    payload = _json(job.get("payload"), {}) or {}
    out = {
        "id": str(job["id"]),
        "kind": job["kind"],
        "state": job["state"],
        "progress": {"step": int(progress.get("step", 0)), "total": int(progress.get("total", 0))},
        "result": _json(job.get("result"), {}) or {},
        "error": job.get("error"),
        "created": job.get("created"),
        "started": job.get("started"),
        "finished": job.get("finished"),
        "attempts": int(job.get("attempts") or 0),
    }
    if "loss" in progress:
        out["progress"]["loss"] = progress["loss"]
    if job["kind"] == "generate":
        req = payload.get("request", {})
        out["request"] = {k: req.get(k) for k in ("prompt", "negative", "seed", "num", "steps", "cfg", "sampler")}
        out["request"]["model"] = payload.get("model")
    elif job["kind"] in ("train", "eval"):
        out["run"] = payload.get("name") or payload.get("run")
    return out


def image_summary(row: dict[str, Any]) -> dict[str, Any]:
    """A gallery row -> the listing shape, with the URLs the page loads."""
    row = _fields(row)
    image_id = int(row["id"])
    return {
        "id": image_id,
        "prompt": row.get("prompt"),
        "negative": row.get("negative"),
        "model": row.get("model"),
        "family": row.get("family"),
        "seed": row.get("seed"),
        "sampler": row.get("sampler"),
        "steps": row.get("steps"),
        "cfg": row.get("cfg"),
        "width": row.get("width"),
        "height": row.get("height"),
        "rating": row.get("rating"),
        "tags": _json(row.get("tags"), []),
        "created": row.get("created"),
        "owner_id": row.get("owner_id"),
        "parent_id": row.get("parent_id"),
        "deleted": row.get("deleted_at") is not None,
        "missing": row.get("missing_at") is not None,
        "thumb_url": f"/api/images/{image_id}/thumb",
        "file_url": f"/api/images/{image_id}/file",
    }
