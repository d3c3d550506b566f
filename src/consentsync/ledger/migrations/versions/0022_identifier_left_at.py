"""subject_identifiers.left_at: an address its person left, kept; crm_snapshots.identity indexed

Whether a person still holds an address was recomputed from their live CRM records at each
question ("none was last read showing it, one shows another"), so it vanished with its evidence:
the new owner of a recycled mailbox filling a web-to-lead form with it (the sync links that lead
to the person: an address has one holder), the re-addressed record blanked or deleted. The old
mailbox's links worked again and its grant reversed the person's no. Worse, a record taking a
malformed address or another person's left the person holding no address at all: nothing was
mailed to them, no way to withdraw through the hub (Art. 7(3), Art. 12(2)).

``left_at`` keeps the fact (docs/policy.md, "An address a person no longer holds"): set by the sync
when a record known by its id as the person's, last read showing the address, is read showing
another address of their own (and no live record of theirs shows it); cleared only when a record
known by its id as theirs shows it again. Each change is bound in the chain
(``subject.identifier_left``, ``subject.identifier_held_again``; ``audit verify`` holds the
column to them).

Existing rows: the records' snapshots keep the address as a keyed hash under the erasure key,
which a migration never sees. The flag is set once, at the first open of the ledger after this
revision (``identity.backfill_left``, best effort): an address is left where none of its person's
live records was last read showing it and one shows another address of their own (the rule
before this revision, less another person's address, a malformed one or a blank, which left
people with none). Until then every address reads as held.

``ix_crm_snapshots_identity``: every read of the records showing an address (an erasure's
holders, the access export's records of others) scanned the table.

Downgrading drops the column and the index (the flags set are lost; the older code recomputes),
and the ``identifiers_left_backfilled`` settings row: upgrading again runs the backfill once more,
which sets first the flags the chain says (the log keeps their entries), so the ledger verifies.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-08 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable and added in place (no batch rebuild: subjects' rows are referenced).
    op.add_column("subject_identifiers", sa.Column("left_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_crm_snapshots_identity", "crm_snapshots", ["identity"])


def downgrade() -> None:
    op.drop_index("ix_crm_snapshots_identity", table_name="crm_snapshots")
    op.drop_column("subject_identifiers", "left_at")
    # The backfill's "done" (identity.LEFT_BACKFILL_SETTING) is for the flags just dropped: kept,
    # a re-upgraded ledger would hold none and ``audit verify`` name the chain's as tampered.
    op.execute("DELETE FROM ledger_settings WHERE name = 'identifiers_left_backfilled'")
