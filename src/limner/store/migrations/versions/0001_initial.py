"""initial gallery schema: users, sessions, api keys, images (+ full-text index), boards,
embeddings, jobs

Revision ID: 0001
Revises:
Create Date: 2026-12-04

Full text: SQLite gets an external-content FTS5 table kept in step by triggers; PostgreSQL a
stored generated ``tsvector`` column with a GIN index. Both use the 'simple' behaviour
(lower-casing, no stemming, no stop words) so a query means the same thing on each.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("last_used", sa.Float, nullable=True),
        sa.Column("revoked", sa.Float, nullable=True),
    )
    _images()
    op.create_table(
        "boards",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_table(
        "board_images",
        sa.Column("board_id", sa.Integer, sa.ForeignKey("boards.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("added_by", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("added", sa.Float, nullable=False),
        sa.Index("ix_board_images_image", "image_id"),
    )
    op.create_table(
        "board_members",
        sa.Column("board_id", sa.Integer, sa.ForeignKey("boards.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Index("ix_board_members_user", "user_id"),
    )
    op.create_table(
        "embeddings",
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_embeddings_model", "embeddings", ["model"])
    _jobs()


def _images() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("thumb_path", sa.Text, nullable=True),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("rating", sa.Integer, nullable=True),
        sa.Column("tags", sa.Text, nullable=False, server_default="[]"),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("images.id"), nullable=True),
        sa.Column("deleted_at", sa.Float, nullable=True),
        sa.Column("missing_at", sa.Float, nullable=True),
        sa.Column("scores", sa.Text, nullable=True),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("family", sa.String(64), nullable=True),
        sa.Column("seed", sa.BigInteger, nullable=True),
        sa.Column("sampler", sa.String(64), nullable=True),
        sa.Column("steps", sa.Integer, nullable=True),
        sa.Column("cfg", sa.Float, nullable=True),
        sa.Column("width", sa.Integer, nullable=True),
        sa.Column("height", sa.Integer, nullable=True),
        sa.Column("prompt", sa.Text, nullable=True),
        sa.Column("negative", sa.Text, nullable=True),
        sa.UniqueConstraint("owner_id", "content_hash", name="uq_images_owner_hash"),
        sa.UniqueConstraint("path", name="uq_images_path"),
    )
    op.create_index("ix_images_owner_id", "images", ["owner_id", "id"])
    op.create_index("ix_images_model", "images", ["model"])
    op.create_index("ix_images_seed", "images", ["seed"])
    op.create_index("ix_images_created", "images", ["created"])
    op.create_index("ix_images_parent", "images", ["parent_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE images ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS "
            "(to_tsvector('simple', coalesce(prompt, '') || ' ' || coalesce(negative, ''))) STORED"
        )
        op.execute("CREATE INDEX ix_images_search_tsv ON images USING gin (search_tsv)")
    else:
        _sqlite_fts()


def _sqlite_fts() -> None:
    # External-content FTS5 table (the text lives once, in images); triggers keep it in step.
    # remove_diacritics 0 matches PostgreSQL's 'simple' configuration ("café" != "cafe").
    op.execute(
        "CREATE VIRTUAL TABLE images_fts USING fts5(prompt, negative, content='images', "
        "content_rowid='id', tokenize=\"unicode61 remove_diacritics 0\")"
    )
    op.execute(
        "CREATE TRIGGER images_fts_ai AFTER INSERT ON images BEGIN "
        "INSERT INTO images_fts(rowid, prompt, negative) VALUES (new.id, new.prompt, new.negative); END"
    )
    op.execute(
        "CREATE TRIGGER images_fts_ad AFTER DELETE ON images BEGIN "
        "INSERT INTO images_fts(images_fts, rowid, prompt, negative) "
        "VALUES ('delete', old.id, old.prompt, old.negative); END"
    )
    op.execute(
        "CREATE TRIGGER images_fts_au AFTER UPDATE OF prompt, negative ON images BEGIN "
        "INSERT INTO images_fts(images_fts, rowid, prompt, negative) "
        "VALUES ('delete', old.id, old.prompt, old.negative); "
        "INSERT INTO images_fts(rowid, prompt, negative) VALUES (new.id, new.prompt, new.negative); END"
    )


def _jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("idempotency_key", sa.String(256), nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_token", sa.String(36), nullable=True),
        sa.Column("lease_expires", sa.Float, nullable=True),
        sa.Column("heartbeat", sa.Float, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("progress", sa.Text, nullable=True),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("started", sa.Float, nullable=True),
        sa.Column("finished", sa.Float, nullable=True),
        sa.UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idem"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state", "priority", "created"])
    op.create_index("ix_jobs_owner", "jobs", ["owner_id", "created"])


def downgrade() -> None:
    for name in ("jobs", "embeddings", "board_members", "board_images", "boards"):
        op.drop_table(name)
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS images_fts")
    for name in ("images", "api_keys", "sessions", "users"):
        op.drop_table(name)
