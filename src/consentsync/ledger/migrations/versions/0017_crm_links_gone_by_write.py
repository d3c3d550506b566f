"""crm_links: a record known gone from a write's answer only

A write the CRM answered "no such record" marks the record gone (nothing more is pushed to it),
as a deletion listing would have. ``gone_by_write`` says that no listing has named it yet: when
one does, with the record's last values (a recycle bin, archived contacts), a no ticked on it
before the deletion is still taken, and a merge's survivor is still recorded. NULL: gone by a
listing, or by this project's own delete (every gone link before this revision).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 15:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both databases, as 0016: a batch rebuild of crm_links would drop the table
# that crm_snapshots and the outbox reference, which the ledger's foreign keys refuse.


def upgrade() -> None:
    op.add_column("crm_links", sa.Column("gone_by_write", sa.Boolean, nullable=True))


def downgrade() -> None:
    op.drop_column("crm_links", "gone_by_write")
