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


def upgrade() -> None:
    with op.batch_alter_table("crm_links") as batch:
        batch.add_column(sa.Column("merged_into_object", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("crm_links") as batch:
        batch.drop_column("merged_into_object")
