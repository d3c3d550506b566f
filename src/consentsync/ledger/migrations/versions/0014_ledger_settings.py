"""ledger settings: the erasure key's check value

A ledger's suppressions (HMACs of the erased addresses), the pseudonyms kept beside CRM
snapshots, console accounts and preference links are all keyed by the erasure key; nothing
recorded which key. A process opening the ledger with another one (CONSENTSYNC_ERASURE_KEY set
in a container, winning over ``secrets.erasure_hmac_key_file`` an admin shell reads; a rotated or
mistyped key) no longer recognised the erased people and imported them again from the CRMs.
``ledger_settings`` holds the key's check value (``app.erasure_key_check``: an HMAC of a fixed
text under the key, truncated, never the key), stored the first time a key opens the ledger and
compared on every opening after.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_settings",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_ledger_settings")),
    )


def downgrade() -> None:
    op.drop_table("ledger_settings")
