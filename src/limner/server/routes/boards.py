"""Boards: named collections of images, shared with other users as viewers or editors. Members
connected to ``/api/events`` see images added to a board live (``board_image`` events), on
whichever studio process they are connected to."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from limner.jobs.events import board_image_event
from limner.jobs.views import image_summary
from limner.server.deps import StudioDep, UserDep
from limner.server.schemas import Id, BoardCreate, BoardImageAdd, BoardMemberAdd, BoardOut

router = APIRouter(prefix="/api", tags=["boards"])


def board_out(board: Any) -> dict[str, Any]:
    return {"id": board.id, "name": board.name, "owner_id": board.owner_id, "created": board.created,
            "role": board.role}


@router.get("/boards", response_model=list[BoardOut])
def list_boards(user: UserDep, studio: StudioDep) -> list[dict[str, Any]]:
    """Boards the user owns or was given access to, with the user's role on each."""
    return [board_out(b) for b in studio.store.list_boards(user)]


@router.post("/boards", response_model=BoardOut, status_code=201)
def create_board(body: BoardCreate, user: UserDep, studio: StudioDep) -> dict[str, Any]:
    return board_out(studio.store.create_board(user, body.name))


@router.get("/boards/{board_id}", response_model=dict[str, Any])
def get_board(board_id: Id, user: UserDep, studio: StudioDep) -> dict[str, Any]:
    """A board and its members (its images: ``GET /api/images?board={id}``)."""
    out = board_out(studio.store.get_board(user, board_id))
    out["members"] = [{"username": n, "role": r} for n, r in studio.store.board_members(user, board_id)]
    return out


@router.delete("/boards/{board_id}", status_code=204)
def delete_board(board_id: Id, user: UserDep, studio: StudioDep) -> Response:
    """Delete a board (owner or admin); its images stay in their owners' galleries."""
    studio.store.delete_board(user, board_id)
    return Response(status_code=204)


@router.post("/boards/{board_id}/images", status_code=201, response_model=dict[str, Any])
def add_image(board_id: Id, body: BoardImageAdd, user: UserDep, studio: StudioDep) -> dict[str, Any]:
    """Put an image you can see on a board you own or edit (idempotent); members see it live
    (members connected to this studio process at once, those on other processes through the
    store relay)."""
    added = studio.store.add_to_board(user, board_id, body.image_id)
    summary = image_summary(studio.store.get_image(user, body.image_id))
    if added is not None:
        studio.hub.publish(studio.store.board_audience(board_id), board_image_event(board_id, summary, added))
    return {"board_id": board_id, "image": summary}


@router.delete("/boards/{board_id}/images/{image_id}", status_code=204)
def remove_image(board_id: Id, image_id: Id, user: UserDep, studio: StudioDep) -> Response:
    studio.store.remove_from_board(user, board_id, image_id)
    return Response(status_code=204)


@router.post("/boards/{board_id}/members", status_code=201, response_model=dict[str, Any])
def share(board_id: Id, body: BoardMemberAdd, user: UserDep, studio: StudioDep) -> dict[str, Any]:
    """Share a board with a user as viewer or editor (changes the role if already a member)."""
    studio.store.share_board(user, board_id, body.username, body.role)
    return {"board_id": board_id, "username": body.username, "role": body.role}


@router.delete("/boards/{board_id}/members/{username}", status_code=204)
def unshare(board_id: Id, username: str, user: UserDep, studio: StudioDep) -> Response:
    studio.store.unshare_board(user, board_id, username)
    return Response(status_code=204)
