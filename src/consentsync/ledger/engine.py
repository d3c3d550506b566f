"""Database engines for the ledger: SQLite by default, PostgreSQL in production."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from consentsync.ledger.bulk import written
from consentsync.ledger.checkpoint import BACKSTOP_PAGES, BUSY_TIMEOUT_MS, BackgroundCheckpoint

log = structlog.get_logger(__name__)


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3, the driver consentsync installs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, checkpoints: bool = True, **kwargs: Any) -> Engine:
    """The ledger's engine for ``url``. ``checkpoints=False``: a SQLite engine that leaves copying
    the log back to the process that writes (a reader beside a sync run, sync/ahead.py)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}, **kwargs
        )
        _serialise_sqlite_writers(engine)
        path = engine.url.database
        if checkpoints and path and path != ":memory:" and not path.startswith("file:"):
            BackgroundCheckpoint(path).attach(engine)
        return engine
    engine = create_engine(url, pool_pre_ping=True, **kwargs)
    _serialise_postgres_writers(engine)
    return engine


def _serialise_sqlite_writers(engine: Engine) -> None:
    """SQLite's default deferred transactions can deadlock when two writers upgrade their read
    locks; taking the write lock at BEGIN (IMMEDIATE) makes concurrent writers queue instead."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let BEGIN below be the only transaction control
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB: the indexes outgrow the 2 MiB default
        # The log is copied back beside the writer (ledger/checkpoint.py); SQLite's own
        # checkpoint, on the committing thread, is the backstop.
        cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A connection opened with ``reading`` only reads: a deferred BEGIN takes no write lock,
        # and in WAL mode it reads a snapshot while a writer works (the decision endpoint must
        # not queue behind a sync's page).
        if connection.get_execution_options().get(READ_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


READ_ONLY = "consentsync_read_only"
# The ledger writers' lock on PostgreSQL, keyed by the ledger's schema: advisory locks are
# database-wide, ledgers per schema.
WRITER_LOCK_KEY = "hashtextextended('consentsync:writer:' || current_schema(), 0)"
BESIDE_WRITERS = "consentsync_beside_writers"

# How long a writer waits for the ledger before its run fails with a one-line error
# (problems.py), rather than hang: SQLite's busy timeout above plays the same part.
WRITER_WAIT = "120s"


def _serialise_postgres_writers(engine: Engine) -> None:
    """Ledger writers take one transaction-level advisory lock at BEGIN, as SQLite's BEGIN
    IMMEDIATE does. Two syncs (two connectors) meet the same people: row locks taken in the order
    each CRM lists them deadlocked, and a transaction that read a person's consent summary before
    another committed a withdrawal for them would store a state folded without it. Taken first,
    the lock orders every writer before it reads what it will write. Readers (``reading``) take
    nothing and read a snapshot."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Once a session, not a statement a transaction: every lock wait of the session is
        # bounded (the writer lock's, and a reader's behind a migration's).
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = '{WRITER_WAIT}'")
        dbapi_connection.autocommit = False

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get(READ_ONLY) or options.get(BESIDE_WRITERS):
            return
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITER_LOCK_KEY})")


def reading(engine: Engine) -> Connection:
    """A connection for reads only (on SQLite it takes no write lock; a write through it may
    fail with "database is locked"): ``with reading(engine) as conn: ...``."""
    return engine.connect().execution_options(**{READ_ONLY: True})


@contextmanager
def beside_writers(engine: Engine) -> Iterator[Connection]:
    """A write transaction that does not queue behind the ledger's writers on PostgreSQL, for rows
    no ledger writer reads to decide what it writes (connector leases, daemon heartbeats): a run's
    lease must be renewed while another transaction holds the writer lock for long (a plan reads a
    whole CRM in one). Its own row locks still order it. On SQLite it is an ordinary transaction."""
    with engine.connect().execution_options(**{BESIDE_WRITERS: True}) as conn, conn.begin():
        yield conn


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


# A table is analysed once the rows written since its last analysis reach this many plus this
# share of its size (autovacuum's rule is 50 rows plus 10%; the floor is higher here: below a few
# thousand rows a sequential scan costs little, and each ANALYZE samples up to 30,000 rows).
ANALYSE_MIN_ROWS = 2000
ANALYSE_SHARE = 0.2


def analyse_grown(conn: Connection) -> list[str]:
    """Has the tables this connection grew by a large share since they were last analysed
    analysed once its transaction ends (PostgreSQL; nothing on SQLite); returns their names.

    Without statistics PostgreSQL's planner guesses that a replay check's ``= ANY(...)`` matches a large
    part of ``consent_events`` and reads the whole table for every one (75 ms against 6 ms per
    lookup at 150,000 rows, measured when the check was by fingerprint). Autovacuum would analyse
    such a table after a large load, but it may be off, or minutes late, and a first sync or a bulk
    import is one long series of such loads. The check costs one query once this connection wrote
    ``ANALYSE_MIN_ROWS`` rows (``bulk.written``).

    The analysis runs beside the writer (``_Statistics``): inside the writer's transaction it took
    a sixth of a first sync's time on PostgreSQL (2.6 of 15.8 s at 20,000 contacts), the writer
    waiting while the server sampled each table."""
    counts = written(conn)
    if conn.dialect.name != "postgresql" or counts.get("", 0) < ANALYSE_MIN_ROWS:
        return []
    counts[""] = 0
    names = sorted(name for name in counts if name)
    # n_mod_since_analyze counts the rows that committed, this connection's included once the
    # server's statistics have them (up to a second later); this transaction's rows, and the
    # others not counted yet, are in this connection's own count.
    stats = conn.exec_driver_sql(
        "SELECT c.relname, c.reltuples, coalesce(s.n_mod_since_analyze, 0) FROM pg_class c"
        " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
        " WHERE c.oid = ANY(ARRAY(SELECT to_regclass(n) FROM unnest(%s::text[]) AS n))",
        (names,),
    ).all()
    grown = sorted(
        name
        for name, size, changed in stats
        if max(changed, counts.get(name, 0)) >= ANALYSE_MIN_ROWS + ANALYSE_SHARE * max(size, 0)
    )
    for name in grown:
        del counts[name]
    if grown:
        _statistics_of(conn.engine).analyse(conn.engine, grown)
    return grown


def statistics_settled(engine: Engine, timeout: float | None = None) -> bool:
    """Waits until the analyses ``analyse_grown`` asked for on this engine have run (a bulk import
    returns with its tables' statistics in place); False if ``timeout`` passed first. Never call
    it inside a write transaction: the analysis waits for that transaction to end."""
    statistics = _STATISTICS.get(engine)
    return statistics is None or statistics.settled(timeout)


class _Statistics:
    """ANALYZE of the tables the engine's writers grew, in a thread and on a connection of its own.

    It first waits for the writer lock (``_serialise_postgres_writers``), shared, and lets it go:
    the writer that grew the tables has then committed, so the analysis counts its rows, and
    the writers that follow queue behind that wait for one round trip only. An analysis that
    fails (the writer lock held past the lock timeout, the ledger gone, the schema dropped) is
    logged, and its tables are analysed with the next ones asked for: statistics only make
    plans better, never results different. Kept per engine, it holds no reference to it (the
    thread does, while it runs), so that an engine no longer used is freed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._tables: set[str] = set()
        self._failed: set[str] = set()

    def analyse(self, engine: Engine, tables: list[str]) -> None:
        with self._lock:
            self._tables.update(tables, self._failed)
            self._failed.clear()
            if not self._idle.is_set():
                return  # the running thread takes them before it stops
            self._idle.clear()
        threading.Thread(target=self._run, args=(engine,), name="consentsync-analyse", daemon=True).start()

    def settled(self, timeout: float | None) -> bool:
        return self._idle.wait(timeout)

    def _run(self, engine: Engine) -> None:
        while True:
            with self._lock:
                tables, self._tables = sorted(self._tables), set()
                if not tables:
                    self._idle.set()
                    return
            try:
                _analyse(engine, tables)
            except Exception as error:  # statistics only make plans better: see the docstring
                log.warning("ledger.analyse_failed", tables=tables, error=type(error).__name__)
                with self._lock:
                    self._failed.update(tables)


def _analyse(engine: Engine, tables: list[str]) -> None:
    quote = engine.dialect.identifier_preparer.quote
    with engine.connect().execution_options(**{BESIDE_WRITERS: True}) as conn:
        with conn.begin():
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock_shared({WRITER_LOCK_KEY})")
        with conn.begin():
            # SKIP_LOCKED: a table another session analyses or vacuums now is left to it.
            conn.exec_driver_sql(f"ANALYZE (SKIP_LOCKED) {', '.join(quote(name) for name in tables)}")


_STATISTICS: weakref.WeakKeyDictionary[Engine, _Statistics] = weakref.WeakKeyDictionary()
_STATISTICS_LOCK = threading.Lock()


def _statistics_of(engine: Engine) -> _Statistics:
    with _STATISTICS_LOCK:
        statistics = _STATISTICS.get(engine)
        if statistics is None:
            statistics = _STATISTICS[engine] = _Statistics()
        return statistics
