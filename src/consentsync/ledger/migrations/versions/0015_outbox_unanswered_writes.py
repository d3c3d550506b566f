"""outbox: the writes sent and not acknowledged, indexed apart

Every page a sync reads back looks up, for each of its records, the latest write this project
sent to it: a write whose answer was lost (a crash between the CRM's answer and the commit) is
recognised by its values and never taken for the person's choice (``SyncEngine
._recognise_echoes``). It read every record's outbox rows through ``ix_outbox_record`` and the
table, although nearly all of them are done: on a sync reading back 117,826 of its own writes, a
sixth of the run. ``ix_outbox_unanswered`` holds only the rows sent and not done (pending with
their answer outstanding, dead, or superseded after being sent): the page's candidates are
found there, and only their records' rows are read.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 11:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UNANSWERED = sa.text("status <> 'done' AND sent_at IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_outbox_unanswered",
        "outbox",
        ["connector", "object_type", "record_id"],
        sqlite_where=UNANSWERED,
        postgresql_where=UNANSWERED,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_unanswered", table_name="outbox")
