"""A consent that expires (its purpose's ``validity_days``) reaches every CRM without an operator
step: a sync run applies the expiries due before it decides its pushes, in its own transactions
and in the audit chain as ``consentsync ledger expire`` does; a dry run writes nothing and plans
what they imply; two runs at once expire a consent once. Against the Salesforce sandbox, on
SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from consentsync import audit
from consentsync.domain import ConsentStatus, Evidence, as_utc
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import audit_entries, consent_events, consent_states, outbox, sync_runs
from consentsync.ledger.service import EXPIRY_SOURCE, Ledger
from consentsync.sdk.crashtest import sync_command
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from consentsync.sync.engine import SyncEngine
from tests.conftest import SQLITE_ONLY, running_harness

VALIDITY = timedelta(days=1)
# How long from the grants until their validity ends: past the first sync's end, soon enough to
# keep the tests short.
LEAD = timedelta(seconds=4)


@pytest.fixture
def harness() -> Iterator[Any]:
    with running_harness("salesforce") as started:
        yield started


@pytest.fixture
def opened() -> Iterator[Callable[..., SyncEngine]]:
    """Opens sync engines (``open_sync_engine``: each on a ledger of its own) and disposes of
    their ledgers afterwards."""
    engines: list[SyncEngine] = []

    def open_engine(config: Path, name: str = "contract") -> SyncEngine:
        engines.append(open_sync_engine(config, name))
        return engines[-1]

    yield open_engine
    for engine in engines:
        engine.ledger.engine.dispose()


def expiring_config(harness: Any, directory: Path, ledger_url: str, **connector: Any) -> Path:
    """The harness's sync config (two-way, every record pushed to) on ``ledger_url``, with email
    marketing's validity cut to one day; ``connector`` adds to the connector's entry."""
    path = write_sync_config(harness, directory)
    data = yaml.safe_load(path.read_text())
    data["ledger"]["url"] = ledger_url
    (purpose,) = [p for p in data["purposes"] if p["key"] == "email_marketing"]
    purpose["validity_days"] = VALIDITY.days
    data["connectors"][0].update(connector)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def expiring_soon(ledger: Ledger, emails: list[str]) -> datetime:
    """Grants on the web form (notice v1, as `ledger record --at` records them) for ``emails``
    whose validity ends ``LEAD`` from now; returns that moment."""
    ends = datetime.now(UTC) + LEAD
    for email in emails:
        ledger.record(
            Identity(email=email),
            Evidence.from_web_form(
                ConsentStatus.GRANTED, ends - VALIDITY, datetime.now(UTC), notice_version="v1"
            ),
        )
    return ends


def wait_past(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()) + 0.3)


def expiry_events(ledger: Ledger) -> list[tuple[int, str, str | None]]:
    """Every recorded expiry: (person, purpose, run id)."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(consent_events.c.subject_id, consent_events.c.purpose, consent_events.c.run_id)
            .where(consent_events.c.source == EXPIRY_SOURCE)
            .order_by(consent_events.c.subject_id)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def stored_statuses(ledger: Ledger) -> list[str]:
    with ledger.engine.connect() as conn:
        return sorted(conn.execute(select(consent_states.c.status)).scalars())


def audit_count(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_entries)).scalar_one())


def expiries_audited(ledger: Ledger) -> list[dict[str, Any]]:
    """The audit chain's entries of recorded expiries; the chain verified whole first."""
    with ledger.engine.connect() as conn:
        assert audit.verify(conn).ok
        return [
            entry
            for entry in audit.entries(conn)
            if entry["action"] == "consent.recorded" and entry["what"]["status"] == "expired"
        ]


def synced(engine: SyncEngine, **options: Any) -> Any:
    report = engine.run(**options)
    assert report.status in ("succeeded", "dry_run"), report.error
    return report


def first_sync_before(engine: SyncEngine, ends: datetime) -> None:
    report = synced(engine, full=True)
    assert report.finished_at is not None and report.finished_at < ends, "the first run came too late"


def test_a_consent_expiring_between_runs_is_pushed_by_the_next_sync(
    harness: Any, tmp_path: Path, ledger_url: str, opened: Callable[..., SyncEngine]
) -> None:
    """The tester's case: granted, synced (opt-out unticked), then the validity ends. The next
    plain `sync` records the expiry (audited, under the run's id) and ticks the opt-out; the run
    after finds nothing due, records and pushes nothing."""
    email = "expiring@example.net"
    record_id = harness.create_person(email)
    config = expiring_config(harness, tmp_path, ledger_url)
    engine = opened(config)
    ledger = engine.ledger
    ends = expiring_soon(ledger, [email])
    first_sync_before(engine, ends)
    assert not harness.read_opted_out(record_id)
    assert stored_statuses(ledger) == ["granted"]
    wait_past(ends)
    second = synced(opened(config))
    assert harness.read_opted_out(record_id), "the expired consent never reached the CRM"
    assert (second.counts.expired, second.counts.pushed) == (1, 1), second.counts
    (state,) = [s for s in ledger.subject_view(email)["purposes"] if s["purpose"] == "email_marketing"]
    assert (state["status"], state["suppressed"], state["rule"]) == ("expired", True, "validity_expired")
    assert stored_statuses(ledger) == ["expired"]
    ((_, purpose, run_id),) = expiry_events(ledger)
    assert (purpose, run_id) == ("email_marketing", second.run_id)
    (entry,) = expiries_audited(ledger)
    assert entry["run"] == second.run_id and entry["source"] == EXPIRY_SOURCE
    entries = audit_count(ledger)
    third = synced(opened(config))
    assert (third.counts.expired, third.counts.pushed, third.counts.pushes_enqueued) == (0, 0, 0), (
        third.counts
    )
    assert len(expiry_events(ledger)) == 1
    assert not any(e["action"] == "consent.recorded" for e in _entries_after(ledger, entries))


def _entries_after(ledger: Ledger, count: int) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        return list(audit.entries(conn, offset=count))


@SQLITE_ONLY  # the sweep's SQL runs on PostgreSQL in the other tests here (CI time)
def test_a_dry_run_writes_nothing_and_plans_the_expiry_and_its_push(
    harness: Any, tmp_path: Path, ledger_url: str, opened: Callable[..., SyncEngine]
) -> None:
    """`sync --dry-run` once a validity ended: the plan lists the expiry among the ledger changes
    and the opt-out among the pushes, and the ledger, its audit chain and the CRM are as they
    were. The real run then does what the plan said."""
    email = "planned@example.net"
    record_id = harness.create_person(email)
    config = expiring_config(harness, tmp_path, ledger_url)
    engine = opened(config)
    ledger = engine.ledger
    ends = expiring_soon(ledger, [email])
    first_sync_before(engine, ends)
    wait_past(ends)
    entries = audit_count(ledger)
    plan = synced(opened(config), dry_run=True)
    assert plan.counts.expired == 1
    uid = ledger.subject_view(email)["subject"]
    assert [(c.subject, c.purpose, c.before, c.after, c.rule) for c in plan.plan_changes] == [
        (uid, "email_marketing", "granted", "expired (suppressed)", "validity_expired")
    ]
    assert [(p.record_id, p.fields) for p in plan.plan_pushes] == [(record_id, {"HasOptedOutOfEmail": True})]
    # Nothing written: no event, no audit entry, no outbox row, the stored state as it was.
    assert expiry_events(ledger) == [] and audit_count(ledger) == entries
    assert stored_statuses(ledger) == ["granted"]
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar_one() == 0
    assert not harness.read_opted_out(record_id)
    real = synced(opened(config))
    assert (real.counts.expired, real.counts.pushed) == (1, 1)
    assert harness.read_opted_out(record_id)


def test_two_connectors_syncing_at_once_expire_a_consent_once_and_both_crms_are_told(
    harness: Any, tmp_path: Path, ledger_url: str, opened: Callable[..., SyncEngine]
) -> None:
    """Two CRMs (two Salesforce orgs) hold the same people; their runs start together once the
    validities ended. Each consent is expired once (one event, one audit entry), by whichever
    run came first, and both orgs get every opt-out."""
    emails = [f"both.{n}@example.net" for n in range(6)]
    with running_harness("salesforce") as other:
        ids = {
            "contract": [harness.create_person(e) for e in emails],
            "other": [other.create_person(e) for e in emails],
        }
        config = expiring_config(harness, tmp_path, ledger_url)
        data = yaml.safe_load(config.read_text())
        second = {**data["connectors"][0], "name": "other", "settings": other.connector_settings()}
        data["connectors"].append(second)
        config.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        engines = {name: opened(config, name) for name in ids}
        ledger = engines["contract"].ledger
        ends = expiring_soon(ledger, emails)
        for engine in engines.values():
            first_sync_before(engine, ends)
        wait_past(ends)
        runs = {name: opened(config, name) for name in ids}
        start = threading.Barrier(len(runs))
        reports: dict[str, Any] = {}

        def run(name: str) -> None:
            start.wait()
            reports[name] = runs[name].run()

        threads = [threading.Thread(target=run, args=(name,)) for name in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert {name: r.status for name, r in reports.items()} == dict.fromkeys(ids, "succeeded")
        assert sum(r.counts.expired for r in reports.values()) == len(emails)
        events = expiry_events(ledger)
        assert len(events) == len({(s, p) for s, p, _ in events}) == len(emails), events
        assert len(expiries_audited(ledger)) == len(emails)
        assert stored_statuses(ledger) == ["expired"] * len(emails)
        for name, crm in (("contract", harness), ("other", other)):
            assert [crm.read_opted_out(i) for i in ids[name]] == [True] * len(emails), name


def test_a_sync_killed_while_expiring_ends_as_an_uninterrupted_one(
    harness: Any, tmp_path: Path, ledger_url: str, opened: Callable[..., SyncEngine]
) -> None:
    """A real `consentsync sync` process SIGKILLed with one batch of expiries committed and the
    next recorded but not committed: the first batch stays, the second is gone whole; the next
    run expires the rest, each consent once, and ticks every opt-out, as one uninterrupted run
    does."""
    emails = [f"killed.{n}@example.net" for n in range(5)]
    ids = [harness.create_person(e) for e in emails]
    # Two expiries a transaction: five people take three.
    config = expiring_config(harness, tmp_path, ledger_url, batch_size=2)
    engine = opened(config)
    ledger = engine.ledger
    ends = expiring_soon(ledger, emails)
    first_sync_before(engine, ends)
    wait_past(ends)
    env = {key: value for key, value in os.environ.items() if key != "CONSENTSYNC_CONFIG"}
    killed = subprocess.run(
        sync_command(config, "contract"),
        env={**env, "CONSENTSYNC_FAILPOINTS": "sync.expire.recorded=kill@2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-600:]
    assert len(expiry_events(ledger)) == 2, "not the first batch alone"
    assert sorted(stored_statuses(ledger)) == ["expired"] * 2 + ["granted"] * 3
    assert not any(harness.read_opted_out(i) for i in ids), "pushed before the expiries were all recorded"
    resumed = subprocess.run(
        sync_command(config, "contract"), env=env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr[-600:]
    # The run says what it expired (the other 3), as it says what it recorded.
    assert "consents expired (validity ended) 3" in resumed.stdout, resumed.stdout
    events = expiry_events(ledger)
    assert len(events) == len({(s, p) for s, p, _ in events}) == len(emails), events
    assert len(expiries_audited(ledger)) == len(emails)
    assert stored_statuses(ledger) == ["expired"] * len(emails)
    assert [harness.read_opted_out(i) for i in ids] == [True] * len(emails)
    with ledger.engine.connect() as conn:
        times = conn.execute(
            select(consent_events.c.event_time).where(consent_events.c.source == EXPIRY_SOURCE)
        ).scalars()
        assert {as_utc(t) for t in times} == {ends}, "an expiry dated otherwise than its validity's end"
    again = synced(opened(config))
    assert (again.counts.expired, again.counts.pushed) == (0, 0)


def test_the_daemon_records_the_expiries_due_between_runs(
    harness: Any, tmp_path: Path, ledger_url: str, opened: Callable[..., SyncEngine]
) -> None:
    """The daemon keeps the ledger itself current: started with no run due, its expiry job
    records the expiry at once (no sync run, no operator), and the connector's next run pushes
    it without recording it again."""
    from consentsync.app import open_ledger
    from consentsync.config import load_config
    from consentsync.sync.daemon import Daemon

    email = "daemon@example.net"
    record_id = harness.create_person(email)
    config = expiring_config(harness, tmp_path, ledger_url)
    ledger = opened(config).ledger
    past = datetime.now(UTC) - VALIDITY - timedelta(minutes=1)
    ledger.record(
        Identity(email=email),
        Evidence.from_web_form(ConsentStatus.GRANTED, past, datetime.now(UTC), notice_version="v1"),
    )
    loaded = load_config(config)
    daemon_ledger = open_ledger(loaded)
    daemon = Daemon(loaded, daemon_ledger)
    daemon.start(run_now=False)
    try:
        assert "~ledger-expiry" in daemon.next_runs()
        deadline = time.monotonic() + 30
        while not expiry_events(ledger) and time.monotonic() < deadline:
            time.sleep(0.1)
        (event,) = expiry_events(ledger)
        assert event[2] is None  # recorded by the daemon's schedule, not by a run
        assert stored_statuses(ledger) == ["expired"]
        with ledger.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(sync_runs)).scalar_one() == 0
        report = daemon.run_connector("contract")
        assert report is not None and report.status == "succeeded", report
        assert (report.counts.expired, report.counts.pushed) == (0, 1)
        assert harness.read_opted_out(record_id)
        assert len(expiry_events(ledger)) == 1
    finally:
        daemon.stop()
        daemon_ledger.engine.dispose()
