"""crm_snapshots: a partial index of the shared records' snapshots

An erasure has every connector examine the people whose records point to a record of the erased
person (a Salesforce Individual two people's Contacts point to: sync/shared.py), found by their
ids on the shared record's snapshot, whose fields text then starts with a marker key
(``shared_marker.SHARED_PREFIX``). Finding those snapshots read the text of every snapshot, on
each erasure (about 0.1 s at 300,000 snapshots on either database, growing with the ledger).
``ix_crm_snapshots_shared`` holds only them, by the same condition the query writes
(``substr(fields, 1, 21) = <the marker's start>``: both planners match a partial index's
condition to the query's terms).

No row is touched. Building it reads the snapshots once. Downgrading drops it; the older code
reads every snapshot again.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 18:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

# Written out, not read from schema.py or shared_marker.py (a revision is a record: a later change
# there must not change what it created). The start of canonical JSON of {"\x00shared_with": ...}:
# the NUL escaped, so ASCII (PostgreSQL's text holds no NUL).
_PREFIX = '{"\\u0000shared_with":'
# On PostgreSQL an escape string, its backslash doubled: read alike whatever the server's
# standard_conforming_strings says (off, a plain literal's "\u0000" is an escape it refuses).
_SHARED = {
    "sqlite": f"substr(fields, 1, {len(_PREFIX)}) = '{_PREFIX}'",
    "postgresql": f"substr(fields, 1, {len(_PREFIX)}) = E'{_PREFIX.replace(chr(92), chr(92) * 2)}'",
}


def upgrade() -> None:
    op.create_index(
        "ix_crm_snapshots_shared",
        "crm_snapshots",
        ["link_id"],
        sqlite_where=sa.text(_SHARED["sqlite"]),
        postgresql_where=sa.text(_SHARED["postgresql"]),
    )


def downgrade() -> None:
    op.drop_index("ix_crm_snapshots_shared", table_name="crm_snapshots")
