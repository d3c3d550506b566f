"""partial indexes: consent states' two secondary indexes, and erased people by suppression

``ix_consent_states_status_since`` (status, since) and ``ix_consent_states_expires_at``
(expires_at) held an entry for every state. Every write of a state (the upsert rewrites each
column) moved both entries, and ``since`` and ``expires_at`` are event times, in no order a sync
writes them in: two index pages written at random places for every state a page changed, the
more of them the larger the ledger (docs/performance.md, "Where the growth with the org comes
from"). Their only readers ask for requested consents by age (``stale_requests``) and for
consents with an expiry (``expire_due``, outreach's renewal window). As partial indexes they hold
those rows only; a state outside both (most: granted without validity, withdrawn, refused)
writes neither.

``subjects.suppression_id`` had no index: the lookup of a new address among the erased ones
(``SubjectResolver._erased_by_email``, on every page that meets new people) joined suppressions
to subjects by reading every subject, on SQLite and PostgreSQL alike. It is indexed where it is
set, which is only for the people erased or created suppressed.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 16:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

REQUESTED = sa.text("status = 'requested'")
HAS_EXPIRY = sa.text("expires_at IS NOT NULL")
SUPPRESSED = sa.text("suppression_id IS NOT NULL")


def partial_index(name: str, table: str, column: str, where: sa.TextClause) -> None:
    op.create_index(name, table, [column], sqlite_where=where, postgresql_where=where)


def upgrade() -> None:
    op.drop_index("ix_consent_states_status_since", table_name="consent_states")
    op.drop_index("ix_consent_states_expires_at", table_name="consent_states")
    partial_index("ix_consent_states_requested_since", "consent_states", "since", REQUESTED)
    partial_index("ix_consent_states_expires_at", "consent_states", "expires_at", HAS_EXPIRY)
    partial_index("ix_subjects_suppression_id", "subjects", "suppression_id", SUPPRESSED)


def downgrade() -> None:
    op.drop_index("ix_subjects_suppression_id", table_name="subjects")
    op.drop_index("ix_consent_states_requested_since", table_name="consent_states")
    op.drop_index("ix_consent_states_expires_at", table_name="consent_states")
    op.create_index("ix_consent_states_status_since", "consent_states", ["status", "since"])
    op.create_index("ix_consent_states_expires_at", "consent_states", ["expires_at"])
