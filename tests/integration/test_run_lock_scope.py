"""The PostgreSQL run lock is scoped to the ledger's schema: two ledgers in two schemas of one
database run the same connector name at once, while one ledger still runs it once at a time."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from consentsync.ledger.engine import make_engine
from consentsync.sync.locks import RunInProgress, connector_lock
from tests.conftest import _postgres_base_url


@pytest.mark.postgres
def test_ledgers_in_two_schemas_do_not_block_each_other() -> None:
    base = _postgres_base_url()
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    schemas = [f"t_lock_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with admin.begin() as conn:
        for schema in schemas:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    first, second = (
        make_engine(f"{base}{separator}options={quote(f'-csearch_path={schema}')}") for schema in schemas
    )
    try:
        with connector_lock(first, "sf"):
            with connector_lock(second, "sf"):  # another ledger: not held up
                pass
            with pytest.raises(RunInProgress), connector_lock(first, "sf"):  # the same ledger: held
                pass
    finally:
        first.dispose()
        second.dispose()
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
