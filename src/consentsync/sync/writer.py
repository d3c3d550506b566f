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

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from consentsync.ledger.checkpoint import after_commit, restart_log
from consentsync.ledger.warm import WarmSubjects

# People kept at most: memory and the cycle collector's walks stay flat however large the org.
# A person's pages come close together in a small org; in a large one the cache starts over.
WARM_SUBJECTS = 20_000


class RunWriter:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection = engine.connect()
        self.warm = WarmSubjects(max_subjects=WARM_SUBJECTS)

    @contextmanager
    def transaction(self, check: Callable[[Connection], None] | None = None) -> Iterator[Connection]:
        """A write transaction on the run's connection (``check`` first: the lease), the cache
        emptied where another connection committed since this one last wrote, and what the
        transaction staged taken in once it committed."""
        conn = self.connection
        restart_log(conn)
        try:
            with conn.begin():
                if check is not None:
                    check(conn)
                # Under the write lock (BEGIN IMMEDIATE): nobody commits between this and ours.
                version = conn.exec_driver_sql("PRAGMA data_version").scalar()
                if version != self.warm.data_version:
                    self.warm.clear()
                    self.warm.data_version = version
                yield conn
        except BaseException:
            self.warm.discard()
            raise
        after_commit(self.engine)
        self.warm.promote()

    def close(self) -> None:
        self.warm.clear()
        self.connection.close()
