"""`consentsync run`: the scheduled background service.

One APScheduler job per configured connector (interval or cron), at most one run of a connector
at a time (the job's max_instances, and across processes the connector lock), missed runs
coalesced; daemons sharing a ledger take turns, one run of a connector per interval between them
(``Daemon._ran_by_another_daemon``). Its own jobs besides: the expiry sweep every minute (each run
sweeps too, before its pushes: docs/daemon-ops.md, "Consents that expire"), signed checkpoints and
the hub's upkeep where configured. SIGTERM / SIGINT let the page in hand commit, then stop every
run cleanly and exit.
SIGHUP (a closed terminal, a supervisor's "reload") neither kills the daemon mid-run nor reloads the
configuration: it is logged, saying to restart the daemon to apply a changed config, and every
run goes on.
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select

from consentsync import exit_codes
from consentsync.app import open_sync
from consentsync.config import Config, ConfigError
from consentsync.domain import InvalidInput, as_utc
from consentsync.ledger.problems import ledger_problem
from consentsync.ledger.schema import connector_leases, sync_runs
from consentsync.ledger.service import Ledger
from consentsync.sdk.errors import ConnectorError
from consentsync.sync.engine import RunReport, SyncEngine
from consentsync.sync.heartbeat import Heartbeat, running_daemons
from consentsync.sync.lease import on_crashed
from consentsync.sync.locks import RunInProgress
from consentsync.sync.runs import record_unstarted, settle_crashed
from consentsync.sync.settings import Schedule

log = structlog.get_logger("consentsync.daemon")


def trigger_for(schedule: Schedule) -> IntervalTrigger | CronTrigger:
    if schedule.cron is not None:
        return CronTrigger.from_crontab(schedule.cron, timezone="UTC")
    assert schedule.interval_seconds is not None
    return IntervalTrigger(seconds=schedule.interval_seconds, timezone="UTC")


class Daemon:
    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        *,
        on_report: Callable[[RunReport], None] | None = None,
        on_crashed: Callable[[str, str], None] | None = None,
        late_suppression_age: timedelta = timedelta(days=2),
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.on_report = on_report or (lambda _report: None)
        # (connector, run id) of each run this process records as crashed: its heartbeat finding
        # a dead process's run, a run taking over a dead run's lease (sync/lease.py).
        self.on_crashed = on_crashed
        self._stop_listening: Callable[[], None] = lambda: None
        self.late_suppression_age = late_suppression_age
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.stopping = threading.Event()
        self._signalled = threading.Event()
        self._signals_caught = False
        self._running: dict[str, SyncEngine] = {}
        self._lock = threading.Lock()
        self.heartbeat = Heartbeat(ledger.engine, ledger.clock, on_beat=self._settle_crashed)

    def start(self, *, run_now: bool = True) -> None:
        if self.on_crashed is not None:
            self._stop_listening = on_crashed(self.on_crashed)
        for settings in self.config.settings.connectors:
            self.scheduler.add_job(
                self.run_connector,
                trigger_for(settings.schedule),
                args=[settings.name],
                id=settings.name,
                name=f"sync {settings.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                next_run_time=_now() if run_now else None,
            )
        self.heartbeat.start()
        self._schedule_checkpoints()
        self._schedule_hub_upkeep()
        # The ledger itself is kept current between the runs too: the stored states, exports,
        # reports and the console read "granted" until an expiry is recorded (each run also
        # applies those due before it decides its pushes: SyncEngine._expire_due).
        self._every(EXPIRY_INTERVAL_SECONDS, "ledger-expiry", self.expire_due)
        self.scheduler.start()
        log.info("daemon.started", connectors=[c.name for c in self.config.settings.connectors])

    def _settle_crashed(self) -> None:
        """Runs left "running" by a process that died are recorded as crashed (and so seen by
        `status`, the metrics and /readyz) without waiting for the connector's next run."""
        for run_id in settle_crashed(self.ledger.engine, self.ledger.clock()):
            log.error("sync.crashed_run_found", run_id=run_id)

    def _schedule_checkpoints(self) -> None:
        """Signed checkpoints of the audit chain's head at the configured interval, when
        configured (consentsync.checkpoints; each run writes one at its end too)."""
        from consentsync.checkpoints import signer_for

        signer = signer_for(self.config, self.ledger.clock)
        if signer is not None:
            self._every(
                signer.interval_seconds, "audit-checkpoint", signer.checkpoint_if_moved, self.ledger.engine
            )

    def _schedule_hub_upkeep(self) -> None:
        """The hub's upkeep every ``hub.upkeep_minutes``: unconfirmed double opt-ins lapse,
        renewal requests go out for consents about to expire, and consent requests for the
        purposes ``hub.request_purposes`` names (none by default: an admin sends them with
        ``consentsync hub requests``)."""
        minutes = self.config.settings.hub.upkeep_minutes
        if minutes:
            self._every(minutes * 60, "hub-upkeep", self.hub_upkeep)

    def _every(self, seconds: float, job: str, func: Callable[..., object], *args: object) -> None:
        """Schedules one of the daemon's own jobs every ``seconds``, as ``~job`` (no connector's name
        starts with "~") named ``job`` with spaces for dashes: its first run at once, one at a time, and
        runs it missed coalesced into one."""
        self.scheduler.add_job(
            func,
            IntervalTrigger(seconds=seconds, timezone="UTC"),
            args=list(args),
            id=f"~{job}",
            name=job.replace("-", " "),
            max_instances=1,
            coalesce=True,
            next_run_time=_now(),
        )

    def expire_due(self) -> int:
        """Records the expiries due (``Ledger.expire_due``: once each, whatever runs at the same
        time); returns how many. A failure is logged, in one line, and the next turn tries again."""

        def between() -> None:
            # A backlog (the first start after an upgrade) must not hold a stop past its grace
            # period: what is committed stays, the rest is the next start's (or run's).
            if self.stopping.is_set():
                raise _Stopped

        try:
            expired = self.ledger.expire_due(between=between).recorded
        except _Stopped:
            return 0
        except Exception as error:
            problem = ledger_problem(error, self.config.ledger_url)
            # The class only, or the ledger's one-line problem: a message may quote a value.
            log.error("ledger.expiry_failed", error=problem.message if problem else type(error).__name__)
            return 0
        if expired:
            log.info("ledger.expired", expired=expired)
        return expired

    def hub_upkeep(self) -> None:
        from consentsync.hub.capture import Hub
        from consentsync.hub.outreach import Outreacher

        hub = Hub(self.config, self.ledger)
        outreach = Outreacher(hub, sleep=self.stopping.wait)
        try:
            lapsed = hub.lapse_unconfirmed()
            renewals = outreach.renew()
            requests = [outreach.request_consent(key) for key in self.config.settings.hub.request_purposes]
        except Exception as error:
            # The daemon goes on and the next upkeep tries again. The class only: a message may
            # quote an address.
            log.error("hub.upkeep_failed", error=type(error).__name__)
            return
        log.info(
            "hub.upkeep",
            lapsed=lapsed,
            renewals_sent=renewals.sent,
            renewals_failed=renewals.failed,
            requests_sent=sum(done.sent for done in requests),
            requests_failed=sum(done.failed for done in requests),
            # People left out while the mails were paced: erased, or restricted, withdrawn or
            # objecting meanwhile (hub/outreach.py), as the CLI's outreach commands say.
            left_out_erased=renewals.erased + sum(done.erased for done in requests),
            left_out_changed=renewals.changed + sum(done.changed for done in requests),
        )

    def next_runs(self) -> dict[str, Any]:
        return {job.id: job.next_run_time for job in self.scheduler.get_jobs()}

    def run_connector(self, name: str) -> RunReport | None:
        """One scheduled run. Whatever happens, the run leaves a row with its reason and is
        counted in the metrics; nothing is raised to APScheduler (which would log a bare
        traceback and record nothing)."""
        if self.stopping.is_set():
            return None
        if self._ran_by_another_daemon(name):
            return None
        try:
            self.config.check_vendor(name)
            engine = open_sync(self.config, name, self.ledger)
        except (ConfigError, InvalidInput, ConnectorError) as error:
            # Failed before its first API call: recorded like any failed run, with its reason.
            problem = str(error)
            return self._unstarted(name, f"config: {problem}", lambda: self._record(name, problem))
        except Exception as error:  # a connector that cannot be built for a reason nobody foresaw
            reason = f"{type(error).__name__} (the traceback is in the log)"
            record = lambda: self._record(name, reason, "internal")  # noqa: E731
            return self._unstarted(name, f"internal: {reason}", record, exc_info=True)
        with self._lock:
            self._running[name] = engine
            # A stop that came while the connector was being opened found no engine to stop: it
            # is seen here (under the lock stop() takes), or the run would go on to its end, a
            # full sync perhaps, while the stop waited for it (and a supervisor's grace period
            # ran out into a SIGKILL).
            stopped = self.stopping.is_set()
        if stopped:
            engine.connector.close()
            with self._lock:
                self._running.pop(name, None)
            return None
        try:
            report = engine.run()
        except RunInProgress as busy:
            # The engine recorded the skipped run; the metrics count it.
            log.warning("sync.skipped", connector=name, reason=str(busy))
            return self._unstarted(name, f"skipped: {busy}", None, status="skipped")
        except Exception as error:
            problem = ledger_problem(error, self.config.ledger_url)
            if problem is not None:  # the ledger refused (at the lock, the lease): one line, no traceback
                return self._unstarted(name, f"ledger: {problem.message}", None)
            if isinstance(error, OSError) and error.errno in exit_codes.NO_SPACE_ERRNOS:
                # The engine recorded the run as failed and said why in one line (sync.failed).
                return self._unstarted(name, f"disk: {error}", None)
            # The engine recorded the run as failed and logged the traceback.
            log.error("sync.run_raised", connector=name, error_type=type(error).__name__)
            return self._unstarted(name, f"internal: {type(error).__name__}", None)
        finally:
            engine.connector.close()
            with self._lock:
                self._running.pop(name, None)
        self.on_report(report)
        try:
            self._warn_late_suppressions()
        except Exception as error:
            problem = ledger_problem(error, self.config.ledger_url)
            if problem is None:
                raise
            log.error("suppression.check_failed", connector=name, error=f"ledger: {problem.message}")
        return report

    def _ran_by_another_daemon(self, name: str) -> bool:
        """True when another daemon running on this ledger started a run of connector ``name``
        within this schedule period (less than one interval, bar a little slack, ago): this
        daemon's turn is then passed over, quietly (no run row: nothing was due), so that two
        daemons on one ledger (a standby, a second host) make one run of a connector per
        interval between them, not one each. The run lock and the lease keep two runs from
        overlapping; this keeps them from coming twice as often. A run made by anything but a
        daemon (`consentsync sync` by hand or from cron) does not count: the schedule runs anyway."""
        try:
            now = self.ledger.clock()
            with self.ledger.engine.connect() as conn:
                lease = conn.execute(
                    select(connector_leases.c.holder, connector_leases.c.acquired_at, sync_runs.c.status)
                    .select_from(connector_leases)
                    .outerjoin(sync_runs, sync_runs.c.id == connector_leases.c.run_id)
                    .where(connector_leases.c.connector == name)
                ).first()
            if lease is None or lease.holder == self.heartbeat.holder:
                return False
            if lease.status not in TURN_TAKEN:
                # The other daemon's run failed, crashed or stopped: it did not do this turn's
                # work (a host with a wrong secret or no route to the CRM would otherwise keep
                # every other daemon from syncing), so this daemon runs as scheduled.
                return False
            period = schedule_period(self.config.connector(name).schedule, now)
            since = now - as_utc(lease.acquired_at)
            if since >= period - min(period / 10, timedelta(seconds=60)):
                return False
            if lease.holder not in {seen.holder for seen in running_daemons(self.ledger.engine, now)}:
                return False
        except Exception as error:  # the ledger is away: the run finds out and says so
            log.warning("sync.turn_check_failed", connector=name, error_type=type(error).__name__)
            return False
        log.info(
            "sync.not_due",
            connector=name,
            reason=f"daemon {lease.holder} started a run {since.total_seconds():.0f} s ago, "
            f"within the schedule's {period.total_seconds():.0f} s",
        )
        return True

    def _record(self, name: str, reason: str, kind: str = "config") -> str:
        return record_unstarted(self.ledger.engine, name, reason, self.ledger.clock(), kind=kind)

    def _unstarted(
        self,
        name: str,
        error: str,
        record: Callable[[], str] | None,
        *,
        status: str = "failed",
        exc_info: bool = False,
    ) -> RunReport:
        if status == "failed":
            log.error("sync.failed", connector=name, error=error, exc_info=exc_info)
        run_id = None
        if record is not None:
            try:
                run_id = record()  # the report names the run row that was recorded
            except Exception as failure:  # the ledger is away too: the log says so
                log.error("sync.run_not_recorded", connector=name, error_type=type(failure).__name__)
        now = self.ledger.clock()
        report = RunReport(run_id or str(uuid.uuid4()), name, status, now, finished_at=now, error=error)
        self.on_report(report)
        return report

    def _warn_late_suppressions(self) -> None:
        from consentsync.observability import dead_suppressions, late_suppressions

        for row in late_suppressions(self.ledger.engine, self.late_suppression_age):
            # CAN-SPAM allows 10 business days; a suppression stuck this long is an incident.
            log.error(
                "suppression.late",
                outbox=row["id"],
                connector=row["connector"],
                object=row["object"],
                record_id=row["record_id"],
                age_seconds=row["age_seconds"],
            )
        # A suppression the CRM kept refusing is dead-lettered: no longer pending, so no longer
        # late, and yet the CRM will never get it unless someone retries it. Said as loudly.
        for connector, count in dead_suppressions(self.ledger.engine).items():
            log.error(
                "suppression.dead_lettered",
                connector=connector,
                count=count,
                action="see them with `consentsync outbox list --dead`; once the CRM accepts them, "
                "`consentsync outbox retry ID...`",
            )

    def stop(self) -> None:
        """Lets every run commit the page in hand and stop; waits for them; shuts down."""
        self.stopping.set()
        with self._lock:
            for engine in self._running.values():
                engine.stop_requested.set()
        self.scheduler.shutdown(wait=True)
        self.heartbeat.stop()
        self._stop_listening()
        log.info("daemon.stopped")

    def catch_signals(self) -> None:
        """From now on SIGTERM and SIGINT stop the daemon cleanly (``serve_until_signalled``).
        Called before anything is served: a stop sent as soon as /healthz answers, before the
        scheduler has started, killed the process (exit -15) instead."""
        if self._signals_caught:
            return
        self._signals_caught = True

        def handle(signum: int, _frame: Any) -> None:
            log.info("daemon.signal", signal=signal.Signals(signum).name)
            self._signalled.set()

        def hangup(signum: int, _frame: Any) -> None:
            # Left to its default, SIGHUP killed the process at once: a run in hand crashed, its
            # page uncommitted, and no daemon ran on. The configuration is read once, at start.
            log.warning(
                "daemon.signal_ignored",
                signal=signal.Signals(signum).name,
                reason="the configuration is not reloaded: restart the daemon (SIGTERM) to apply changes",
            )

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, hangup)

    @property
    def signalled(self) -> bool:
        return self._signalled.is_set()

    def serve_until_signalled(self) -> None:
        self.catch_signals()
        # Waited for in slices: a signal the kernel hands to another thread (a run's, the
        # scheduler's) only marks Python's handler as due, and the main thread runs it at its
        # next bytecode; blocked in one untimed wait it never got there, and the daemon ignored
        # the SIGTERM for good (a supervisor's SIGKILL followed).
        while not self._signalled.wait(_SIGNAL_POLL_SECONDS):
            pass
        self.stop()


class _Stopped(Exception):
    """The daemon is stopping: its expiry job leaves what it has not committed."""


# How often the main thread looks whether a signal asked the daemon to stop.
_SIGNAL_POLL_SECONDS = 0.25

# How often the daemon records the expiries due (a range read of one partial index: cheap).
EXPIRY_INTERVAL_SECONDS = 60

# The states of another daemon's run that count as this schedule period's run: still going, done,
# or done but for the pushes the push guard held (a run here would be held the same way).
TURN_TAKEN = frozenset({"running", "succeeded", "held"})


def schedule_period(schedule: Schedule, now: Any) -> timedelta:
    """The time between two runs ``schedule`` makes: its interval, or the gap between a cron
    expression's next two times after ``now``."""
    if schedule.interval_seconds is not None:
        return timedelta(seconds=schedule.interval_seconds)
    trigger = trigger_for(schedule)
    first = trigger.get_next_fire_time(None, now)
    second = trigger.get_next_fire_time(first, first) if first is not None else None
    if first is None or second is None:
        return timedelta(0)
    return second - first  # type: ignore[no-any-return]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
