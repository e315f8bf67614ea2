"""Progress events: one JSON schema read by the WebSocket, the page and the CLI's progress bar.

Every event is a plain dict with a ``type`` (documented in docs/studio-api.md, "Progress
events"). Workers build them with the constructors below; an :class:`EventHub` fans them out to
the subscribers of one user (the job's owner, or a shared board's members) inside one studio
process. Workers in other processes write the durable ones (job state, image, checkpoint) to
the store, and the studio relays them, as it relays images added to boards through another
studio process; previews are best-effort and only travel in-process.

ComfyUI's previews are undocumented binary frames; here a preview is a small PNG as a data URL
inside a documented JSON message, so any client (a browser, ``limner.client``) can show it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable

EVENT_TYPES = ("job", "progress", "preview", "image", "checkpoint", "board_image")
PREVIEW_SIDE = 64  # previews are upscaled (nearest) or downscaled to at most this side
SEEN_KEYS = 5_000  # event keys remembered for de-duplication
SUBSCRIBER_QUEUE = 256  # events buffered per socket; a slow client loses old previews first


def job_event(job: dict[str, Any]) -> dict[str, Any]:
    """A job's state changed (queued, running, done, failed, cancelled)."""
    return {"type": "job", "job": job}


def progress_event(job_id: str, step: int, total: int, loss: float | None = None) -> dict[str, Any]:
    """Work advanced: a sampler step, or a training step (with its loss)."""
    event: dict[str, Any] = {"type": "progress", "job_id": job_id, "step": step, "total": total}
    if loss is not None:
        event["loss"] = loss
    return event


def preview_event(job_id: str, step: int, total: int, image: str) -> dict[str, Any]:
    """The predicted clean image at a sampler step, as a ``data:image/png;base64,`` URL."""
    return {"type": "preview", "job_id": job_id, "step": step, "total": total, "image": image}


def image_event(job_id: str, image: dict[str, Any]) -> dict[str, Any]:
    """A finished image was stored (its summary, as ``GET /api/images/{id}`` returns it)."""
    return {"type": "image", "job_id": job_id, "image": image}


def checkpoint_event(job_id: str, run: str, step: int) -> dict[str, Any]:
    """A training job committed a checkpoint."""
    return {"type": "checkpoint", "job_id": job_id, "run": run, "step": step}


def board_image_event(board_id: int, image: dict[str, Any], added: float | None = None) -> dict[str, Any]:
    """An image was added to a board the receiving user can see; ``added`` (epoch seconds,
    the database's clock) tells two additions of the same image apart."""
    event: dict[str, Any] = {"type": "board_image", "board_id": board_id, "image": image}
    if added is not None:
        event["added"] = added
    return event


def preview_data_url(denoised: Any, side: int = PREVIEW_SIDE) -> str:
    """First image of a [B, C, H, W] tensor in [-1, 1] as a small PNG data URL."""
    from PIL import Image

    x = denoised[0].detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().cpu()
    arr = x.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr[..., :3], "RGB")
    scale = side / max(img.size)
    if scale != 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass(eq=False)
class Subscription:
    """One listener (a WebSocket): its user and a bounded queue of pending events."""

    user_id: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE))

    def offer(self, event: dict[str, Any]) -> None:
        """Queue ``event`` (called on the loop); a full queue drops its oldest preview or event."""
        if self.queue.full():
            try:
                self.queue.get_nowait()
            except asyncio.QueueEmpty:  # pragma: no cover - raced with the reader
                pass
        self.queue.put_nowait(event)


class EventHub:
    """In-process fan-out of events to the subscriptions of given users (thread-safe publish).

    ``publish`` may be called from worker threads; delivery happens on each subscriber's event
    loop. Only the keys of recent events are kept (bounded), for de-duplication.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[int, set[Subscription]] = {}
        self._seq = itertools.count(1)
        self._seen: OrderedDict[tuple, None] = OrderedDict()  # event keys already delivered

    def subscribe(self, user_id: int, loop: asyncio.AbstractEventLoop | None = None) -> Subscription:
        sub = Subscription(user_id, loop or asyncio.get_running_loop())
        with self._lock:
            self._subs.setdefault(user_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.user_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.user_id]

    def seen(self, key: tuple) -> bool:
        """Whether an event with this key (:func:`event_key`) was delivered already."""
        with self._lock:
            return key in self._seen

    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subs.values())

    def publish(self, user_ids: Iterable[int], event: dict[str, Any], *, once: bool = False) -> bool:
        """Deliver ``event`` to every subscription of each user in ``user_ids`` (once per user).

        With ``once``, an event whose key (:func:`event_key`) was already delivered is dropped:
        the store relay re-reads what in-process workers may have sent already. Returns whether
        the event was delivered."""
        if event.get("type") not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event.get('type')!r}")
        targets: list[Subscription] = []
        key = event_key(event)
        with self._lock:
            if key in self._seen:
                if once:
                    return False
                self._seen.move_to_end(key)
            else:
                self._seen[key] = None
                while len(self._seen) > SEEN_KEYS:
                    self._seen.popitem(last=False)
            for uid in dict.fromkeys(user_ids):
                targets.extend(self._subs.get(uid, ()))
        for sub in targets:
            try:
                sub.loop.call_soon_threadsafe(sub.offer, event)
            except RuntimeError:  # the subscriber's loop closed; it is being unsubscribed
                pass
        return True


def event_key(event: dict[str, Any]) -> tuple:
    """What makes two events the same news (a job state, a step, an image on a board)."""
    kind = event["type"]
    if kind == "job":
        job = event["job"]
        return kind, job["id"], job["state"]
    if kind in ("progress", "preview"):
        return kind, event["job_id"], event["step"], event["total"]
    if kind == "image":
        return kind, event["image"]["id"]
    if kind == "checkpoint":
        return kind, event["job_id"], event["step"]
    return kind, event["board_id"], event["image"]["id"], event.get("added")
