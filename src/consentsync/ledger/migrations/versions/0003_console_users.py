"""ops console: local accounts, login throttling, retry requests for quarantined records

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 21:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_users")),
        sa.UniqueConstraint("name", name=op.f("uq_console_users_name")),
    )
    op.create_table(
        "console_login_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        # The account name tried and the client address, each as a SHA-256: throttling needs
        # to count them, not to know them.
        sa.Column("name_digest", sa.String(length=64), nullable=False),
        sa.Column("client_digest", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_login_failures")),
    )
    op.create_index(
        "ix_console_login_failures_name_digest_at", "console_login_failures", ["name_digest", "at"]
    )
    op.create_index(
        "ix_console_login_failures_client_digest_at", "console_login_failures", ["client_digest", "at"]
    )
    with op.batch_alter_table("quarantine") as batch:
        batch.add_column(sa.Column("retry_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("retry_requested_by", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("quarantine") as batch:
        batch.drop_column("retry_requested_by")
        batch.drop_column("retry_requested_at")
    op.drop_index("ix_console_login_failures_client_digest_at", table_name="console_login_failures")
    op.drop_index("ix_console_login_failures_name_digest_at", table_name="console_login_failures")
    op.drop_table("console_login_failures")
    op.drop_table("console_users")
