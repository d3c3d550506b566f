"""consent events keyed by subject: the replay guard's unique key is (subject_id, fingerprint)

The unique key that refuses a replayed statement was (fingerprint, subject_id). A fingerprint is
a hash, so each new event landed on a random page of that index: at 200,000 contacts a sync wrote
up to 45% of its log pages into it (docs/performance.md, "Where the growth with the org comes
from"). Keyed by subject first, a sync's new events land next to each other, and the index also
serves what reads a person's events (the summary refold, receipts, the replay check itself),
which had no index on subject_id.

On SQLite a unique constraint is part of the table, so the table is rebuilt (Alembic's batch
mode copies it); the triggers that keep it append-only go with the old table and are created
again, with the same names and messages as in 0010.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 06:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BY_FINGERPRINT = ("uq_consent_events_fingerprint_subject_id", ["fingerprint", "subject_id"])
BY_SUBJECT = ("uq_consent_events_subject_id_fingerprint", ["subject_id", "fingerprint"])


def upgrade() -> None:
    replace_unique_key(BY_FINGERPRINT, BY_SUBJECT)


def downgrade() -> None:
    replace_unique_key(BY_SUBJECT, BY_FINGERPRINT)


def replace_unique_key(old: tuple[str, list[str]], new: tuple[str, list[str]]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(old[0], "consent_events", type_="unique")
        op.create_unique_constraint(new[0], "consent_events", new[1])
        return
    with op.batch_alter_table("consent_events", recreate="always") as batch:
        batch.drop_constraint(old[0], type_="unique")
        batch.create_unique_constraint(new[0], new[1])
    for operation in ("UPDATE", "DELETE"):
        message = f"consentsync: {operation} on consent_events is refused: the table is append-only"
        op.execute(
            f"CREATE TRIGGER consent_events_no_{operation.lower()} BEFORE {operation} ON consent_events "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
        )
