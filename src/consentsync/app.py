"""Wires a loaded config to the services the CLI (and later the daemon and web console) use."""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from consentsync.config import Config, ConfigError
from consentsync.ledger.engine import make_engine
from consentsync.ledger.migrate import alembic_config, upgrade
from consentsync.ledger.service import Ledger


class LedgerNotReady(RuntimeError):
    """The ledger database is missing, unreachable or behind the code's migrations."""


def migration_state(engine: Engine) -> tuple[str | None, str]:
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, str(head)


def open_ledger(config: Config, *, migrate: bool = False) -> Ledger:
    engine = make_engine(config.ledger_url)
    try:
        if migrate:
            upgrade(engine)
        current, head = migration_state(engine)
    except OperationalError as error:
        raise LedgerNotReady(f"cannot reach the ledger database: {error.orig}") from None
    if current != head:
        raise LedgerNotReady(
            f"the ledger is at migration {current or 'none'} but this consentsync needs {head}: "
            "run 'consentsync init' (or 'consentsync migrate')"
        )
    config.erasure_key()  # fail now, with the config's words, rather than at the first erasure
    ledger = Ledger(engine, config.purposes, config.policy, config.erasure_key)
    # Events reference purposes, so the ledger must know every configured one before recording.
    ledger.sync_purposes()
    return ledger


__all__ = ["ConfigError", "LedgerNotReady", "open_ledger"]
