"""audit entries found by the subject's id: the index a person's trail is read through is keyed
by ``subject_id`` (the person's row, in the order people were created) instead of the random uid

Each entry about a person went into ``ix_audit_entries_subject_uid`` at a random place (a uid is
random): at 200,000 contacts a sync wrote up to a fifth of its log pages into that index
(docs/performance.md, "Where the growth with the org comes from"). Keyed by the subject's id, the
entries about the people a sync creates land at the end of the index, next to each other, and a
push's entry next to the entries of the people pushed just before it.

The table is append-only: the migration does not rewrite it. ``subject_id`` is set on the
entries written from now on; the entries written before keep it empty, and the uid index is kept
for them alone (a partial index of the entries with no subject id, which grows only by the few
entries that name no known person). A person's trail is read through both (``audit._about``).
The chain does not cover the column: ``audit.verify`` checks that it names the person the
entry's payload names.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

NO_SUBJECT_ID = sa.text("subject_id IS NULL")


def upgrade() -> None:
    op.add_column("audit_entries", sa.Column("subject_id", sa.Integer(), nullable=True))
    op.create_index("ix_audit_entries_subject_id", "audit_entries", ["subject_id"])
    op.drop_index("ix_audit_entries_subject_uid", table_name="audit_entries")
    op.create_index(
        "ix_audit_entries_subject_uid_unlinked",
        "audit_entries",
        ["subject_uid"],
        sqlite_where=NO_SUBJECT_ID,
        postgresql_where=NO_SUBJECT_ID,
    )


def downgrade() -> None:
    op.drop_index("ix_audit_entries_subject_uid_unlinked", table_name="audit_entries")
    op.create_index("ix_audit_entries_subject_uid", "audit_entries", ["subject_uid"])
    op.drop_index("ix_audit_entries_subject_id", table_name="audit_entries")
    op.drop_column("audit_entries", "subject_id")
