"""Gallery images: add (file first, then row), read, rate and tag, soft delete, versions.

The file is always written before its row is committed (the caller writes the PNG, then calls
``add_image``); a crash between the two leaves an orphan file, which ``reconcile`` registers
from the record embedded in it. Identical pixels are stored once per owner: adding them again
returns the existing image (and removes the duplicate file the caller wrote inside the home).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import sqlalchemy as sa

from limner.errors import UsageError
from limner.store import db, files
from limner.store.errors import NotFound
from limner.store.models import Image, User
from limner.store.tables import board_images, board_members, boards, embeddings, images

log = logging.getLogger(__name__)

CRASH_ENV = "LIMNER_STORE_CRASH_AT"  # fault-injection hook for the crash tests (see _crash_point)
MAX_TAGS, MAX_TAG_LEN = 64, 64
IMAGE_DIR, THUMB_DIR, QUARANTINE_DIR = "images", "thumbs", "quarantine"
UNSET = object()  # "not given", where None is a value (clearing a rating)

# Record field -> denormalised column.
_RECORD_COLUMNS = {"run_id": "model", "family": "family", "seed": "seed", "sampler": "sampler",
                   "steps": "steps", "cfg": "cfg", "width": "width", "height": "height",
                   "prompt": "prompt", "negative": "negative"}
_SUMMARY = [c for c in images.c if c.name != "record"]


def _crash_point(name: str) -> None:
    """Exit the process abruptly at ``name`` when LIMNER_STORE_CRASH_AT names it (tests only)."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(137)


def record_columns(record: dict[str, Any]) -> dict[str, Any]:
    """The denormalised filter columns of a generation record (missing fields -> None)."""
    out = {col: record.get(key) for key, col in _RECORD_COLUMNS.items()}
    for col, kind in (("seed", int), ("steps", int), ("width", int), ("height", int), ("cfg", float)):
        try:
            out[col] = kind(out[col]) if out[col] is not None else None
        except (TypeError, ValueError):
            out[col] = None
    for col in ("model", "family", "sampler", "prompt", "negative"):
        if out[col] is not None and not isinstance(out[col], str):
            out[col] = str(out[col])
    return out


def row_to_image(row: sa.Row, with_record: bool = False, score: float | None = None) -> Image:
    m = row._mapping
    return Image(
        id=m["id"], owner_id=m["owner_id"], path=m["path"], thumb_path=m["thumb_path"],
        created=m["created"], content_hash=m["content_hash"], rating=m["rating"],
        tags=json.loads(m["tags"] or "[]"), parent_id=m["parent_id"], deleted_at=m["deleted_at"],
        missing_at=m["missing_at"], scores=json.loads(m["scores"]) if m["scores"] else None,
        model=m["model"], family=m["family"], seed=m["seed"], sampler=m["sampler"],
        steps=m["steps"], cfg=m["cfg"], width=m["width"], height=m["height"],
        prompt=m["prompt"], negative=m["negative"],
        record=json.loads(m["record"]) if with_record else None, score=score,
    )


def visible_clause(user: User) -> sa.ColumnElement[bool]:
    """Images ``user`` may see: their own, and those on boards they own or are members of
    (an admin sees every image)."""
    if user.is_admin:
        return sa.true()
    member_boards = sa.select(board_members.c.board_id).where(board_members.c.user_id == user.id)
    own_boards = sa.select(boards.c.id).where(boards.c.owner_id == user.id)
    shared = sa.select(board_images.c.image_id).where(
        sa.or_(board_images.c.board_id.in_(member_boards), board_images.c.board_id.in_(own_boards)))
    return sa.or_(images.c.owner_id == user.id, images.c.id.in_(shared))


def _clean_tags(tags: Iterable[str]) -> list[str]:
    out: list[str] = []
    for t in tags:
        if not isinstance(t, str):
            raise UsageError("tags: each tag must be a string")
        t = " ".join(t.split())
        if not t or len(t) > MAX_TAG_LEN:
            raise UsageError(f"tags: each tag 1-{MAX_TAG_LEN} characters")
        if t not in out:
            out.append(t)
    if len(out) > MAX_TAGS:
        raise UsageError(f"tags: at most {MAX_TAGS}")
    return out


class ImagesPart:
    """Mixed into ``Store``: the images table and the files it points at."""

    def new_image_path(self, owner: User, stem: str | None = None) -> Path:
        """Where a new image of ``owner`` should be written: ``images/u<id>/<date>/<stem>.png``
        (the owner's id in the path lets the reconciler register an orphan for its owner)."""
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        stem = stem or uuid.uuid4().hex
        if not stem or "/" in stem or "\\" in stem or stem.startswith("."):
            raise UsageError(f"image name {stem!r}: no path separators or leading dot")
        return self.home / IMAGE_DIR / f"u{owner.id}" / day / f"{stem}.png"

    def add_image(self, png_path: Path, record: dict[str, Any], owner: User, thumb: Path | None = None,
                  *, parent_id: int | None = None, scores: dict[str, Any] | None = None,
                  created: float | None = None) -> int:
        """Register an image file already written under the home; returns the image id.

        Args:
            png_path: the PNG (with its embedded record) inside the studio home.
            record: the full generation record (``GenerationRecord`` as a dict).
            owner: the user the image belongs to.
            thumb: a thumbnail already written under the home; None makes one.
            parent_id: the image this one was regenerated from (versions); must be visible.
            scores: optional quality scores, e.g. {"clip": 0.31}.
            created: creation time (epoch seconds); default now.
        Identical pixels already in ``owner``'s gallery return that image's id instead.
        """
        png_path = Path(png_path)
        rel = files.relative_to_home(self.home, png_path)
        pixels = files.decode_for_store(png_path)
        digest = files.pixel_hash(pixels)
        existing = self._image_by_hash(owner.id, digest)
        if existing is not None:
            self._drop_duplicate_file(existing, rel, thumb)
            return existing
        rel_thumb = self._thumb_for(pixels, rel, thumb)
        vector = self._embed_one(record.get("prompt"))
        _crash_point("add_image.before_commit")
        try:
            with self._write() as conn:
                if parent_id is not None:
                    self._check_visible(conn, owner, parent_id)
                image_id = self._insert_image(conn, owner.id, rel, rel_thumb, record, digest,
                                              parent_id, scores, created)
                if vector is not None:
                    conn.execute(embeddings.insert().values(image_id=image_id, model=self.embedder_name,
                                                            vector=vector.tobytes()))
        except sa.exc.IntegrityError:
            again = self._image_by_hash(owner.id, digest)  # a concurrent add of the same pixels won
            if again is None:
                raise
            self._drop_duplicate_file(again, rel, thumb)
            return again
        return image_id

    def bulk_add(self, owner: User, entries: list[dict[str, Any]]) -> list[int]:
        """Register many images in one transaction without decoding their files: for bulk
        importers and benchmarks that already know each file's ``content_hash``. Each entry:
        ``path`` (relative to the home), ``record``, ``content_hash``, and optionally
        ``thumb_path``, ``created``, ``vector`` (float32 [D]). Duplicates are not merged: a
        repeated (owner, content_hash) fails the whole batch."""
        if not entries:
            return []
        rows = [self._image_values(owner.id, e["path"], e.get("thumb_path"), e["record"], e["content_hash"],
                                   None, None, e.get("created") or time.time()) for e in entries]
        with self._write() as conn:
            ids = list(conn.execute(images.insert().returning(images.c.id, sort_by_parameter_order=True),
                                    rows).scalars())
            vectors = [{"image_id": i, "model": self.embedder_name,
                        "vector": np.ascontiguousarray(e["vector"], dtype="<f4").tobytes()}
                       for i, e in zip(ids, entries) if e.get("vector") is not None]
            if vectors:
                conn.execute(embeddings.insert(), vectors)
        return ids

    def _insert_image(self, conn: sa.Connection, owner_id: int, rel: str, rel_thumb: str | None,
                      record: dict[str, Any], digest: str, parent_id: int | None,
                      scores: dict[str, Any] | None, created: float | None) -> int:
        values = self._image_values(owner_id, rel, rel_thumb, record, digest, parent_id, scores,
                                    created if created is not None else db.now(conn))
        return conn.execute(images.insert().values(**values).returning(images.c.id)).scalar_one()

    @staticmethod
    def _image_values(owner_id: int, rel: str, rel_thumb: str | None, record: dict[str, Any], digest: str,
                      parent_id: int | None, scores: dict[str, Any] | None, created: float) -> dict[str, Any]:
        return dict(owner_id=owner_id, path=rel, thumb_path=rel_thumb,
                    record=json.dumps(record, sort_keys=True, ensure_ascii=False), created=created,
                    content_hash=digest, tags="[]", parent_id=parent_id,
                    scores=json.dumps(scores) if scores else None, **record_columns(record))

    def _image_by_hash(self, owner_id: int, digest: str) -> int | None:
        with self._read() as conn:
            return conn.execute(sa.select(images.c.id).where(
                images.c.owner_id == owner_id, images.c.content_hash == digest)).scalar()

    def _drop_duplicate_file(self, image_id: int, rel: str, thumb: Path | None) -> None:
        with self._read() as conn:
            kept = conn.execute(sa.select(images.c.path, images.c.thumb_path)
                                .where(images.c.id == image_id)).one()
        if kept.path != rel and rel.startswith(IMAGE_DIR + "/"):
            if not (self.home / kept.path).is_file():  # the kept row lost its file: adopt this one
                with self._write() as conn:
                    conn.execute(images.update().where(images.c.id == image_id)
                                 .values(path=rel, missing_at=None))
                return
            (self.home / rel).unlink(missing_ok=True)
        if thumb is not None:
            rel_t = files.relative_to_home(self.home, Path(thumb))
            if rel_t != kept.thumb_path:
                Path(thumb).unlink(missing_ok=True)

    def _thumb_for(self, pixels: Any, rel: str, thumb: Path | None) -> str | None:
        if thumb is not None:
            return files.relative_to_home(self.home, Path(thumb))
        name = rel[len(IMAGE_DIR) + 1:] if rel.startswith(IMAGE_DIR + "/") else rel
        dest = self.home / THUMB_DIR / name
        files.write_thumbnail(pixels, dest.with_suffix(".png"))
        return files.relative_to_home(self.home, dest.with_suffix(".png"))

    def _embed_one(self, text: str | None) -> np.ndarray | None:
        if self.embedder is None or not text:
            return None
        return np.ascontiguousarray(np.asarray(self.embedder([text]), dtype="<f4")[0])

    def _check_visible(self, conn: sa.Connection, user: User, image_id: int) -> sa.Row:
        row = conn.execute(sa.select(*_SUMMARY).where(images.c.id == image_id, visible_clause(user))).first()
        if row is None:
            raise NotFound(f"no image {image_id}")
        return row

    def _check_owned(self, conn: sa.Connection, user: User, image_id: int) -> sa.Row:
        """The row of an image ``user`` may change (owner or admin); others are NotFound."""
        where = [images.c.id == image_id]
        if not user.is_admin:
            where.append(images.c.owner_id == user.id)
        row = conn.execute(sa.select(*_SUMMARY).where(*where)).first()
        if row is None:
            raise NotFound(f"no image {image_id}")
        return row

    def get_image(self, user: User, image_id: int, *, include_deleted: bool = False) -> Image:
        """One image with its full record (NotFound if absent, deleted, or not visible)."""
        with self._read() as conn:
            row = conn.execute(sa.select(images).where(images.c.id == image_id, visible_clause(user))).first()
        if row is None or (row.deleted_at is not None and not include_deleted):
            raise NotFound(f"no image {image_id}")
        return row_to_image(row, with_record=True)

    def image_file(self, user: User, image_id: int, *, thumb: bool = False) -> Path:
        """The absolute path of an image's file (or thumbnail), contained in the home."""
        img = self.get_image(user, image_id)
        rel = img.thumb_path if thumb else img.path
        if rel is None:
            raise NotFound(f"image {image_id} has no thumbnail")
        path = files.resolve_in_home(self.home, rel)
        if not path.is_file():
            raise NotFound(f"image {image_id}: file {rel} is missing")
        return path

    def update_image(self, user: User, image_id: int, *, rating: int | None | object = UNSET,
                     tags: list[str] | None = None, scores: dict[str, Any] | None = None) -> Image:
        """Set rating (0-5, or None to clear; left alone when not given), tags (replaces the
        list) and/or scores."""
        values: dict[str, Any] = {}
        if rating is not UNSET:
            if rating is not None and (not isinstance(rating, int) or isinstance(rating, bool)
                                       or not 0 <= rating <= 5):
                raise UsageError("rating: an integer from 0 to 5, or null")
            values["rating"] = rating
        if tags is not None:
            values["tags"] = json.dumps(_clean_tags(tags), ensure_ascii=False)
        if scores is not None:
            values["scores"] = json.dumps(scores)
        with self._write() as conn:
            self._check_owned(conn, user, image_id)
            if values:
                conn.execute(images.update().where(images.c.id == image_id).values(**values))
        return self.get_image(user, image_id, include_deleted=True)

    def delete_image(self, user: User, image_id: int) -> None:
        """Soft delete (idempotent); ``restore_image`` undoes it, ``purge_image`` is final."""
        with self._write() as conn:
            row = self._check_owned(conn, user, image_id)
            if row.deleted_at is None:
                conn.execute(images.update().where(images.c.id == image_id).values(deleted_at=db.now(conn)))

    def restore_image(self, user: User, image_id: int) -> None:
        with self._write() as conn:
            self._check_owned(conn, user, image_id)
            conn.execute(images.update().where(images.c.id == image_id).values(deleted_at=None))

    def purge_image(self, user: User, image_id: int) -> None:
        """Remove an image for good: row, file and thumbnail (children keep, unlinked)."""
        with self._write() as conn:
            row = self._check_owned(conn, user, image_id)
            conn.execute(images.update().where(images.c.parent_id == image_id).values(parent_id=None))
            conn.execute(images.delete().where(images.c.id == image_id))
        for rel in (row.path, row.thumb_path):
            if rel:
                try:
                    files.resolve_in_home(self.home, rel).unlink(missing_ok=True)
                except Exception as e:  # noqa: BLE001 - the row is gone; a stray file is logged
                    log.warning("image %s: could not remove %s (%s)", image_id, rel, e)

    def link_version(self, user: User, image_id: int, parent_id: int | None) -> None:
        """Make ``image_id`` a version of ``parent_id`` (None unlinks); cycles are refused."""
        with self._write() as conn:
            self._check_owned(conn, user, image_id)
            if parent_id is not None:
                self._check_visible(conn, user, parent_id)
                node: int | None = parent_id
                while node is not None:
                    if node == image_id:
                        raise UsageError("parent_id: would make an image its own ancestor")
                    node = conn.execute(sa.select(images.c.parent_id).where(images.c.id == node)).scalar()
            conn.execute(images.update().where(images.c.id == image_id).values(parent_id=parent_id))

    def versions(self, user: User, image_id: int) -> list[Image]:
        """The version chain through ``image_id``: its ancestors, itself and its descendants,
        oldest first (only those ``user`` may see)."""
        with self._read() as conn:
            self._check_visible(conn, user, image_id)
            root = image_id
            while (p := conn.execute(sa.select(images.c.parent_id).where(images.c.id == root)).scalar()) is not None:
                root = p
            ids, frontier = [root], [root]
            while frontier:
                frontier = list(conn.execute(sa.select(images.c.id).where(images.c.parent_id.in_(frontier))).scalars())
                ids.extend(frontier)
            rows = conn.execute(sa.select(*_SUMMARY).where(images.c.id.in_(ids), visible_clause(user),
                                                           images.c.deleted_at.is_(None))
                                .order_by(images.c.id)).all()
        return [row_to_image(r) for r in rows]

    def backfill_embeddings(self, batch: int = 256) -> int:
        """Embed the prompts of images that have no vector yet; returns how many were added."""
        if self.embedder is None:
            return 0
        done = 0
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    sa.select(images.c.id, images.c.prompt)
                    .where(images.c.prompt.is_not(None), images.c.prompt != "",
                           ~images.c.id.in_(sa.select(embeddings.c.image_id)))
                    .order_by(images.c.id).limit(batch)).all()
            if not rows:
                return done
            vecs = np.asarray(self.embedder([r.prompt for r in rows]), dtype="<f4")
            with self._write() as conn:
                for r, v in zip(rows, vecs):
                    conn.execute(embeddings.insert().values(image_id=r.id, model=self.embedder_name,
                                                            vector=np.ascontiguousarray(v).tobytes()))
            done += len(rows)
