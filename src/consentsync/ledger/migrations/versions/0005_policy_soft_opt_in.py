"""precedence policy (issue 12): the PECR / ePrivacy soft opt-in as a first-class record on each
consent event (its three conditions, each with its evidence), and each purpose's ePrivacy setting

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SOFT_OPT_IN_COLUMNS = (
    "soft_opt_in_sale_ref",
    "soft_opt_in_similar_products",
    "soft_opt_in_refusal_at_collection",
    "soft_opt_in_refusal_in_messages",
)


def upgrade() -> None:
    # consent_events is append-only (triggers): plain ADD COLUMN keeps its triggers on SQLite,
    # where a batch (copy-and-rename) would drop them.
    for name in SOFT_OPT_IN_COLUMNS:
        op.add_column("consent_events", sa.Column(name, sa.String(length=200), nullable=True))
    op.add_column("purposes", sa.Column("eprivacy", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE purposes DROP COLUMN eprivacy")
    for name in reversed(SOFT_OPT_IN_COLUMNS):
        op.execute(f"ALTER TABLE consent_events DROP COLUMN {name}")
