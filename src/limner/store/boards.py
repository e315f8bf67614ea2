"""Boards: named collections of images, shareable with other users as viewer or editor.

The owner and editors add and remove images (only images they can see themselves); viewers
and editors see every image on the board. Only the owner (or an admin) shares or deletes it.
``board_additions`` is what a studio process reads to show members images added through
another process (``limner.server.relay``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import sqlalchemy as sa

from limner.errors import UsageError
from limner.store import db
from limner.store.errors import Forbidden, NotFound
from limner.store.models import Board, BoardRole, User
from limner.store.tables import board_images, board_members, boards, users


@dataclass(frozen=True)
class BoardAddition:
    """An image put on a board at ``added`` (database clock); ``audience``: the users asked
    about who see the board (its owner and members among them)."""

    board_id: int
    image_id: int
    added: float
    audience: tuple[int, ...]


class BoardsPart:
    """Mixed into ``Store``: boards, their images and members."""

    def create_board(self, user: User, name: str) -> Board:
        name = " ".join((name or "").split())
        if not name or len(name) > 256:
            raise UsageError("name: 1-256 characters")
        with self._write() as conn:
            t = db.now(conn)
            bid = conn.execute(boards.insert().values(owner_id=user.id, name=name, created=t)
                               .returning(boards.c.id)).scalar_one()
        return Board(id=bid, owner_id=user.id, name=name, created=t, role="owner")

    def list_boards(self, user: User) -> list[Board]:
        """Boards ``user`` owns or is a member of (an admin: all)."""
        with self._read() as conn:
            q = (sa.select(boards, board_members.c.role.label("member_role"))
                 .outerjoin(board_members, sa.and_(board_members.c.board_id == boards.c.id,
                                                   board_members.c.user_id == user.id)))
            if not user.is_admin:
                q = q.where(sa.or_(boards.c.owner_id == user.id, board_members.c.user_id == user.id))
            rows = conn.execute(q.order_by(boards.c.id)).all()
        return [_board(r, user) for r in rows]

    def get_board(self, user: User, board_id: int) -> Board:
        with self._read() as conn:
            return self._board_role(conn, user, board_id)

    def delete_board(self, user: User, board_id: int) -> None:
        """Delete a board (its images stay in their owners' galleries)."""
        with self._write() as conn:
            board = self._board_role(conn, user, board_id)
            if board.role not in ("owner", "admin"):
                raise Forbidden(f"board {board_id}: only its owner can delete it")
            conn.execute(board_images.delete().where(board_images.c.board_id == board_id))
            conn.execute(board_members.delete().where(board_members.c.board_id == board_id))
            conn.execute(boards.delete().where(boards.c.id == board_id))

    def add_to_board(self, user: User, board_id: int, image_id: int) -> float | None:
        """Put an image the user can see on a board they own or edit (idempotent). Returns the
        time it was added (the key of its live event), None when it was on the board already."""
        with self._write() as conn:
            self._require_edit(conn, user, board_id)
            self._check_visible(conn, user, image_id)
            present = conn.execute(sa.select(board_images.c.image_id).where(
                board_images.c.board_id == board_id, board_images.c.image_id == image_id)).first()
            if present is not None:
                return None
            added = db.now(conn)
            conn.execute(board_images.insert().values(board_id=board_id, image_id=image_id,
                                                      added_by=user.id, added=added))
            return added

    def remove_from_board(self, user: User, board_id: int, image_id: int) -> None:
        with self._write() as conn:
            self._require_edit(conn, user, board_id)
            conn.execute(board_images.delete().where(board_images.c.board_id == board_id,
                                                     board_images.c.image_id == image_id))

    def share_board(self, user: User, board_id: int, username: str, role: BoardRole) -> None:
        """Give ``username`` viewer or editor access (changes the role if already a member)."""
        if role not in ("viewer", "editor"):
            raise UsageError(f"role: 'viewer' or 'editor', not {role!r}")
        with self._write() as conn:
            board = self._board_role(conn, user, board_id)
            if board.role not in ("owner", "admin"):
                raise Forbidden(f"board {board_id}: only its owner can share it")
            member = conn.execute(sa.select(users.c.id).where(users.c.username == username)).scalar()
            if member is None:
                raise NotFound(f"no user {username!r}")
            if member == board.owner_id:
                raise UsageError("username: the board's owner is already on it")
            conn.execute(board_members.delete().where(board_members.c.board_id == board_id,
                                                      board_members.c.user_id == member))
            conn.execute(board_members.insert().values(board_id=board_id, user_id=member, role=role))

    def unshare_board(self, user: User, board_id: int, username: str) -> None:
        with self._write() as conn:
            board = self._board_role(conn, user, board_id)
            if board.role not in ("owner", "admin"):
                raise Forbidden(f"board {board_id}: only its owner can change its members")
            member = conn.execute(sa.select(users.c.id).where(users.c.username == username)).scalar()
            conn.execute(board_members.delete().where(board_members.c.board_id == board_id,
                                                      board_members.c.user_id == member))

    def board_members(self, user: User, board_id: int) -> list[tuple[str, str]]:
        """(username, role) of a board's members, the owner first."""
        with self._read() as conn:
            board = self._board_role(conn, user, board_id)
            owner = conn.execute(sa.select(users.c.username).where(users.c.id == board.owner_id)).scalar_one()
            rows = conn.execute(sa.select(users.c.username, board_members.c.role)
                                .join(board_members, board_members.c.user_id == users.c.id)
                                .where(board_members.c.board_id == board_id).order_by(users.c.username)).all()
        return [(owner, "owner")] + [(r.username, r.role) for r in rows]

    def board_audience(self, board_id: int) -> list[int]:
        """User ids who see a board (owner and members): for the server's live board events."""
        with self._read() as conn:
            owner = conn.execute(sa.select(boards.c.owner_id).where(boards.c.id == board_id)).scalar()
            if owner is None:
                return []
            members = conn.execute(sa.select(board_members.c.user_id)
                                   .where(board_members.c.board_id == board_id)).scalars().all()
        return [owner, *members]

    def board_additions(self, user_ids: Sequence[int], since: float, limit: int = 500) -> list[BoardAddition]:
        """Images put at or after ``since`` (database clock, see ``clock``) on boards that any
        of ``user_ids`` owns or is a member of: the newest ``limit``, oldest first, each with
        the board's audience among ``user_ids``."""
        ids = sorted({int(u) for u in user_ids})
        if not ids:
            return []
        visible = sa.union(sa.select(boards.c.id).where(boards.c.owner_id.in_(ids)),
                           sa.select(board_members.c.board_id).where(board_members.c.user_id.in_(ids)))
        with self._read() as conn:
            rows = conn.execute(
                sa.select(board_images.c.board_id, board_images.c.image_id, board_images.c.added)
                .where(board_images.c.added >= since, board_images.c.board_id.in_(visible))
                .order_by(board_images.c.added.desc(), board_images.c.board_id, board_images.c.image_id)
                .limit(limit)).all()
            board_ids = sorted({r.board_id for r in rows})
            audience: dict[int, set[int]] = {b: set() for b in board_ids}
            if board_ids:
                for b, owner in conn.execute(sa.select(boards.c.id, boards.c.owner_id).where(boards.c.id.in_(board_ids))):
                    audience[b].add(owner)
                for b, member in conn.execute(sa.select(board_members.c.board_id, board_members.c.user_id)
                                              .where(board_members.c.board_id.in_(board_ids))):
                    audience[b].add(member)
        wanted = set(ids)
        return [BoardAddition(r.board_id, r.image_id, float(r.added), tuple(sorted(audience[r.board_id] & wanted)))
                for r in reversed(rows)]

    def boards_of_image(self, image_id: int) -> list[int]:
        with self._read() as conn:
            return list(conn.execute(sa.select(board_images.c.board_id)
                                     .where(board_images.c.image_id == image_id)).scalars())

    def _board_role(self, conn: sa.Connection, user: User, board_id: int) -> Board:
        row = conn.execute(
            sa.select(boards, board_members.c.role.label("member_role"))
            .outerjoin(board_members, sa.and_(board_members.c.board_id == boards.c.id,
                                              board_members.c.user_id == user.id))
            .where(boards.c.id == board_id)).first()
        if row is None or (row.owner_id != user.id and row.member_role is None and not user.is_admin):
            raise NotFound(f"no board {board_id}")
        return _board(row, user)

    def _require_edit(self, conn: sa.Connection, user: User, board_id: int) -> Board:
        board = self._board_role(conn, user, board_id)
        if board.role == "viewer":
            raise Forbidden(f"board {board_id}: viewers cannot change it")
        return board


def _board(row: sa.Row, user: User) -> Board:
    if row.owner_id == user.id:
        role = "owner"
    elif row.member_role is not None:
        role = row.member_role
    else:
        role = "admin"
    return Board(id=row.id, owner_id=row.owner_id, name=row.name, created=row.created, role=role)
