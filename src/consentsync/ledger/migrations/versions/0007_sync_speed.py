"""sync speed: people a sync run must look at again (examined once per run, not once per page),
and a keyed hash of each CRM record's identity beside its snapshot (a record read again
unchanged is recognised without resolving its identity again)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_examine",
        sa.Column("connector", sa.String(length=64), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name=op.f("fk_sync_examine_subject_id_subjects")
        ),
        sa.PrimaryKeyConstraint("connector", "subject_id", name=op.f("pk_sync_examine")),
    )
    with op.batch_alter_table("crm_snapshots") as batch:
        batch.add_column(sa.Column("identity", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("crm_snapshots") as batch:
        batch.drop_column("identity")
    op.drop_table("sync_examine")
