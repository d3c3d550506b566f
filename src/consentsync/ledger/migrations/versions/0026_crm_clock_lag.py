"""consent_events: how far the clock that stamped the event may run behind ours

A CRM whose clock runs behind ours stamps a withdrawal earlier than it was made: 120 s behind, a
withdrawal made at our 12:01:00 reads 11:59:00, and a web-form consent captured at 12:00:00 (the
ledger's clock) outranked it, so the withdrawal was lost and the CRM told to opt the person in
again. The sync measures the CRM's clock from its answers' ``Date`` headers; ``clock_lag_ms``
records, with each value it reads while that clock is known to run behind, how far behind it may
be (milliseconds), and the reconciler counts such a no up to that much later than stamped, never
after it was observed (docs/policy.md, "A no stamped by a clock behind ours").

Existing rows keep NULL: read as stamped, as before. A nullable column added in place on both
databases: no table is rebuilt, and consent_events keeps its append-only triggers (SQLite's ADD
COLUMN leaves them as they are, as 0021 did). The event's fingerprint leaves the lag out (a value
read again under another estimate is the same statement); its audit entry carries it only where
set, so every entry written before reads as it did.

Downgrading drops the column (the lags recorded are lost: an older version folds such a no at its
stamp again, and its ``audit verify`` finds the state rows the lag decided otherwise).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-09 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("consent_events", sa.Column("clock_lag_ms", sa.Integer(), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by ALTER TABLE DROP COLUMN (3.35+) in place: the triggers stay.
    op.drop_column("consent_events", "clock_lag_ms")
