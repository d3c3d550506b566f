"""Copying a SQLite ledger's write-ahead log back into the database file, beside the writer.

In WAL mode a commit appends pages to the ``-wal`` file; a checkpoint copies them back into the
database and, with ``synchronous=NORMAL``, is the only step that waits for the disk (fsync).
SQLite's automatic checkpoint runs inside the commit that crossed the threshold, on the
writer's thread: a sync run or a bulk import stood still while tens of megabytes were copied and
synced, and more so as the ledger outgrew the page cache.

Here, while a process writes, a passive checkpoint runs about once a ``period`` on a connection
of its own in a short-lived thread. SQLite releases the GIL while it works, so the copy and the
fsync run on another core while the writer carries on: a passive checkpoint takes no lock a
writer needs and never waits for one. SQLite's own automatic checkpoint stays, at a higher
threshold, for the case where this one cannot keep up (a reader holding an old snapshot).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from typing import Any
from urllib.parse import quote

import structlog
from sqlalchemy import Connection, Engine, event

log = structlog.get_logger(__name__)

# SQLite's own checkpoint, as a backstop: 65,536 pages of 4 KiB (256 MiB of log).
BACKSTOP_PAGES = 65536
# A log larger than this is copied to its end and emptied by the writer that finds it so before
# its next transaction (``restart_log``). The writer never waits for it: while the background
# checkpoint copies, or a reader still uses the log, it tries again before the next one. Each
# restart costs the writer about 0.1 s whatever the size (two fsyncs and a truncation, not the
# copy, which the background checkpoint has mostly done): at 64 MiB a first sync of 100,000
# contacts restarted 41 times, 4.1 s of its 53 s (docs/performance.md). Below BACKSTOP_PAGES'
# size, so that SQLite's own checkpoint never runs inside a commit first.
RESTART_BYTES = 192 * 1024 * 1024
# A writer that never restarts the log (a bulk import, another process) leaves it to the
# background checkpoint at this size, which waits at most RESTART_WAIT_MS.
BACKGROUND_RESTART_BYTES = 256 * 1024 * 1024
RESTART_WAIT_MS = 500
BUSY_TIMEOUT_MS = 30_000  # the ledger's connections' own (ledger/engine.py)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def restart_log(conn: Connection) -> None:
    """Between two transactions of a sync run's writer (sync/writer.py): when the log has grown
    past RESTART_BYTES, copies what is left of it (the background checkpoint copied the rest)
    and empties it. ``record_many`` does not: its batches are large, so most of each is still
    to copy at the next one, and copying it here cost a bulk import about a tenth of its time;
    its log is restarted by the background checkpoint at BACKGROUND_RESTART_BYTES instead.

    A writer that commits while a passive checkpoint copies keeps the log from ever being all
    copied, and only then may SQLite start it over: without this the file grows for as long
    as the run writes. Done on the writer's own connection, it leaves that connection's
    ``data_version`` as it is, so the writer's cache of what it committed (ledger/warm.py)
    stays; done by any other connection, the restart reads to the writer as someone's commit."""
    path = conn.engine.url.database
    if conn.dialect.name != "sqlite" or not path or _size(path + "-wal") <= RESTART_BYTES:
        return
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    # The DBAPI connection autocommits (ledger/engine.py): no transaction is opened around this.
    # Busy now (a checkpoint copying, a reader on the log): this writer's next transaction
    # tries again, rather than wait here for the copy it meant to leave to another core.
    dbapi_connection.execute("PRAGMA busy_timeout=0")
    try:
        dbapi_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        dbapi_connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


_ATTACHED: weakref.WeakKeyDictionary[Engine, BackgroundCheckpoint] = weakref.WeakKeyDictionary()


def after_commit(engine: Engine) -> None:
    """Called by a writer that commits large transactions back to back (a sync run's pages, a
    bulk import's batches), right after each commit: the log is copied while the writer prepares
    its next transaction, so the copy catches up with the log's end and SQLite starts the log
    over at the next write, with nobody waiting for it."""
    checkpoint = _ATTACHED.get(engine)
    if checkpoint is not None:
        checkpoint.maybe_start(after_commit=True)


class BackgroundCheckpoint:
    """Starts a passive checkpoint of ``path`` in a thread of its own, at most one at a time and
    one per ``period`` seconds: when a writer has just committed (``after_commit``), else when a
    write transaction begins."""

    # A writer that calls after_commit paces the checkpoints while it writes: one started as
    # another transaction begins would copy beside it and never reach the log's end.
    PACED_FOR = 5.0

    def __init__(self, path: str, period: float = 1.0) -> None:
        self.path = path
        self.period = period
        self._lock = threading.Lock()
        self._running = False
        self._last = time.monotonic()
        self._paced_until = 0.0
        self.completed = 0  # checkpoints that ran to their end (for tests and logs)

    def attach(self, engine: Engine) -> None:
        _ATTACHED[engine] = self

        @event.listens_for(engine, "begin")
        def _on_begin(_connection: Any) -> None:
            self.maybe_start()

    def maybe_start(self, *, after_commit: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if after_commit:
                self._paced_until = now + self.PACED_FOR
            elif now < self._paced_until:
                return
            if self._running or now - self._last < self.period:
                return
            self._running, self._last = True, now
        threading.Thread(target=self._run, name="consentsync-wal-checkpoint", daemon=True).start()

    def _run(self) -> None:
        try:
            # mode=rw: a ledger file removed meanwhile is not created again, empty.
            connection = sqlite3.connect(f"file:{quote(self.path)}?mode=rw", uri=True, timeout=0)
            try:
                # PASSIVE: copies what no reader still needs, waits for no lock, blocks no writer.
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if _size(self.path + "-wal") > BACKGROUND_RESTART_BYTES:
                    # No writer restarted the log (see restart_log): what is left to copy is what
                    # was committed meanwhile; this takes the write lock for that long, after the
                    # writer's transaction, and empties the file.
                    connection.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
                    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                self.completed += 1
            finally:
                connection.close()
        except sqlite3.Error as error:  # the next one tries again; SQLite's backstop remains
            log.debug("ledger.checkpoint_failed", error=type(error).__name__)
        finally:
            with self._lock:
                self._running = False
                self._last = time.monotonic()
