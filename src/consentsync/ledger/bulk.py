"""Plain DBAPI statements for the ledger's hot reads and writes (events, states, audit entries).

SQLAlchemy's Core executemany spends more time building bound parameters per row than SQLite
spends storing the row; on the recording path that is most of the cost. These statements are
built from the same Table objects and bind the same values SQLAlchemy would (UTC datetimes
stored naive on SQLite, aware on PostgreSQL), so rows read back through Core are identical.

On PostgreSQL every statement is a round trip to the server: inserts go as one COPY, lookups
as one ``key = ANY(array)`` per few thousand keys instead of one ``IN`` list per 500, and the
rows each connection writes are counted (``written``) so that ``engine.analyse_grown`` can give
the planner statistics once a table has grown by a large share.
"""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, TypeVar

from sqlalchemy import Connection, String, Table, Text, any_, literal
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

T = TypeVar("T")

# Keys per ``= ANY(array)`` lookup on PostgreSQL: one round trip and one plan for a whole batch
# of a sync page or most of a bulk import's, with the rows fetched still bounded.
PG_LOOKUP_CHUNK = 10_000
_WRITTEN = "consentsync.rows_written"


def _null(value: None) -> None:
    return value


# sqlite3 binds an exact int, float or str as it is and adapts every other value first: None and
# bools too, each by a failed look-up of a registered adapter, of __adapt__ on its protocol (which
# raises and clears an AttributeError) and of __conform__. An event row binds about ten Nones, and
# that search cost more than SQLite's work of storing the row. Registered adapters are found
# first: None stays None (NULL), a bool becomes the integer sqlite3 would have bound. The values
# stored are the same, for every connection of the process.
sqlite3.register_adapter(type(None), _null)
sqlite3.register_adapter(bool, int)


def written(conn: Connection) -> dict[str, int]:
    """Rows this connection inserted or upserted per table since ``engine.analyse_grown`` last
    analysed the table, and under ``""`` since it last looked at all (the counts live on the
    pooled DBAPI connection, across transactions)."""
    counts: dict[str, int] = conn.info.setdefault(_WRITTEN, {})
    return counts


def note_written(conn: Connection, table: str, count: int) -> None:
    if count:
        counts = written(conn)
        counts[table] = counts.get(table, 0) + count
        counts[""] = counts.get("", 0) + count


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pauses Python's cycle collector for a bulk call; reference counting still frees
    everything that is not in a cycle, and the recording path builds no cycles.

    The collector starts by allocation counts, not by garbage: recording a batch allocates
    hundreds of thousands of containers, so it runs thousands of times per call and each run
    walks the live batch and the people cached across batches, finding nothing to free (a
    fifth of the CPU time of bench/ledger_bench.py). What does form cycles, SQLAlchemy's
    statement objects (a few dozen per batch, however large the batch), waits for the
    collector's next run after the call. Process-wide, so it is restored only by the call
    that paused it."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def chunks(items: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """Slices of at most ``size`` items: IN lists stay well under every driver's parameter limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def db_time(conn: Connection, moment: datetime | None) -> Any:
    if moment is None:
        return None
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    if conn.dialect.name == "sqlite":
        return sqlite_time(moment)
    return moment


def sqlite_time(moment: datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime writes and parses back, for a UTC datetime.

    The recording path converts several datetimes per event; formatting the fields costs two
    thirds of ``isoformat(" ", "microseconds")`` (an aware datetime's isoformat formats the offset
    too, and parses its arguments), a third of building a naive copy first.
    """
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031 - a third cheaper than format()
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.microsecond,
    )


def time_writer(conn: Connection) -> Callable[[datetime | None], Any]:
    """``db_time`` for one batch, remembering each instant it converted: the recording path
    writes the same few instants (now, the observation time) several times per event."""
    if conn.dialect.name != "sqlite":
        return lambda moment: db_time(conn, moment)
    seen: dict[datetime, str] = {}

    def convert(moment: datetime | None) -> str | None:
        if moment is None:
            return None
        text = seen.get(moment)
        if text is None:
            utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
            text = seen[moment] = sqlite_time(utc)
        return text

    return convert


def insert_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Inserts ``rows`` (tuples in ``columns`` order, datetimes already passed through db_time):
    one executemany on SQLite, one COPY on PostgreSQL (a twentieth of the server's work of a
    statement per row, and half the client's)."""
    if not rows:
        return
    note_written(conn, table.name, len(rows))
    if conn.dialect.name == "postgresql":
        _copy_rows(conn, table, columns, rows)
        return
    # A column that is None in every row (the soft opt-in's four, mostly, and the references an
    # import leaves out) is written as NULL in the statement: binding a None costs sqlite3 more
    # than binding a text, for every row.
    nulls = {i for i in range(len(columns)) if all(row[i] is None for row in rows)}
    if nulls:
        kept = [i for i in range(len(columns)) if i not in nulls]
        pick = itemgetter(*kept) if len(kept) > 1 else lambda row: (row[kept[0]],)
        rows = [pick(row) for row in rows]
    conn.exec_driver_sql(_insert_sql(conn, table, columns, nulls), list(rows))


def _copy_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """``COPY table (columns) FROM STDIN`` in the connection's transaction; a driver error is
    raised as SQLAlchemy's, as ``exec_driver_sql`` would (a dropped connection invalidated)."""
    for name in columns:
        table.c[name]
    quote = conn.dialect.identifier_preparer.quote
    statement = f"COPY {quote(table.name)} ({', '.join(quote(c) for c in columns)}) FROM STDIN"
    dbapi = conn.connection.dbapi_connection
    try:
        with dbapi.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
            write = copy.write_row
            for row in rows:
                write(row)
    except conn.dialect.loaded_dbapi.Error as error:
        gone = conn.dialect.is_disconnect(error, dbapi, None)
        if gone:
            conn.invalidate(error)
        raise DBAPIError.instance(
            statement, None, error, conn.dialect.loaded_dbapi.Error, connection_invalidated=gone
        ) from error


def insert_returning_ids(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    *,
    unique: str,
    chunk: int = 500,
) -> list[int]:
    """Inserts ``rows`` as ``insert_rows`` does and returns the ``id`` each was given, in the
    order of ``rows``. On SQLite: one multi-row ``INSERT ... RETURNING id`` per ``chunk`` rows;
    SQLite numbers the rows of one INSERT in order, so the ids sorted are the rows' (as
    SQLAlchemy's insertmanyvalues reads them, without its bind processing per row). On
    PostgreSQL: one statement of arrays, each id told by the row's value of ``unique`` (a
    column whose values differ between the rows), as PostgreSQL does not promise the order
    of what RETURNING gives."""
    note_written(conn, table.name, len(rows))
    if conn.dialect.name == "postgresql":
        at = columns.index(unique)
        quote = conn.dialect.identifier_preparer.quote
        statement = f"{_arrays_insert(conn, table, columns)} RETURNING id, {quote(unique)}"
        given = {value: row_id for row_id, value in conn.exec_driver_sql(statement, _arrays(rows)).fetchall()}
        return [given[row[at]] for row in rows]
    into, values = _insert_sql(conn, table, columns).split(" VALUES ")
    ids: list[int] = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        statement = f"{into} VALUES {', '.join(values for _ in part)} RETURNING id"
        found = conn.exec_driver_sql(statement, tuple(value for row in part for value in row)).fetchall()
        ids += sorted(row[0] for row in found)
    return ids


def upsert_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    key: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    *,
    update: bool = True,
) -> None:
    """Inserts ``rows`` or, where ``key`` exists, overwrites the other columns (``ON CONFLICT ...
    DO UPDATE``: the same text on SQLite 3.24+ and PostgreSQL 9.5+); with ``update=False`` the
    row that exists stays (``DO NOTHING``). Rows later in ``rows`` win over earlier ones of the
    same key, as one statement per row in order would leave them.

    On PostgreSQL the rows go as one statement whose columns are arrays (``SELECT * FROM
    unnest(...)``): psycopg's executemany sends a statement per row, which cost a sync page's
    upserts 14 to 25 µs a row of round trips and the server's work per statement."""
    if not rows:
        return
    note_written(conn, table.name, len(rows))
    quote = conn.dialect.identifier_preparer.quote
    conflict = f"ON CONFLICT ({', '.join(quote(c) for c in key)}) DO "
    if update:
        conflict += "UPDATE SET " + ", ".join(
            f"{quote(c)} = excluded.{quote(c)}" for c in columns if c not in key
        )
    else:
        conflict += "NOTHING"
    if conn.dialect.name == "postgresql":
        _upsert_arrays(conn, table, columns, key, rows, conflict, update=update)
        return
    conn.exec_driver_sql(f"{_insert_sql(conn, table, columns)} {conflict}", list(rows))


def _upsert_arrays(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    key: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    conflict: str,
    *,
    update: bool,
) -> None:
    if update and len(rows) > 1:
        # One statement may not update a row twice (``ON CONFLICT DO UPDATE command cannot
        # affect row a second time``): the last row of each key is the one a row at a time keeps.
        at = [columns.index(name) for name in key]
        last = {tuple(row[i] for i in at): row for row in rows}
        if len(last) < len(rows):
            rows = list(last.values())
    conn.exec_driver_sql(f"{_arrays_insert(conn, table, columns)} {conflict}", _arrays(rows))


def _arrays_insert(conn: Connection, table: Table, columns: Sequence[str]) -> str:
    """``INSERT INTO table (columns) SELECT * FROM unnest(...)``, on PostgreSQL: one parameter,
    an array, per column (``_arrays``). Text arrays are TEXT[]: an explicit cast to VARCHAR(n)
    would cut a longer value silently, where the insert's own assignment to the column refuses
    it. They are sent in binary (``%b``): in text, psycopg escapes every quote of a JSON value
    and the server parses it back."""
    quote = conn.dialect.identifier_preparer.quote
    types = [
        "TEXT" if isinstance(table.c[name].type, String) else table.c[name].type.compile(dialect=conn.dialect)
        for name in columns
    ]
    return (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"SELECT * FROM unnest({', '.join(f'%b::{kind}[]' for kind in types)})"
    )


def _arrays(rows: Sequence[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    return tuple(list(values) for values in zip(*rows, strict=True))


def _insert_sql(conn: Connection, table: Table, columns: Sequence[str], nulls: Collection[int] = ()) -> str:
    """``INSERT INTO table (columns) VALUES (...)``: a parameter for each column, NULL for those
    at the positions in ``nulls``."""
    for name in columns:
        table.c[name]
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    quote = conn.dialect.identifier_preparer.quote
    return (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join('NULL' if i in nulls else marker for i in range(len(columns)))})"
    )


def one_of(conn: Connection, column: ColumnElement[Any], values: Collection[Any]) -> ColumnElement[bool]:
    """``column IN (values)`` for a Core statement on ``conn``. On PostgreSQL it is ``column =
    ANY(array)``: one bound parameter, where an IN list binds one per value and makes the
    server parse and plan a statement a thousand values long for every page (a tenth of a
    sync's time in statements on PostgreSQL). Text values go as TEXT[]: a cast to VARCHAR(n)
    would cut a longer value and could match another row."""
    if conn.dialect.name != "postgresql":
        return column.in_(values)
    kind = Text() if isinstance(column.type, String) else column.type
    return column == any_(literal(list(values), ARRAY(kind)))


def select_in(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    key: str,
    values: Sequence[Any],
    chunk: int = 500,
    *,
    equal: Sequence[tuple[str, Any]] = (),
    join: Sequence[tuple[Table, str, str]] = (),
    where: str = "",
) -> Iterator[tuple[Any, ...]]:
    """``SELECT columns FROM table WHERE [column = value AND ...] key IN (values)``, in chunks,
    as plain tuples (no type processing: use it for text and integer columns, and for other
    columns only to tell NULL from a value). On PostgreSQL the condition is ``key = ANY(%s)``
    with one array of up to ``PG_LOOKUP_CHUNK`` values.

    ``equal`` pins the leading columns of a composite index: without them neither SQLite nor
    PostgreSQL can search an index on (those columns, key), and SQLite does not search one for
    a row-value ``(a, b, key) IN (...)`` either; all of these read the whole table.

    ``join``: (other table, its column, this table's column) for each ``LEFT JOIN other ON
    other.column = table.column``; a column named ``other.column`` is read from it (NULL
    where no row matches).

    ``where``: a further condition in SQL, a constant of the code (never a value: values are
    bound), e.g. the one a partial index is defined by, so that the index can be searched."""
    quote = conn.dialect.identifier_preparer.quote
    tables = {table.name: table, **{other.name: other for other, _, _ in join}}

    def qualified(name: str, of: Table = table) -> str:
        owner, _, column = name.rpartition(".")
        source = tables[owner] if owner else of
        source.c[column]  # a KeyError names a column the table does not have
        return f"{quote(source.name)}.{quote(column)}"

    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    joins = "".join(
        f" LEFT JOIN {quote(other.name)} ON {qualified(theirs, other)} = {qualified(ours)}"
        for other, theirs, ours in join
    )
    conditions = "".join(f"{qualified(column)} = {marker} AND " for column, _ in equal)
    conditions += f"{where} AND " if where else ""
    head = (
        f"SELECT {', '.join(qualified(c) for c in columns)} FROM {quote(table.name)}{joins} "
        f"WHERE {conditions}{qualified(key)} IN "
    )
    prefix = tuple(value for _, value in equal)
    if conn.dialect.name == "postgresql":
        statement, size = head.removesuffix(" IN ") + " = ANY(%s)", max(chunk, PG_LOOKUP_CHUNK)
        for start in range(0, len(values), size):
            part = list(values[start : start + size])
            yield from conn.exec_driver_sql(statement, (*prefix, part)).fetchall()
        return
    for start in range(0, len(values), chunk):
        part = values[start : start + chunk]
        cursor = conn.exec_driver_sql(head + f"({', '.join(marker for _ in part)})", prefix + tuple(part))
        yield from cursor.fetchall()
