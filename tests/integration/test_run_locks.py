"""The one-run-per-connector lock belongs to one ledger: on PostgreSQL, advisory locks are
database-wide, so two ledgers in two schemas of one database must not block each other."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from consentsync.ledger.engine import make_engine
from consentsync.sync.locks import RunInProgress, connector_lock
from tests.conftest import _postgres_base_url


@pytest.mark.postgres
def test_ledgers_in_two_schemas_of_one_database_lock_their_own_runs() -> None:
    base = _postgres_base_url()
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    schemas = [f"t_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    with admin.begin() as conn:
        for schema in schemas:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    first, second = (
        make_engine(f"{base}{separator}options={quote(f'-csearch_path={schema}')}") for schema in schemas
    )
    try:
        with connector_lock(first, "salesforce-main"):
            with pytest.raises(RunInProgress), connector_lock(first, "salesforce-main"):
                pass
            with connector_lock(second, "salesforce-main"):
                pass  # the other ledger's connector of the same name runs
    finally:
        first.dispose()
        second.dispose()
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
