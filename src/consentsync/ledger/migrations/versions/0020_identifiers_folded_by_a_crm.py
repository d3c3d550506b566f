"""subject_identifiers: which addresses a CRM keeping the BMP only may have folded

A CRM that keeps the Basic Multilingual Plane only (Vtiger on MySQL's 3-byte ``utf8``) shows
``dora🙂@example.test`` as ``dora?@example.test``; a lookup of the real address tries that
folded form last (``domain.email_forms``), so that the person made from such a record is found.
But ``a?b@example.test`` is a legal address of its own: a person holding it because a capture,
an import or a CRM keeping every character said so is another person, and was found by a
lookup of ``a🙂b@example.test`` (their consent, export or erasure applied to someone else).

``folds_astral_to`` says, for an address held because a folding CRM's record showed it, that
CRM's fold character: only such an address stands for the real one (``identity.holds_for``).

Existing rows: the ledger does not record which connector folds, so an email address holding
"?" is marked "?" where its person has a CRM record linked (a folding CRM's record always leaves
one: such holders stay found by the real address, as before); a person known only through
captures, imports and ``ledger record`` (no CRM record) is not (their "?" is a "?"). A source
keeping every character that shows the address again clears the mark (``SubjectResolver``).

Downgrading drops the column (the older lookup finds every holder of the folded form again).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

# The fold character of every connector shipped before this revision (domain.ASTRAL_FOLD).
FOLD = "?"

# The tables as this revision reads and writes them (never schema.py's).
subject_identifiers = sa.table(
    "subject_identifiers",
    sa.column("id", sa.Integer),
    sa.column("subject_id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("value", sa.String),
    sa.column("folds_astral_to", sa.String),
)
crm_links = sa.table("crm_links", sa.column("subject_id", sa.Integer))


def upgrade() -> None:
    # Nullable and added in place (no batch rebuild: subjects' rows are referenced).
    op.add_column("subject_identifiers", sa.Column("folds_astral_to", sa.String(8), nullable=True))
    held = subject_identifiers.c
    linked = sa.select(crm_links.c.subject_id).where(crm_links.c.subject_id == held.subject_id).exists()
    # LIKE's "?" is no wildcard; few rows hold one (a read of the table's emails, once).
    op.get_bind().execute(
        sa.update(subject_identifiers)
        .where(held.kind == "email", held.value.like(f"%{FOLD}%"), linked)
        .values(folds_astral_to=FOLD)
    )


def downgrade() -> None:
    op.drop_column("subject_identifiers", "folds_astral_to")
