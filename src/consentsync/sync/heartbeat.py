"""Whether a daemon is running on this ledger: each `consentsync run` keeps a heartbeat row.

The row lives in ``connector_leases`` under a name no connector can have (connector names start
with a letter; these start with ``~daemon:``), so no migration is needed: ``holder`` is the
daemon's host:pid, ``acquired_at`` when it started, ``expires_at`` when its heartbeat goes stale
(renewed every ``interval``; stale after three missed beats). A daemon that stops cleanly deletes
its row; one that died leaves a row that expires, and ``consentsync status`` then says "no daemon
running" rather than a "next run" nobody will make.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from consentsync.domain import as_utc
from consentsync.ledger.engine import beside_writers
from consentsync.ledger.schema import connector_leases
from consentsync.sync.lease import holder_dead, this_process

log = structlog.get_logger("consentsync.daemon")

PREFIX = "~daemon:"
DEFAULT_INTERVAL = timedelta(seconds=15)
NIL_RUN = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class DaemonSeen:
    holder: str
    started_at: datetime
    beat_until: datetime


def _key(holder: str) -> str:
    """The row's name for ``holder``: as it is where it fits the column (64), else a digest of
    it. Cut to fit, two daemons on one long-named host (or two containers of one hostname, each
    PID 1) shared a row: each beat overwrote the other's, and one of them looked gone."""
    key = PREFIX + holder
    if len(key) <= 64:
        return key
    return PREFIX + hashlib.sha256(holder.encode()).hexdigest()[:48]


class Heartbeat:
    """Writes this process's heartbeat row now and every ``interval`` until stopped; ``on_beat``
    runs after each beat (the daemon settles crashed runs there)."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime],
        *,
        interval: timedelta = DEFAULT_INTERVAL,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.interval = interval
        self.on_beat = on_beat or (lambda: None)
        self.holder = this_process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at: datetime | None = None

    def beat(self) -> None:
        now = self.clock()
        if self._started_at is None:
            self._started_at = now
        values = {"expires_at": now + 3 * self.interval}
        key = _key(self.holder)
        with beside_writers(self.engine) as conn:
            # Rows of daemons long gone (killed, their host rebuilt) are cleared as we go.
            conn.execute(
                delete(connector_leases).where(
                    connector_leases.c.connector.like(PREFIX + "%"),
                    connector_leases.c.expires_at < now - timedelta(days=1),
                )
            )
            renewed = conn.execute(
                update(connector_leases).where(connector_leases.c.connector == key).values(values)
            ).rowcount
            if renewed == 0:
                conn.execute(
                    insert(connector_leases).values(
                        connector=key,
                        token=0,
                        run_id=NIL_RUN,
                        holder=self.holder[:200],
                        acquired_at=self._started_at,
                        **values,
                    )
                )

    def start(self) -> Heartbeat:
        self._tick()

        def loop() -> None:
            while not self._stop.wait(self.interval.total_seconds()):
                self._tick()

        self._thread = threading.Thread(target=loop, name="consentsync-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _tick(self) -> None:
        try:
            self.beat()
            self.on_beat()
        except SQLAlchemyError as error:  # the ledger is away: the next beat tries again
            log.warning("daemon.heartbeat_failed", error_type=type(error).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with beside_writers(self.engine) as conn:
                conn.execute(
                    delete(connector_leases).where(connector_leases.c.connector == _key(self.holder))
                )
        except SQLAlchemyError as error:  # the row then simply goes stale
            log.warning("daemon.heartbeat_not_cleared", error_type=type(error).__name__)


def running_daemons(engine: Engine, now: datetime | None = None) -> list[DaemonSeen]:
    """Daemons whose heartbeat is fresh (and, on this host, whose process exists)."""
    now = now or datetime.now(UTC)
    query = select(connector_leases).where(connector_leases.c.connector.like(PREFIX + "%"))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    seen = []
    for row in rows:
        until = as_utc(row.expires_at)
        if until > now and not holder_dead(row.holder):
            seen.append(DaemonSeen(row.holder, as_utc(row.acquired_at), until))
    return sorted(seen, key=lambda d: d.started_at)
