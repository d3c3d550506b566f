"""One run per connector at a time, across processes and machines.

PostgreSQL: a session-level advisory lock on a dedicated connection, released when the run ends or
the process dies. SQLite: an exclusive ``flock`` on a file beside the database (SQLite ledgers are
local to one machine by nature).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError


class RunInProgress(RuntimeError):
    """Another process is running this connector now."""


def _lock_key(connector: str, schema: str) -> int:
    # Advisory locks are database-wide: the ledger's schema is part of the key, so that two
    # ledgers sharing a database (staging and production, two tenants) do not block each other.
    digest = hashlib.sha256(f"consentsync:run:{schema}:{connector}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def connector_lock(engine: Engine, connector: str) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            key = _lock_key(connector, conn.execute(text("SELECT current_schema()")).scalar_one())
            taken = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
            conn.commit()
            if not taken:
                raise RunInProgress(f"another process is running connector {connector!r} on this ledger")
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
                except SQLAlchemyError:
                    pass  # the session is gone, and its advisory lock with it
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    path = Path(f"{database}.{hashlib.sha256(connector.encode()).hexdigest()[:12]}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInProgress(
                f"another process is running connector {connector!r} on this ledger"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock
