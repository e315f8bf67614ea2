"""The store relay: brings news that happened in other processes to this studio's sockets.

Jobs run by ``limner worker`` processes (or by another studio's embedded worker) write their
state, progress and latest preview into the job row; for every user with an open
``/api/events`` socket here, this thread reads the user's recent jobs a few times a second and
publishes what changed. Images added to shared boards through another studio process come the
same way: each round reads the board additions of the last ``BOARD_LOOKBACK_S`` seconds on
boards the connected users see (``Store.board_additions``) and tells the members connected
here, from the moment they connected (less ``WATCH_MARGIN_S``, which covers the first round's
delay). The hub drops events it already delivered (``EventHub.publish(once=True)``), so jobs
run and board additions made in this process are not announced twice.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

from limner.jobs.events import board_image_event, event_key, image_event, job_event, preview_event, progress_event
from limner.jobs.views import image_summary, job_summary

log = logging.getLogger(__name__)

POLL_SECONDS = 0.3
RECENT_JOBS = 20
BOARD_LOOKBACK_S = 30.0  # board additions re-read each round (a slow commit is still found)
WATCH_MARGIN_S = 2.0  # board additions this long before a socket's first round still reach it


class Relay:
    def __init__(self, studio: Any, poll: float = POLL_SECONDS) -> None:
        self.studio = studio
        self.poll = poll
        self._users: dict[int, Any] = {}
        self._count: Counter[int] = Counter()
        self._since: dict[int, float] = {}  # per watched user: board additions from then on
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        studio.relay = self

    def start(self) -> "Relay":
        self._thread = threading.Thread(target=self._loop, name="limner-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def watch(self, user: Any) -> None:
        with self._lock:
            self._users[user.id] = user
            self._count[user.id] += 1

    def unwatch(self, user: Any) -> None:
        with self._lock:
            self._count[user.id] -= 1
            if self._count[user.id] <= 0:
                del self._count[user.id]
                self._users.pop(user.id, None)
                self._since.pop(user.id, None)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            with self._lock:
                users = list(self._users.values())
            for user in users:
                try:
                    self.relay_user(user)
                except Exception:  # a database hiccup: the next round tries again
                    log.exception("relay: reading news for user %s failed", user.id)
            if users:
                try:
                    self.relay_boards(users)
                except Exception:
                    log.exception("relay: reading board news failed")

    def relay_boards(self, users: list[Any]) -> None:
        """Tell the watched users of images added to their boards (by any studio process)."""
        hub = self.studio.hub
        store = self.studio.store
        now = store.clock()
        with self._lock:
            since = {}
            for user in users:
                if user.id in self._users:
                    since[user.id] = self._since.setdefault(user.id, now - WATCH_MARGIN_S)
        if not since:
            return
        by_id = {u.id: u for u in users}
        for add in store.board_additions(list(since), max(min(since.values()), now - BOARD_LOOKBACK_S)):
            audience = [uid for uid in add.audience if since.get(uid, now) <= add.added]
            if not audience:
                continue
            if hub.seen(event_key({"type": "board_image", "board_id": add.board_id, "image": {"id": add.image_id},
                                   "added": add.added})):
                continue
            try:
                image = store.get_image(by_id[audience[0]], add.image_id)
            except Exception:  # removed or deleted meanwhile
                continue
            hub.publish(audience, board_image_event(add.board_id, image_summary(image), add.added), once=True)

    def relay_user(self, user: Any) -> None:
        hub = self.studio.hub
        store = self.studio.store
        for job in store.list_jobs(user, limit=RECENT_JOBS):
            summary = job_summary(job)
            progress = job.progress or {}
            if job.state == "running" and "step" in progress:
                hub.publish([user.id], progress_event(job.id, int(progress["step"]), int(progress.get("total", 0)),
                                                      progress.get("loss")), once=True)
                if progress.get("preview"):
                    hub.publish([user.id], preview_event(job.id, int(progress.get("preview_step", 0)),
                                                         int(progress.get("total", 0)), progress["preview"]), once=True)
            if job.state == "done":
                for image_id in (job.result or {}).get("image_ids", []):
                    if hub.seen(("image", image_id)):
                        continue
                    try:
                        image = store.get_image(user, image_id)
                    except Exception:  # deleted meanwhile
                        continue
                    hub.publish([user.id], image_event(job.id, image_summary(image)), once=True)
            hub.publish([user.id], job_event(summary), once=True)
