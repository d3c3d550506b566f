"""Applies the Alembic migrations that ship inside the package."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def known_revisions(engine: Engine) -> set[str]:
    """The revisions this consentsync's migrations know: a ledger at any other was made by a
    newer consentsync (or squashed away) and must not be upgraded from here."""
    return set(_shipped_revisions())


@cache
def _shipped_revisions() -> frozenset[str]:
    """The revisions of the migrations shipped in the package, read once a process: reading them
    executes every migration script (about 50 ms), and a process opens its ledger more than once
    (the daemon each run, the console each request that writes)."""
    from alembic.script import ScriptDirectory

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return frozenset(script.revision for script in ScriptDirectory.from_config(config).walk_revisions())
