"""Alembic environment: run with the engine that consentsync hands over (see ledger/migrate.py)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from consentsync.ledger.engine import make_engine
from consentsync.ledger.schema import metadata

config = context.config
engine: Engine | None = config.attributes.get("engine")
if engine is None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url, or migrate through 'consentsync init'")
    engine = make_engine(url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
