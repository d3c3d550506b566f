"""crm_links.record_created_at: when the CRM created a linked record, where it says

An erasure's delete or anonymise reached whatever record its person was linked to when the sync
looked, whenever the CRM had made it: a record a CRM user created after the erasure for a person
met again (their new sign-up at an event) was deleted by the next sync, and a record the CRM held
before an erasure of an address the ledger did not know yet (asked for before the first sync read
it) was only suppressed, its personal data kept. Now the action reaches the records the CRM held
when the erasure was made (docs/policy.md, "Erasure"): by this column where the CRM says when it
created the record (``CrmRecord.created_at``), else by ``linked_at``, the time the ledger first
knew the record.

Existing rows: NULL (the record was linked before this revision; ``linked_at`` decides, as before
for records linked before an erasure). Downgrading drops the column; the older code acts on every
linked record again.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-09 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable and added in place (no batch rebuild: the links' rows are referenced).
    op.add_column("crm_links", sa.Column("record_created_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("crm_links", "record_created_at")
