"""Who owns a connector's runs: a lease in the ledger with a fencing token.

The run lock (:mod:`consentsync.sync.locks`) stops two runs starting together, but a
PostgreSQL advisory lock lives as long as one database session: when that session is lost (a
failover, a proxy's idle timeout, ``pg_terminate_backend``) another daemon can take the lock while
the first run goes on reading and pushing on other connections. The lease closes that hole:

* taking it writes a new, larger token; it is held until it expires (renewed by a heartbeat) or
  its holder is seen dead on this host;
* every page commit and every push batch checks the token *in the same transaction* as the work
  (:meth:`Lease.check`), so a run that lost ownership can commit nothing more and sends nothing
  more: it stops, saying why;
* a run found dead when its lease is taken over is recorded as ``crashed``, never left "running";
* a CRM call is begun only by a run that knows it still owns the connector (:func:`call_fence`):
  a process paused past its lease (a VM frozen, SIGSTOP, a laptop asleep) while its pushes were
  marked sent would otherwise wake and send them, stale, after the new owner pushed a later
  choice of the same person; the CRM would hold the old value and the next read take it for the
  person's.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from consentsync.domain import as_utc
from consentsync.ledger.engine import beside_writers, reading
from consentsync.ledger.schema import connector_leases, sync_runs
from consentsync.sync.locks import RunInProgress

log = structlog.get_logger("consentsync.sync")

__all__ = [
    "Lease",
    "LeaseLost",
    "RunInProgress",
    "call_fence",
    "crashed_recorded",
    "on_crashed",
    "this_process",
]


class LeaseLost(RuntimeError):
    """This run no longer owns its connector: another run took the lease over."""


def _pid_namespace() -> int | None:
    """The inode of this process's PID namespace (a container has its own), None off Linux."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _start_time(pid: int | str) -> int | None:
    """When process ``pid`` (of this PID namespace) started, in clock ticks since boot (field 22
    of /proc/PID/stat); None when there is no such process or no /proc to tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", "replace")
    except OSError:
        return None
    # The fields after the command, which is in parentheses and may hold spaces or parentheses
    # itself: the last ")" ends it, and field 3 (the state) follows.
    fields = text[text.rfind(")") + 1 :].split()
    try:
        return int(fields[22 - 3])
    except (IndexError, ValueError):
        return None


def this_process() -> str:
    """``host:pid``, and where /proc tells them ``/pidns/start``: the PID namespace and the
    process's start time. The shipped image runs the daemon as PID 1: after a container restart
    the dead holder ``host:1`` (a container keeps its hostname) would look alive, being the new
    process itself, and its lease was waited out."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    namespace, started = _pid_namespace(), _start_time("self")
    if namespace is None or started is None:
        return base
    return f"{base}/{namespace}/{started}"


def holder_dead(holder: str) -> bool:
    """True when ``holder`` ran on this host and its process is gone (a crash or SIGKILL).

    A holder that recorded its PID namespace and start time (``this_process``) is dead when its
    PID in this namespace is no process or one that started at another time (the PID reused:
    PID 1 of a restarted container), or when it ran in another PID namespace that no process
    here is in any more (the container it ran in is gone). One written by an older version
    (``host:pid``) is dead when its PID is no process."""
    host, _, process = holder.rpartition(":")
    pid, _, recorded = process.partition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    namespace, _, started = recorded.partition("/")
    if namespace.isdigit() and started.isdigit():
        ours = _pid_namespace()
        if ours is not None and int(namespace) != ours:
            return not _namespace_alive(int(namespace))
        now = _start_time(pid)
        if now is not None:
            return now != int(started)
        # No such process, or one /proc hides (hidepid): asked of the kernel as before.
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _namespace_alive(namespace: int) -> bool:
    """Whether some process this one can see is in PID namespace ``namespace`` (or whether that
    cannot be told: a process whose namespace may not be read). A namespace lives as long as a
    process is in it: a container that stopped took its namespace with it."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/pid").st_ino == namespace:
                return True
        except FileNotFoundError:  # the process ended meanwhile
            continue
        except OSError:  # another user's process: its namespace is not ours to read
            return True
    return False


# -- runs found crashed ------------------------------------------------------------------------
#
# A run whose process died counts itself nowhere: whichever part of this process finds it dead
# (the daemon's heartbeat, a run taking its lease over, the console's status page) says so here,
# once it is recorded, to whoever listens (the daemon's metrics: consentsync_runs_total).

CrashListener = Callable[[str, str], None]  # (connector, run id)
_crash_listeners: list[CrashListener] = []
_listeners_lock = threading.Lock()


def on_crashed(listener: CrashListener) -> Callable[[], None]:
    """Calls ``listener(connector, run_id)`` for every run this process records as crashed, from
    now until the returned function is called."""
    with _listeners_lock:
        _crash_listeners.append(listener)

    def stop() -> None:
        with _listeners_lock:
            if listener in _crash_listeners:
                _crash_listeners.remove(listener)

    return stop


def crashed_recorded(runs: Iterable[tuple[str, str]]) -> None:
    """Tells the listeners of each (connector, run id) just recorded as crashed (committed)."""
    with _listeners_lock:
        listeners = list(_crash_listeners)
    for connector, run_id in runs:
        for listener in listeners:
            listener(connector, run_id)


def _elapsed() -> float:
    """Seconds on a clock that no wall-clock step moves and that, on Linux, keeps counting while
    the machine sleeps (a suspended host is a paused run too)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


# The lease the run of this context holds: its CRM calls, made in threads it starts, are fenced
# by it (``call_fence`` is read where a call's thread is made, in the run's context).
_HELD: ContextVar[Lease | None] = ContextVar("consentsync_lease", default=None)


def call_fence() -> Callable[[], None]:
    """What to call before each CRM call a run makes, captured in the run's own thread (a thread
    it starts does not inherit its context): ``Lease.fence`` of the lease the run holds, or
    nothing when it holds none (a dry run, a tool)."""
    lease = _HELD.get()
    return lease.fence if lease is not None else _no_fence


def _no_fence() -> None:
    return None


class Lease:
    def __init__(
        self,
        engine: Engine,
        connector: str,
        run_id: str,
        clock: Callable[[], datetime],
        *,
        ttl: timedelta = timedelta(seconds=60),
    ) -> None:
        self.engine = engine
        self.connector = connector
        self.run_id = run_id
        self.clock = clock
        self.ttl = ttl
        self.holder = this_process()
        self.token: int | None = None
        self.lost = threading.Event()
        self._stop_heartbeat = threading.Event()
        self._heartbeat: threading.Thread | None = None
        # When this run last saw its token current (``_elapsed``): a commit's check, a heartbeat.
        self._confirmed = 0.0

    # -- taking and giving back ----------------------------------------------------------------

    def acquire(self) -> int:
        """Takes the lease (a new token) or raises ``RunInProgress``; records a previous holder
        that died as crashed."""
        now = self.clock()
        crashed: str | None = None
        with beside_writers(self.engine) as conn:
            query = select(connector_leases).where(connector_leases.c.connector == self.connector)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(connector_leases).values(self._values(conn, 1, now)))
                except IntegrityError:
                    raise RunInProgress(
                        f"another process is running connector {self.connector!r} on this ledger"
                    ) from None
                self.token = 1
            else:
                expired = as_utc(row.expires_at) <= now
                dead = holder_dead(row.holder)
                if not (expired or dead):
                    raise RunInProgress(
                        f"another process ({row.holder}) is running connector {self.connector!r} "
                        f"on this ledger; its lease runs until {as_utc(row.expires_at).isoformat()}"
                    )
                token = int(row.token) + 1
                taken = conn.execute(
                    update(connector_leases)
                    .where(
                        connector_leases.c.connector == self.connector, connector_leases.c.token == row.token
                    )
                    .values(self._values(conn, token, now))
                ).rowcount
                if taken != 1:
                    raise RunInProgress(f"another process took connector {self.connector!r} just now")
                self.token = token
                crashed = self._record_crashed(conn, row.run_id, "dead" if dead else "expired", now)
        self._confirmed = _elapsed()
        _HELD.set(self)
        if crashed:
            crashed_recorded([(self.connector, crashed)])  # committed: counted in the metrics
        return self.token

    def release(self) -> None:
        if _HELD.get() is self:
            _HELD.set(None)
        self._stop_heartbeat.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        if self.token is None or self.lost.is_set():
            return
        try:
            with beside_writers(self.engine) as conn:
                conn.execute(
                    update(connector_leases)
                    .where(
                        connector_leases.c.connector == self.connector,
                        connector_leases.c.token == self.token,
                    )
                    .values(expires_at=self.clock())
                )
        except SQLAlchemyError as error:  # the lease then simply expires
            log.warning("lease.release_failed", connector=self.connector, error=type(error).__name__)

    # -- holding -------------------------------------------------------------------------------

    def check(self, conn: Connection) -> None:
        """In the caller's transaction: still the owner (and the lease is extended), or
        ``LeaseLost`` (the caller's transaction then rolls back whole)."""
        if self.token is None:
            return
        checked_at = _elapsed()
        renewed = conn.execute(
            update(connector_leases)
            .where(connector_leases.c.connector == self.connector, connector_leases.c.token == self.token)
            .values(expires_at=self.clock() + self.ttl)
        ).rowcount
        if renewed != 1:
            self.lost.set()
            raise LeaseLost(
                f"connector {self.connector!r} was taken over by another run (lease token {self.token} "
                "is no longer current): this run stopped without committing or pushing more"
            )
        self._confirmed = max(self._confirmed, checked_at)

    def fence(self) -> None:
        """Before a CRM call (in the call's thread): ``LeaseLost`` unless this run still owns its
        connector. Seen current lately (a commit's check, the heartbeat: within a third of the
        lease's time to live, plus slack), nothing is asked; otherwise the process was paused,
        or the ledger could not be reached, for long enough that another run may have taken the
        connector over, and the lease is checked (and renewed) in a transaction of its own
        before anything is sent. A ledger that cannot answer raises its error: a call that
        cannot be fenced is not made."""
        if self.token is None:
            return
        if self.lost.is_set():
            raise LeaseLost(
                f"connector {self.connector!r} was taken over by another run (lease token {self.token} "
                "is no longer current): this run stopped without committing or pushing more"
            )
        if _elapsed() - self._confirmed < self.ttl.total_seconds() / 2:
            return
        with beside_writers(self.engine) as conn:
            self.check(conn)

    def start_heartbeat(self, on_lost: Callable[[], None]) -> None:
        """Renews the lease every third of its time to live while the run waits on the CRM; on
        loss, calls ``on_lost`` (the engine's stop request)."""

        def beat() -> None:
            while not self._stop_heartbeat.wait(self.ttl.total_seconds() / 3):
                try:
                    if self._renewed_lately():
                        continue
                    with beside_writers(self.engine) as conn:
                        self.check(conn)
                except LeaseLost:
                    log.error("lease.lost", connector=self.connector, run_id=self.run_id)
                    on_lost()
                    return
                except SQLAlchemyError as error:  # a lost session: the pool reconnects next beat
                    log.warning(
                        "lease.renewal_failed",
                        connector=self.connector,
                        error=type(error).__name__,
                        # The driver's own words ("database is locked", "server closed the
                        # connection"): a lease statement binds no personal data.
                        detail=str(getattr(error, "orig", None) or error).splitlines()[0][:200],
                    )

        self._heartbeat = threading.Thread(target=beat, name=f"lease-{self.connector}", daemon=True)
        self._heartbeat.start()

    def _renewed_lately(self) -> bool:
        """True when a committed transaction of this run (a page's or a push batch's ``check``)
        extended the lease within the last third of its time to live: the heartbeat then has
        nothing to write. Read without the writer lock. On SQLite a writer that commits back to
        back keeps another connection's BEGIN IMMEDIATE waiting, since the lock is not handed
        over in turn: a heartbeat that always wrote timed out there (``lease.renewal_failed``,
        twice in a 1M-contact sync) while the run itself was renewing the lease every page."""
        read_at = _elapsed()
        with reading(self.engine) as conn:
            row = conn.execute(
                select(connector_leases.c.token, connector_leases.c.expires_at).where(
                    connector_leases.c.connector == self.connector
                )
            ).first()
        if row is None or int(row.token) != self.token:
            return False  # ``check`` says what happened, in a transaction of its own
        if as_utc(row.expires_at) - self.clock() > self.ttl * 2 / 3:
            self._confirmed = max(self._confirmed, read_at)
            return True
        return False

    # -- helpers -------------------------------------------------------------------------------

    def _values(self, conn: Connection, token: int, now: datetime) -> dict[str, object]:
        return {
            "connector": self.connector,
            "token": token,
            "run_id": self.run_id,
            "holder": self.holder,
            "acquired_at": now,
            "expires_at": now + self.ttl,
        }

    def _record_crashed(self, conn: Connection, run_id: str, how: str, now: datetime) -> str | None:
        """Records the previous holder's run as crashed if it is still "running"; returns its id
        when this call recorded it."""
        reason = (
            "crashed: its process died before the run ended"
            if how == "dead"
            else "crashed: its lease expired before the run ended (the process hung or lost the ledger)"
        )
        done = conn.execute(
            update(sync_runs)
            .where(sync_runs.c.id == run_id, sync_runs.c.status == "running")
            .values(status="crashed", finished_at=now, error=reason)
        ).rowcount
        return run_id if done == 1 else None
