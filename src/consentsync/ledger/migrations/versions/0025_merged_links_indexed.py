"""crm_links: a partial index of the links of records merged into others

An erasure's delete or anonymise spares a merge's survivor holding a merged record of a person not
erased (sync/engine.py ``_merged_into``, docs/policy.md, Merges), and an erasure has the people
holding the survivors of the erased people's merged records examined again
(``ledger/merge_survivors.py``). Both look links up by ``merged_into`` (the survivor's record id),
following chains of merges. ``ix_crm_links_merged_into`` on (connector, merged_into) holds the
merged links only (``merged_into IS NOT NULL``, implied by the lookups' ``merged_into IN (...)``
on either database): without it each lookup read every link of the connector (SQLite and
PostgreSQL both searched the unique index by its connector alone).

No row is touched. Building it reads the links once. Downgrading drops it.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 19:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

_MERGED = "merged_into IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_crm_links_merged_into",
        "crm_links",
        ["connector", "merged_into"],
        sqlite_where=sa.text(_MERGED),
        postgresql_where=sa.text(_MERGED),
    )


def downgrade() -> None:
    op.drop_index("ix_crm_links_merged_into", table_name="crm_links")
