"""One write connection for a whole sync run on SQLite, and what its pages committed about
their people.

A person's records come on several pages (a contact, then their lead, Individual and consent
records), and after the pages every person read is examined once. Each of these reads the
person's subject row, objections and consent summaries back and parses their JSON: more than
reconciling the page's evidence costs. ``ledger.warm`` keeps what committed pages knew, as
``Ledger.record_many`` does for a bulk import, under the same rule: it holds only while nobody
else writes. SQLite's ``data_version`` tells, and only on one connection, so the run keeps one
for its write transactions. On PostgreSQL, where no such cheap check exists, nothing is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, RootTransaction

from consentsync.ledger.checkpoint import after_commit, restart_log
from consentsync.ledger.warm import WarmSubjects

# People kept at most: memory and the cycle collector's walks stay flat however large the org.
# A person's pages come close together in a small org; in a large one the cache starts over.
WARM_SUBJECTS = 20_000
# While the run is behind its reads (the next batch already read), a batch's transaction is left
# open for the next ones: SQLite writes an index page that several batches change once, at the
# group's commit, instead of once a batch (random keys: a large ledger's every batch changes
# about a page a record in each such index). Bounded, because the group holds the ledger's write
# lock (other writers wait) and a crash rolls back all of it (the cursor is in it: re-read).
MAX_JOINED = 20
MAX_OPEN_SECONDS = 1.0


class RunWriter:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection = engine.connect()
        self.warm = WarmSubjects(max_subjects=WARM_SUBJECTS)
        # A transaction left open by ``defer`` for the next one to join, with how many joined it
        # and since when.
        self._open: RootTransaction | None = None
        self._joined = 0
        self._opened_at = 0.0

    @contextmanager
    def transaction(
        self, check: Callable[[Connection], None] | None = None, *, defer: bool = False
    ) -> Iterator[Connection]:
        """A write transaction on the run's connection (``check`` first: the lease), the cache
        emptied where another connection committed since this one last wrote, and what the
        transaction staged taken in once it committed.

        With ``defer`` the commit may be left to a later transaction, which then joins this one
        (``commit`` ends it too): at most ``MAX_JOINED`` transactions, open at most
        ``MAX_OPEN_SECONDS``. An error in any of them rolls back all of them."""
        conn = self.connection
        if self._open is None:
            self._begin(check)
        try:
            yield conn
        except BaseException:
            self._abandon()
            raise
        self._joined += 1
        if defer and self._joined < MAX_JOINED and time.monotonic() - self._opened_at < MAX_OPEN_SECONDS:
            # The next transaction of the group reads on this connection, which sees what this
            # one wrote: the cache takes it in now, and forgets everything if the group fails.
            self.warm.promote()
            return
        self.commit()

    @property
    def deferring(self) -> bool:
        """Whether a deferred transaction is open, waiting for the next to join it."""
        return self._open is not None

    def commit(self) -> None:
        """Commits the transaction a deferred one left open, if any."""
        transaction, self._open, self._joined = self._open, None, 0
        if transaction is None:
            return
        try:
            transaction.commit()
        except BaseException:
            self.warm.clear()
            raise
        after_commit(self.engine)
        self.warm.promote()

    def _begin(self, check: Callable[[Connection], None] | None) -> None:
        conn = self.connection
        restart_log(conn)
        transaction = conn.begin()
        try:
            if check is not None:
                check(conn)
            # Under the write lock (BEGIN IMMEDIATE): nobody commits between this and ours.
            version = conn.exec_driver_sql("PRAGMA data_version").scalar()
            if version != self.warm.data_version:
                self.warm.clear()
                self.warm.data_version = version
        except BaseException:
            transaction.rollback()
            raise
        self._open, self._opened_at = transaction, time.monotonic()

    def _abandon(self) -> None:
        transaction, joined = self._open, self._joined
        self._open, self._joined = None, 0
        try:
            if transaction is not None and transaction.is_active:
                transaction.rollback()
        finally:
            # Earlier transactions of the group were taken into the cache before they committed.
            if joined:
                self.warm.clear()
            else:
                self.warm.discard()

    def close(self) -> None:
        """Rolls back a transaction still left open (the run ends by ``commit``)."""
        try:
            if self._open is not None:
                self._abandon()
        finally:
            self.warm.clear()
            self.connection.close()
