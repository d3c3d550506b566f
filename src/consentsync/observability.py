"""What the daemon serves for monitoring: Prometheus metrics, liveness and readiness.

``Metrics`` owns its own registry (never prometheus_client's global one). Run counters are fed by
``observe_run`` from each finished ``RunReport``; the outbox gauges are read from the ledger on
every scrape, so they are true even when another process did the work. ``HealthServer`` serves
``/metrics``, ``/healthz`` (the process is up) and ``/readyz`` (the ledger answers and no
connector's last runs all failed).

Nothing here names a person: labels are connector names, statuses and results; bodies carry
counts, connector names and fixed reasons, never an exception's text (a driver error may hold the
ledger URL and its password).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import Engine, and_, case, func, select, text

from consentsync.ledger.schema import outbox, quarantine, sync_runs
from consentsync.sync.engine import RunReport

log = structlog.get_logger("consentsync.observability")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9181
DEFAULT_FAILURE_THRESHOLD = 3
RUN_STATUSES = ("running", "succeeded", "stopped", "held", "failed", "crashed", "skipped")
FAILED_STATUSES = ("failed", "crashed")
NOT_A_VERDICT = ("running", "skipped", "dry_run")  # runs that say nothing of a connector's health
STREAK_WINDOW = 100
# Sync runs take seconds to hours: buckets from one second to six hours.
RUN_DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)

Clock = Callable[[], datetime]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- metrics -------------------------------------------------------------------------------------


class LedgerCollector(Collector):
    """Gauges read from the ledger at scrape time: outbox depth, dead letters and the age of the
    oldest suppression still waiting to reach each CRM."""

    def __init__(self, engine: Engine, clock: Clock = _utcnow, known: Callable[[], Iterable[str]] = tuple):
        self.engine = engine
        self.clock = clock
        self.known = known  # connectors to report with zeros even when the outbox never held a row

    def describe(self) -> Iterator[Metric]:
        # Declared without reading the ledger, so registering the collector touches no database.
        yield GaugeMetricFamily(
            "consentsync_ledger_up", "1 when the last scrape could read the ledger, else 0"
        )
        yield from self._run_families()
        yield from self._families()

    @staticmethod
    def _run_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "consentsync_last_run_status",
                "1 for the status of the connector's last run in the ledger (any process's), else 0",
                labels=["connector", "status"],
            ),
            GaugeMetricFamily(
                "consentsync_consecutive_failed_runs",
                "Finished runs in a row, up to the last one, that failed or crashed (skipped runs "
                "are passed over)",
                labels=["connector"],
            ),
        )

    def _streaks(self, names: list[str]) -> dict[str, tuple[str, int]]:
        """Per connector: the last run's status and how many of its last finished runs failed."""
        found: dict[str, tuple[str, int]] = {}
        with self.engine.connect() as conn:
            for name in names:
                statuses = list(
                    conn.execute(
                        select(sync_runs.c.status)
                        .where(sync_runs.c.connector == name)
                        .order_by(sync_runs.c.started_at.desc(), sync_runs.c.id.desc())
                        .limit(STREAK_WINDOW)
                    ).scalars()
                )
                if statuses:
                    found[name] = (statuses[0], failure_streak(statuses))
        return found

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "consentsync_ledger_up", "1 when the last scrape could read the ledger, else 0"
        )
        try:
            pending, dead, oldest, held, dead_suppressions = self._read()
        except Exception as error:
            log.error("metrics.ledger_unreachable", error_type=type(error).__name__)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        now = self.clock()
        names = set(pending) | set(dead) | set(oldest) | set(held) | set(dead_suppressions)
        names |= set(self.known())
        try:
            streaks = self._streaks(sorted(set(self.known())))
        except Exception as error:
            log.error("metrics.runs_unreadable", error_type=type(error).__name__)
            streaks = {}
        last_family, failing_family = self._run_families()
        for name, (last, failing) in sorted(streaks.items()):
            for status in RUN_STATUSES:
                last_family.add_metric([name, status], 1.0 if status == last else 0.0)
            failing_family.add_metric([name], float(failing))
        yield last_family
        yield failing_family
        pending_family, dead_family, age_family, held_family, dead_suppression_family = self._families()
        for name in sorted(names):
            pending_family.add_metric([name], float(pending.get(name, 0)))
            dead_family.add_metric([name], float(dead.get(name, 0)))
            since = oldest.get(name)
            age_family.add_metric([name], max(0.0, (now - since).total_seconds()) if since else 0.0)
            held_family.add_metric([name], float(held.get(name, 0)))
            dead_suppression_family.add_metric([name], float(dead_suppressions.get(name, 0)))
        yield pending_family
        yield dead_family
        yield age_family
        yield held_family
        yield dead_suppression_family

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "consentsync_outbox_pending", "Outbox rows waiting to be pushed", labels=["connector"]
            ),
            GaugeMetricFamily(
                "consentsync_outbox_dead",
                "Outbox rows dead-lettered after repeated refusals",
                labels=["connector"],
            ),
            GaugeMetricFamily(
                "consentsync_oldest_pending_suppression_age_seconds",
                "Age of the oldest pending outbox row that suppresses contact (0 when none)",
                labels=["connector"],
            ),
            GaugeMetricFamily(
                "consentsync_quarantined_open",
                "Quarantined records not yet resolved (in the ledger, whichever process held them)",
                labels=["connector"],
            ),
            GaugeMetricFamily(
                "consentsync_outbox_dead_suppressions",
                "Dead-lettered outbox rows that suppress contact: a withdrawal, objection or erasure "
                "the CRM refused and will not get unless retried",
                labels=["connector"],
            ),
        )

    def _read(
        self,
    ) -> tuple[dict[str, int], dict[str, int], dict[str, datetime], dict[str, int], dict[str, int]]:
        pending: dict[str, int] = {}
        dead: dict[str, int] = {}
        with self.engine.connect() as conn:
            counts = conn.execute(
                select(outbox.c.connector, outbox.c.status, func.count())
                .where(outbox.c.status.in_(("pending", "dead")))
                .group_by(outbox.c.connector, outbox.c.status)
            )
            for connector, status, count in counts:
                (pending if status == "pending" else dead)[connector] = int(count)
            oldest = {
                connector: since
                for connector, since in conn.execute(
                    select(outbox.c.connector, func.min(outbox.c.created_at))
                    .where(and_(outbox.c.status == "pending", outbox.c.suppression.is_(True)))
                    .group_by(outbox.c.connector)
                )
                if since is not None
            }
            held = {
                connector: int(count)
                for connector, count in conn.execute(
                    select(quarantine.c.connector, func.count())
                    .where(quarantine.c.resolved_at.is_(None))
                    .group_by(quarantine.c.connector)
                )
            }
            dead_suppressions = {
                connector: int(count)
                for connector, count in conn.execute(
                    select(outbox.c.connector, func.count())
                    .where(and_(outbox.c.status == "dead", outbox.c.suppression.is_(True)))
                    .group_by(outbox.c.connector)
                )
            }
        return pending, dead, oldest, held, dead_suppressions


class LastSuccessCollector(Collector):
    """``consentsync_last_success_timestamp_seconds``: when each connector's last successful run
    finished, the later of what this process saw and what the ledger holds (any process's runs,
    from before a restart too). Without it, a daemon restarted while its connector fails would
    show no sample at all, and an alert on ``time() - consentsync_last_success_timestamp_seconds``
    would never fire."""

    def __init__(
        self,
        engine: Engine | None,
        known: Callable[[], Iterable[str]],
        local: Callable[[], dict[str, float]],
    ) -> None:
        self.engine = engine
        self.known = known
        self.local = local

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "consentsync_last_success_timestamp_seconds",
            "Unix time the connector's last successful run finished (in the ledger, any process's)",
            labels=["connector"],
        )

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def _from_ledger(self, names: list[str]) -> dict[str, float]:
        if self.engine is None or not names:
            return {}
        query = (
            select(sync_runs.c.connector, func.max(sync_runs.c.finished_at))
            .where(sync_runs.c.status == "succeeded", sync_runs.c.connector.in_(names))
            .group_by(sync_runs.c.connector)
        )
        found: dict[str, float] = {}
        with self.engine.connect() as conn:
            for name, finished in conn.execute(query):
                if finished is not None:
                    if finished.tzinfo is None:
                        finished = finished.replace(tzinfo=UTC)
                    found[name] = finished.timestamp()
        return found

    def collect(self) -> Iterator[Metric]:
        stamps = self.local()
        try:
            stored = self._from_ledger(sorted(set(self.known()) | set(stamps)))
        except Exception as error:
            log.error("metrics.runs_unreadable", error_type=type(error).__name__)
            stored = {}
        family = self._family()
        for name in sorted(set(stamps) | set(stored)):
            family.add_metric([name], max(stamps.get(name, 0.0), stored.get(name, 0.0)))
        yield family


class Metrics:
    """The daemon's Prometheus metrics, in a registry of their own."""

    def __init__(self, engine: Engine | None = None, *, clock: Clock = _utcnow) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._connectors: set[str] = set()
        self._lock = threading.Lock()
        labels = ["connector"]
        r = self.registry
        self.records_read = Counter("consentsync_records_read", "CRM records read", labels, registry=r)
        self.ledger_changes = Counter(
            "consentsync_ledger_changes", "Effective consent states changed in the ledger", labels, registry=r
        )
        self.pushes = Counter(
            "consentsync_pushes",
            "Writes to the CRM by result (done, failed)",
            [*labels, "result"],
            registry=r,
        )
        self.api_calls = Counter("consentsync_api_calls", "CRM API calls made", labels, registry=r)
        self.quarantined = Counter(
            "consentsync_quarantined", "Records held in quarantine", labels, registry=r
        )
        self.runs = Counter(
            "consentsync_runs", "Sync runs finished, by status", [*labels, "status"], registry=r
        )
        self.api_budget_remaining = Gauge(
            "consentsync_api_budget_remaining",
            "CRM API calls left in the budget the CRM last reported",
            labels,
            registry=r,
        )
        self.run_duration = Histogram(
            "consentsync_run_duration_seconds",
            "Duration of sync runs",
            labels,
            buckets=RUN_DURATION_BUCKETS,
            registry=r,
        )
        self.pushes_held = Gauge(
            "consentsync_pushes_held",
            "Pushes the connector's last run held back: observe mode, or the blast-radius guard "
            "(the run's status is then held, waiting for an approved plan)",
            labels,
            registry=r,
        )
        # Unix time of each connector's last successful run seen by this process; the scrape
        # also reads the ledger (LastSuccessCollector), so a restart or a run made by another
        # process (`consentsync sync` from cron, a second daemon) does not hide it.
        self._last_success: dict[str, float] = {}
        self.engine = engine
        r.register(LastSuccessCollector(engine, self.connectors, self.last_successes))
        if engine is not None:
            r.register(LedgerCollector(engine, clock, self.connectors))

    def last_successes(self) -> dict[str, float]:
        with self._lock:
            return dict(self._last_success)

    def connectors(self) -> list[str]:
        with self._lock:
            return sorted(self._connectors)

    def watch(self, names: Iterable[str]) -> None:
        """Connectors reported from the first scrape on, before any of their runs ends."""
        with self._lock:
            self._connectors.update(names)

    def observe_run(self, report: RunReport) -> None:
        """Adds a finished run's counts. Dry runs change nothing and are not counted."""
        if report.status in ("dry_run", "running"):
            return
        name = report.connector
        with self._lock:
            self._connectors.add(name)
        if report.status == "skipped":  # another process held the connector: nothing was done
            self.runs.labels(name, report.status).inc()
            return
        counts = report.counts
        self.records_read.labels(name).inc(max(0, counts.read))
        self.ledger_changes.labels(name).inc(max(0, counts.state_changes))
        self.pushes.labels(name, "done").inc(max(0, counts.pushed))
        self.pushes.labels(name, "failed").inc(max(0, counts.push_failed))
        self.api_calls.labels(name).inc(max(0, counts.api_calls))
        self.quarantined.labels(name).inc(max(0, counts.quarantined))
        self.runs.labels(name, report.status).inc()
        self.pushes_held.labels(name).set(max(0, counts.pushes_held))
        if counts.api_limit is not None and counts.api_used is not None:
            self.api_budget_remaining.labels(name).set(max(0, counts.api_limit - counts.api_used))
        if report.finished_at is not None:
            duration = (report.finished_at - report.started_at).total_seconds()
            self.run_duration.labels(name).observe(max(0.0, duration))
            if report.status == "succeeded":
                stamp = report.finished_at.timestamp()
                with self._lock:
                    self._last_success[name] = max(stamp, self._last_success.get(name, stamp))

    def observe_crashed(self, connector: str, _run_id: str) -> None:
        """A run this process found crashed (its process died mid-run and never reported it):
        counted in ``consentsync_runs_total{status="crashed"}``, once, by the process that
        recorded it."""
        with self._lock:
            self._connectors.add(connector)
        self.runs.labels(connector, "crashed").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# -- readiness and late suppressions -------------------------------------------------------------


def ledger_reachable(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception as error:
        log.error("readyz.ledger_unreachable", error_type=type(error).__name__)
        return False


def failure_streak(statuses: Iterable[str]) -> int:
    """How many runs in a row, newest first, failed or crashed; runs in progress and skipped runs
    are passed over."""
    streak = 0
    for status in statuses:
        if status in NOT_A_VERDICT:
            continue
        if status not in FAILED_STATUSES:
            break
        streak += 1
    return streak


def failing_connectors(engine: Engine, threshold: int = DEFAULT_FAILURE_THRESHOLD) -> list[str]:
    """Connectors whose last ``threshold`` finished runs all failed or crashed (a run in progress
    and a skipped run are left out: they have not failed, and they have not succeeded either)."""
    threshold = max(1, threshold)
    ranked = select(
        sync_runs.c.connector,
        sync_runs.c.status,
        func.row_number()
        .over(
            partition_by=sync_runs.c.connector,
            order_by=(sync_runs.c.started_at.desc(), sync_runs.c.id.desc()),
        )
        .label("n"),
    ).where(sync_runs.c.status.not_in(NOT_A_VERDICT))
    recent = ranked.subquery()
    query = (
        select(
            recent.c.connector,
            func.count(),
            func.sum(case((recent.c.status.in_(FAILED_STATUSES), 1), else_=0)),
        )
        .where(recent.c.n <= threshold)
        .group_by(recent.c.connector)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return sorted(name for name, runs, failures in rows if runs >= threshold and failures == runs)


def readiness(engine: Engine, threshold: int = DEFAULT_FAILURE_THRESHOLD) -> tuple[bool, dict[str, Any]]:
    """(ready, body): the body says why not, in terms safe to show anyone who can reach the port."""
    if not ledger_reachable(engine):
        return False, {"status": "not ready", "reason": "ledger unreachable"}
    try:
        failing = failing_connectors(engine, threshold)
    except Exception as error:
        log.error("readyz.runs_unreadable", error_type=type(error).__name__)
        return False, {"status": "not ready", "reason": "sync runs unreadable"}
    if failing:
        return False, {
            "status": "not ready",
            "reason": f"connector failing: last {threshold} runs failed",
            "connectors": failing,
        }
    return True, {"status": "ready"}


def late_suppressions(
    engine: Engine, older_than: timedelta, *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Pending outbox rows that suppress contact and have waited longer than ``older_than``:
    someone withdrew or objected and the CRM still does not know. Oldest first. No personal data:
    outbox rows name CRM records, not people."""
    now = now or _utcnow()
    cutoff = now - older_than
    query = (
        select(outbox.c.id, outbox.c.connector, outbox.c.object_type, outbox.c.record_id, outbox.c.created_at)
        .where(
            and_(
                outbox.c.status == "pending",
                outbox.c.suppression.is_(True),
                outbox.c.created_at < cutoff,
            )
        )
        .order_by(outbox.c.created_at, outbox.c.id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "id": row.id,
            "connector": row.connector,
            "object": row.object_type,
            "record_id": row.record_id,
            "age_seconds": round((now - row.created_at).total_seconds(), 3),
        }
        for row in rows
    ]


def dead_suppressions(engine: Engine) -> dict[str, int]:
    """Per connector, the dead-lettered outbox rows that suppress contact: withdrawals, objections
    and erasures the CRM kept refusing and that no run sends again unless retried."""
    query = (
        select(outbox.c.connector, func.count())
        .where(and_(outbox.c.status == "dead", outbox.c.suppression.is_(True)))
        .group_by(outbox.c.connector)
        .order_by(outbox.c.connector)
    )
    with engine.connect() as conn:
        return {connector: int(count) for connector, count in conn.execute(query)}


# -- the HTTP server -----------------------------------------------------------------------------


def health_app(owner: HealthServer) -> WsgiApp:
    """A WSGI app: prometheus-client's own ``/metrics`` app (content negotiation, OpenMetrics,
    gzip, ``name[]`` filters) over the daemon's registry, beside ``/healthz`` and ``/readyz``."""
    metrics_app = make_wsgi_app(owner.metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            status, body, content_type = HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8"
        elif path == "/readyz":
            ready, answer = readiness(owner.engine, owner.failure_threshold)
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            body, content_type = json.dumps(answer).encode() + b"\n", "application/json"
        else:
            status, body, content_type = HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8"
        start_response(
            f"{status.value} {status.phrase}",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]

    return app


class _HealthHTTPServer(ThreadingWSGIServer):
    """An IPv6 socket for an IPv6 address (the console's and the sandboxes' servers do the same):
    the base class makes IPv4 ones only, which fail to bind ``::1`` with a resolver error."""

    def __init__(self, address: tuple[str, int], *args: Any, **kwargs: Any) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, *args, **kwargs)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http.request", client=self.client_address[0], line=format % args)


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` from a daemon thread. Port 0 takes a
    free port; ``.port`` says which once started."""

    def __init__(
        self,
        metrics: Metrics,
        engine: Engine,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
    ) -> None:
        self.metrics = metrics
        self.engine = engine
        self.host = host
        self.port = port
        self.failure_threshold = failure_threshold
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HealthServer:
        if self._server is not None:
            return self
        server = make_server(
            self.host, self.port, health_app(self), _HealthHTTPServer, handler_class=_QuietHandler
        )
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="consentsync-health", daemon=True
        )
        self._thread.start()
        log.info("health.listening", host=self.host, port=self.port)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
