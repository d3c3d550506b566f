"""the hub: API keys per capture source, idempotent captures, notices, confirmations by link

API keys keep only a SHA-256 of the key; captures retried with an Idempotency-Key keep their first
answer; notice texts are versioned and content-hashed per purpose and language; a double opt-in
or an erasure asked for on the preference page waits in ``confirmations`` until its mailed link
is followed (the table keeps the link token's SHA-256 only).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("purposes", sa.Text(), nullable=False),
        sa.Column("actions", sa.Text(), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("rate_per_minute", sa.Integer(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.Column("last_used_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("name", name=op.f("uq_api_keys_name")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "capture_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name=op.f("fk_capture_requests_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_capture_requests")),
        sa.UniqueConstraint(
            "key_id", "idempotency_key", name=op.f("uq_capture_requests_key_id_idempotency_key")
        ),
    )
    op.create_table(
        "notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notices")),
        sa.UniqueConstraint(
            "purpose", "version", "language", name=op.f("uq_notices_purpose_version_language")
        ),
    )
    op.create_table(
        "confirmations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=True),
        sa.Column("notice_version", sa.String(length=100), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("requested_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("confirmed_at", TZ, nullable=True),
        sa.Column("lapsed_at", TZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name=op.f("fk_confirmations_subject_id_subjects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_confirmations")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_confirmations_token_hash")),
    )
    op.create_index("ix_confirmations_subject_id", "confirmations", ["subject_id"])
    op.create_index("ix_confirmations_open", "confirmations", ["confirmed_at", "lapsed_at", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_confirmations_open", table_name="confirmations")
    op.drop_index("ix_confirmations_subject_id", table_name="confirmations")
    op.drop_table("confirmations")
    op.drop_table("notices")
    op.drop_table("capture_requests")
    op.drop_table("api_keys")
