"""A Python client for the limner studio's HTTP API (docs/studio-api.md), one method per route.

    from limner.client import StudioClient
    with StudioClient("http://127.0.0.1:8765", api_key="lmk_...") as studio:
        job = studio.generate(model="emoji", prompt="red heart", num=2, steps=8)
        done = studio.wait(job["id"])
        for image_id in done["result"]["image_ids"]:
            open(f"{image_id}.png", "wb").write(studio.image_file(image_id))

Errors come back as :class:`StudioError` with the HTTP status, the message and (for usage errors)
the field it names. The end-to-end tests drive the studio through this class, so it follows the
server route for route; ``transport`` lets them run it in-process against a TestClient.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import httpx

TERMINAL = ("done", "failed", "cancelled")


class StudioError(Exception):
    """An error answer from the studio: ``status``, ``detail`` and ``field`` (or None)."""

    def __init__(self, status: int, detail: str, field: str | None = None, retry_after: float | None = None):
        super().__init__(f"{status}: {field + ': ' if field else ''}{detail}")
        self.status = status
        self.detail = detail
        self.field = field
        self.retry_after = retry_after


class StudioClient:
    """Talks to one studio. Give ``api_key`` (Bearer) or call :meth:`login` (session cookie).

    Args:
        base_url: e.g. ``http://127.0.0.1:8765``.
        api_key: an API key made with ``POST /api/keys`` (or the page's settings).
        client: an existing ``httpx.Client`` (e.g. FastAPI's TestClient) instead of a new one.
        timeout: seconds per request.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8765", *, api_key: str | None = None,
                 client: httpx.Client | None = None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = client or httpx.Client(base_url=self.base_url, timeout=timeout)
        self.api_key = api_key

    def __enter__(self) -> "StudioClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------------ plumbing
    def request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                headers: dict | None = None, files: Any = None, raw: bool = False) -> Any:
        """One call; returns the decoded JSON (or bytes with ``raw``), raises StudioError."""
        hdrs = dict(headers or {})
        if self.api_key:
            hdrs["Authorization"] = f"Bearer {self.api_key}"
        if params:
            params = {k: v for k, v in params.items() if v is not None}
        resp = self.http.request(method, path, json=json_body, params=params, headers=hdrs, files=files)
        if resp.status_code >= 400:
            raise _error(resp)
        if raw:
            return resp.content
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    # ------------------------------------------------------------------------ auth
    def health(self) -> dict:
        return self.request("GET", "/api/health")

    def login(self, username: str, password: str) -> dict:
        """Log in with a password; the session cookie is kept by the underlying client."""
        return self.request("POST", "/api/auth/login", json_body={"username": username, "password": password})

    def logout(self) -> None:
        self.request("POST", "/api/auth/logout")

    def me(self) -> dict:
        return self.request("GET", "/api/me")

    def keys(self) -> list[dict]:
        return self.request("GET", "/api/keys")

    def create_key(self, name: str) -> dict:
        """A new API key: ``{id, name, key}``; the key is shown only in this answer."""
        return self.request("POST", "/api/keys", json_body={"name": name})

    def delete_key(self, key_id: int) -> None:
        self.request("DELETE", f"/api/keys/{key_id}")

    def users(self) -> list[dict]:
        return self.request("GET", "/api/users")

    def create_user(self, username: str, password: str, role: str = "user") -> dict:
        return self.request("POST", "/api/users", json_body={"username": username, "password": password, "role": role})

    # ------------------------------------------------------------------------ models, generation, jobs
    def models(self) -> list[dict]:
        return self.request("GET", "/api/models")

    def generate(self, *, model: str, idempotency_key: str | None = None, init_image_id: str | None = None,
                 mask_image_id: str | None = None, strength: float | None = None, **request: Any) -> dict:
        """Submit a generation job (prompt, negative, seed, num, steps, cfg, sampler, ...).

        Image-to-image and inpainting: ``init_image_id`` and ``mask_image_id`` are ids from
        :meth:`upload` (white mask pixels are regenerated, black ones kept); ``strength`` in [0, 1]
        (default 0.6; 1 with a mask). The model must declare ``img2img`` / ``inpaint``."""
        edit = {k: v for k, v in (("init_image_id", init_image_id), ("mask_image_id", mask_image_id),
                                  ("strength", strength)) if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", "/api/generate", json_body={"model": model, **request, **edit},
                            headers=headers)["job"]

    def jobs(self, state: str | None = None, kind: str | None = None) -> list[dict]:
        return self.request("GET", "/api/jobs", params={"state": state, "kind": kind})

    def job(self, job_id: int) -> dict:
        return self.request("GET", f"/api/jobs/{job_id}")

    def cancel(self, job_id: int) -> dict:
        return self.request("POST", f"/api/jobs/{job_id}/cancel")

    def wait(self, job_id: int, timeout: float = 300.0, poll: float = 0.1) -> dict:
        """Poll until the job is done, failed or cancelled; returns it (TimeoutError past timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:.0f} s")
            time.sleep(poll)

    def regenerate(self, image_id: int) -> dict:
        return self.request("POST", f"/api/images/{image_id}/regenerate")["job"]

    # ------------------------------------------------------------------------ images
    def images(self, **query: Any) -> dict:
        """Search: q, mode, model, family, seed, sampler, steps, cfg, rating_min, board, owner,
        since, until, cursor, limit -> ``{items, next_cursor}``."""
        return self.request("GET", "/api/images", params=query)

    def iter_images(self, **query: Any) -> Iterator[dict]:
        """Every hit of a search, page by page (keyset cursor)."""
        while True:
            page = self.images(**query)
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]

    def image(self, image_id: int) -> dict:
        return self.request("GET", f"/api/images/{image_id}")

    def image_file(self, image_id: int) -> bytes:
        return self.request("GET", f"/api/images/{image_id}/file", raw=True)

    def image_thumb(self, image_id: int) -> bytes:
        return self.request("GET", f"/api/images/{image_id}/thumb", raw=True)

    def update_image(self, image_id: int, *, rating: int | None = None, tags: list[str] | None = None) -> dict:
        body = {k: v for k, v in (("rating", rating), ("tags", tags)) if v is not None}
        return self.request("PATCH", f"/api/images/{image_id}", json_body=body)

    def delete_image(self, image_id: int) -> None:
        self.request("DELETE", f"/api/images/{image_id}")

    def restore_image(self, image_id: int) -> dict:
        return self.request("POST", f"/api/images/{image_id}/restore")

    def upload(self, data: bytes, filename: str = "upload.png") -> dict:
        """An init image or mask -> ``{id, width, height}``."""
        return self.request("POST", "/api/uploads", files={"file": (filename, data, "application/octet-stream")})

    # ------------------------------------------------------------------------ boards
    def boards(self) -> list[dict]:
        return self.request("GET", "/api/boards")

    def create_board(self, name: str) -> dict:
        return self.request("POST", "/api/boards", json_body={"name": name})

    def board(self, board_id: int) -> dict:
        return self.request("GET", f"/api/boards/{board_id}")

    def delete_board(self, board_id: int) -> None:
        self.request("DELETE", f"/api/boards/{board_id}")

    def add_to_board(self, board_id: int, image_id: int) -> dict:
        return self.request("POST", f"/api/boards/{board_id}/images", json_body={"image_id": image_id})

    def remove_from_board(self, board_id: int, image_id: int) -> None:
        self.request("DELETE", f"/api/boards/{board_id}/images/{image_id}")

    def share_board(self, board_id: int, username: str, role: str = "viewer") -> dict:
        return self.request("POST", f"/api/boards/{board_id}/members", json_body={"username": username, "role": role})

    # ------------------------------------------------------------------------ runs, training, evaluation
    def runs(self) -> list[dict]:
        return self.request("GET", "/api/runs")

    def run(self, name: str) -> dict:
        return self.request("GET", f"/api/runs/{name}")

    def run_metrics(self, name: str) -> list[dict]:
        return self.request("GET", f"/api/runs/{name}/metrics")

    def run_samples(self, name: str) -> list[dict]:
        return self.request("GET", f"/api/runs/{name}/samples")

    def run_sample(self, name: str, step: int) -> bytes:
        return self.request("GET", f"/api/runs/{name}/samples/{step}", raw=True)

    def families(self) -> list[dict]:
        """The model families: presets, condition kinds, the runs each needs, generation options."""
        return self.request("GET", "/api/families")

    def train(self, *, name: str, data: str | None = None, data_path: str | None = None,
              needs: dict[str, str] | None = None, idempotency_key: str | None = None, **options: Any) -> dict:
        """Start training -> job. The data is an uploaded dataset (``data``) or, for admins, a
        folder on the studio's machine under one of :meth:`dataset_roots` (``data_path``);
        ``needs`` names the runs the family builds on (``{"vq": "my-vq"}``); options: family,
        preset, cond, steps, resolution, set={...}."""
        body: dict[str, Any] = {"name": name, **options}
        if data is not None:
            body["data"] = data
        if data_path is not None:
            body["data_path"] = data_path
        if needs:
            body["needs"] = needs
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", "/api/train", json_body=body, headers=headers)["job"]

    def resume(self, name: str, steps: int) -> dict:
        return self.request("POST", f"/api/runs/{name}/resume", json_body={"steps": steps})["job"]

    def datasets(self) -> list[dict]:
        return self.request("GET", "/api/datasets")

    def dataset_roots(self) -> dict:
        """``{allowed, roots}``: whether you may train from a folder on the studio's machine."""
        return self.request("GET", "/api/datasets/roots")

    def check_dataset(self, path: str, resolution: int | None = None) -> dict:
        """``limner data check`` on a folder on the studio's machine (admins)."""
        body: dict[str, Any] = {"path": path}
        if resolution is not None:
            body["resolution"] = resolution
        return self.request("POST", "/api/datasets/check", json_body=body)

    def upload_dataset(self, zip_bytes: bytes, name: str) -> dict:
        return self.request("POST", "/api/datasets", files={"file": (f"{name}.zip", zip_bytes, "application/zip")},
                            params={"name": name})

    def explain(self, run: str, view: str, **options: Any) -> dict:
        """A "how it learns" view of a run: ``{view, data, images: {name: url}, animations}``."""
        return self.request("GET", f"/api/runs/{run}/explain/{view}", params=options)

    def evaluate(self, run: str, num: int = 200) -> dict:
        return self.request("POST", "/api/eval", json_body={"run": run, "num": num})["job"]


def _error(resp: httpx.Response) -> StudioError:
    detail, field = resp.text, None
    try:
        body = resp.json()
        detail, field = body.get("detail", detail), body.get("field")
        if not isinstance(detail, str):
            detail = json.dumps(detail)
    except ValueError:
        pass
    retry = resp.headers.get("retry-after")
    return StudioError(resp.status_code, detail, field, float(retry) if retry else None)
