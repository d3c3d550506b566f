"""Plain DBAPI executemany for the ledger's hot inserts (events and audit entries).

SQLAlchemy's Core executemany spends more time building bound parameters per row than SQLite
spends storing the row; on the recording path that is most of the cost. These statements are
built from the same Table objects and bind the same values SQLAlchemy would (UTC datetimes
stored naive on SQLite, aware on PostgreSQL), so rows read back through Core are identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table


def db_time(conn: Connection, moment: datetime | None) -> Any:
    if moment is None:
        return None
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    if conn.dialect.name == "sqlite":
        # The text SQLAlchemy's SQLite DateTime writes and parses back.
        return moment.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return moment


def insert_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Inserts ``rows`` (tuples in ``columns`` order, datetimes already passed through db_time)."""
    if not rows:
        return
    for name in columns:
        table.c[name]
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    quote = conn.dialect.identifier_preparer.quote
    statement = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join(marker for _ in columns)})"
    )
    conn.exec_driver_sql(statement, list(rows))
