"""The gallery database's tables, as SQLAlchemy Core ``Table`` objects the queries use.

The schema itself is created and changed only by the Alembic migrations in ``migrations/``
(``0001_initial`` and the revisions after it mirror these definitions);
``tests/store/test_schema.py`` checks that the migrated database and this module agree. Times
are UTC seconds since the epoch (float), so comparisons and keyset cursors are plain numbers on
both SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("password_hash", sa.Text, nullable=True),  # argon2id; NULL = cannot log in
    sa.Column("role", sa.String(16), nullable=False),  # "admin" | "user"
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
)

sessions = sa.Table(
    "sessions", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),  # sha256 hex of the cookie value
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
)

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # sha256 hex
    sa.Column("prefix", sa.String(16), nullable=False),  # shown in listings, never the key
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("last_used", sa.Float, nullable=True),
    sa.Column("revoked", sa.Float, nullable=True),
)

images = sa.Table(
    "images", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("path", sa.Text, nullable=False),  # relative to the studio home, "/" separated
    sa.Column("thumb_path", sa.Text, nullable=True),
    sa.Column("record", sa.Text, nullable=False),  # the full generation record (JSON)
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),  # sha256 of mode, size and pixels
    sa.Column("rating", sa.Integer, nullable=True),
    sa.Column("tags", sa.Text, nullable=False, server_default="[]"),  # JSON list of strings
    sa.Column("parent_id", sa.Integer, sa.ForeignKey("images.id"), nullable=True),
    sa.Column("deleted_at", sa.Float, nullable=True),
    sa.Column("missing_at", sa.Float, nullable=True),  # set by the reconciler: file not found
    sa.Column("scores", sa.Text, nullable=True),  # JSON object, e.g. {"clip": 0.31}
    # Denormalised from the record for filters and listings.
    sa.Column("model", sa.String(256), nullable=True),  # the run id
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
    sa.Index("ix_images_owner_id", "owner_id", "id"),
    sa.Index("ix_images_model", "model"),
    sa.Index("ix_images_seed", "seed"),
    sa.Index("ix_images_created", "created"),
    sa.Index("ix_images_parent", "parent_id"),
)

boards = sa.Table(
    "boards", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

board_images = sa.Table(
    "board_images", metadata,
    sa.Column("board_id", sa.Integer, sa.ForeignKey("boards.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("added_by", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("added", sa.Float, nullable=False),
    sa.Index("ix_board_images_image", "image_id"),
    sa.Index("ix_board_images_board_added", "board_id", "added"),  # migration 0002
)

board_members = sa.Table(
    "board_members", metadata,
    sa.Column("board_id", sa.Integer, sa.ForeignKey("boards.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),  # "viewer" | "editor"
    sa.Index("ix_board_members_user", "user_id"),
)

embeddings = sa.Table(
    "embeddings", metadata,
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("model", sa.String(64), nullable=False),  # e.g. "all-MiniLM-L6-v2"
    sa.Column("vector", sa.LargeBinary, nullable=False),  # float32 little-endian, L2-normalised
    # A narrow index, so counting rows (the vector cache's change check) never reads the blobs.
    sa.Index("ix_embeddings_model", "model"),
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String(36), primary_key=True),  # canonical UUID
    sa.Column("kind", sa.String(32), nullable=False),  # "generate" | "train" | "eval" | ...
    sa.Column("payload", sa.Text, nullable=False),  # JSON
    sa.Column("payload_hash", sa.String(64), nullable=False),
    sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("idempotency_key", sa.String(256), nullable=True),
    sa.Column("lease_owner", sa.String(128), nullable=True),  # worker id
    sa.Column("lease_token", sa.String(36), nullable=True),  # changes on every claim
    sa.Column("lease_expires", sa.Float, nullable=True),
    sa.Column("heartbeat", sa.Float, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("progress", sa.Text, nullable=True),  # JSON {"step", "total", ...}
    sa.Column("result", sa.Text, nullable=True),  # JSON
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("started", sa.Float, nullable=True),
    sa.Column("finished", sa.Float, nullable=True),
    sa.UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idem"),
    sa.Index("ix_jobs_state", "state", "priority", "created"),
    sa.Index("ix_jobs_owner", "owner_id", "created"),
)
