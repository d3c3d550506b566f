"""crm_links: the object of the record a record went into, where it is another object

A record merged away names its survivor (``merged_into``), a record of the same object. A lead
converted into a contact (Salesforce's ``ConvertedContactId``) went into a record of another
object: ``merged_into_object`` names it, so that the lead's no reaches the contact's person as a
merge's does, and the engine never takes the contact's id for a lead's. NULL: the same object
(every merge before this revision).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both databases (SQLite drops a column itself since 3.35): a batch
# rebuild of crm_links would drop the table that crm_snapshots and the outbox reference, which
# the ledger's foreign keys refuse.


def upgrade() -> None:
    op.add_column("crm_links", sa.Column("merged_into_object", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("crm_links", "merged_into_object")
