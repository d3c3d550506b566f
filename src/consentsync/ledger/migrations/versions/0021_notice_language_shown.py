"""consent_events, confirmations: the language of the notice text shown

A notice version may have texts in several languages in effect at once (en and de). A consent
event named the version only, so its receipt and the DSAR export named the version's first text
(English) even for a person who was shown, and consented on, the German one (Art. 7(1): the
controller must show what the person was shown). ``notice_language`` records the language of
the text shown with the event (the capture API's ``language``, the preference page's and the
confirmation page's text, ``ledger record --notice-language``), and on a double opt-in's
confirmation the language its sign-up was shown the notice in until the link is confirmed.

Existing rows keep NULL: the language was not recorded, and their proofs name the version's
first text in effect at the event's time, as before. Nullable columns added in place on both
databases: no table is rebuilt, and consent_events keeps its append-only triggers (SQLite's
ADD COLUMN leaves them as they are, as 0013 did on audit_entries). The event's fingerprint and
its audit entry are unchanged for an event without a language.

Downgrading drops the columns (the languages recorded are lost: every proof names the first
text again).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-08 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

TABLES = ("consent_events", "confirmations")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("notice_language", sa.String(16), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by ALTER TABLE DROP COLUMN (3.35+) in place: the triggers stay.
    for table in TABLES:
        op.drop_column(table, "notice_language")
