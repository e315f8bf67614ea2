"""index board additions by board and time (the studio relay reads recent additions)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

Each studio process asks a few times a second which images were added to the boards of its
connected users in the last seconds (``Store.board_additions``); with this index that is a
range scan per board instead of a read of every image on the board.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_board_images_board_added", "board_images", ["board_id", "added"])


def downgrade() -> None:
    op.drop_index("ix_board_images_board_added", table_name="board_images")
