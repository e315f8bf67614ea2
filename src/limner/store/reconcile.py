"""Start-up reconciliation of the image folder with the images table (crash safety).

An image is written file first, row second. A crash in between leaves a file without a row;
a lost disk or a hand-deleted file leaves a row without a file. ``reconcile`` walks
``<home>/images``: orphan PNGs are registered from the record embedded in them, for the owner
named by their folder (``images/u<id>/...``); a file that cannot be registered (unreadable, no
record, unknown owner) is moved to ``<home>/quarantine/`` with a note saying why, never deleted.
Rows whose file is missing are flagged (``missing_at``), and unflagged when the file is back.
Nothing a user generated is dropped silently.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from limner.errors import LimnerError
from limner.store import files
from limner.store.errors import NotFound
from limner.store.images import IMAGE_DIR, QUARANTINE_DIR
from limner.store.tables import images

log = logging.getLogger(__name__)
_OWNER_DIR = re.compile(r"^u(\d+)$")


@dataclass
class ReconcileReport:
    registered: list[str] = field(default_factory=list)  # relative paths given a row
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    missing: list[int] = field(default_factory=list)  # image ids newly flagged
    found_again: list[int] = field(default_factory=list)  # image ids whose file is back

    @property
    def changed(self) -> bool:
        return bool(self.registered or self.quarantined or self.missing or self.found_again)


class ReconcilePart:
    """Mixed into ``Store``: ``reconcile``."""

    def reconcile(self) -> ReconcileReport:
        """Register orphan files, quarantine unusable ones, flag rows without files."""
        report = ReconcileReport()
        with self._read() as conn:
            rows = conn.execute(sa.select(images.c.id, images.c.path, images.c.missing_at)).all()
        known = {r.path for r in rows}
        on_disk = set(self._image_files())
        for rel in sorted(on_disk - known):
            self._adopt(rel, report)
        self._flag_missing(rows, on_disk, report)
        if report.changed:
            log.warning("gallery reconciled: %d registered, %d quarantined, %d missing, %d found again",
                        len(report.registered), len(report.quarantined), len(report.missing),
                        len(report.found_again))
        return report

    def _image_files(self):  # noqa: ANN202 - generator of relative paths
        root = self.home / IMAGE_DIR
        if not root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith(".") or not name.lower().endswith(".png"):
                    continue  # temp files of interrupted atomic writes start with "."
                yield (Path(dirpath) / name).relative_to(self.home).as_posix()

    def _adopt(self, rel: str, report: ReconcileReport) -> None:
        path = self.home / rel
        try:
            owner = self._owner_of(rel)
            record = files.png_record(path)
            self.add_image(path, record, owner)
        except (LimnerError, NotFound) as e:
            self._quarantine(rel, str(e), report)
            return
        report.registered.append(rel)

    def _owner_of(self, rel: str):  # noqa: ANN202 - User
        parts = rel.split("/")
        match = _OWNER_DIR.match(parts[1]) if len(parts) > 2 else None
        if match is None:
            raise LimnerError(f"{rel}: not in an owner folder (images/u<id>/...)")
        try:
            return self.user_by_id(int(match.group(1)))
        except NotFound:
            raise LimnerError(f"{rel}: owner u{match.group(1)} does not exist") from None

    def _quarantine(self, rel: str, reason: str, report: ReconcileReport) -> None:
        dest_dir = self.home / QUARANTINE_DIR / time.strftime("%Y%m%d-%H%M%S")
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / rel.replace("/", "__")
        shutil.move(str(self.home / rel), dest)
        dest.with_name(dest.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
        log.warning("quarantined %s -> %s: %s", rel, dest, reason)
        report.quarantined.append((rel, reason))

    def _flag_missing(self, rows: list[sa.Row], on_disk: set[str], report: ReconcileReport) -> None:
        for r in rows:
            present = r.path in on_disk or (self.home / r.path).is_file()
            if not present and r.missing_at is None:
                report.missing.append(r.id)
            elif present and r.missing_at is not None:
                report.found_again.append(r.id)
        if not (report.missing or report.found_again):
            return
        with self._write() as conn:
            t = time.time()
            for chunk in _chunks(report.missing):
                conn.execute(images.update().where(images.c.id.in_(chunk)).values(missing_at=t))
            for chunk in _chunks(report.found_again):
                conn.execute(images.update().where(images.c.id.in_(chunk)).values(missing_at=None))


def _chunks(ids: list[int], n: int = 500):  # noqa: ANN202
    for i in range(0, len(ids), n):
        yield ids[i:i + n]
