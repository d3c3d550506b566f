"""notices: the time a notice version was in effect from

A grant names the notice version the person was shown (Art. 7(1): the controller must be able
to show the consent); one dated before that text was shown cannot be true. ``in_effect_from``
says since when a version was shown: by default its registration, earlier for a text registered
after it was in use (``consentsync notice add --in-effect-from``, history imported). NULL for a
version registered before this revision: read as its registration, and settable once by adding
the same text again with ``--in-effect-from``.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable and added in place (no batch rebuild): rows registered before have no such date.
    op.add_column("notices", sa.Column("in_effect_from", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("notices", "in_effect_from")
