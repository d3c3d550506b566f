"""Salesforce: a change whose transaction commits long after its stamp. Salesforce stamps
SystemModstamp when the transaction writes and shows the change when it commits; a platform
process may hold it open for longer than the connector's 10-minute look-back. Each read asks
sObject Get Updated once per object and reads on to its bound; latestDateCovered, the start of a
transaction still open, is kept in the cursor's token apart from the read's position (the hold):
the read goes on from its position while the transaction stays open, and once it commits reads
once more from the hold, so that a change not visible yet is never passed for good and nothing
visible waits for it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import structlog
from consentsync_salesforce import SalesforceConnector
from consentsync_salesforce import connector as sf_connector
from consentsync_salesforce.sandbox import ApiError, SalesforceSandbox, format_datetime
from sqlalchemy import select

from consentsync.domain import as_utc
from consentsync.ledger.schema import crm_links, sync_cursors
from consentsync.ledger.service import Ledger
from consentsync.sdk import Cursor
from consentsync.sync.engine import RunReport, SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import seeded_org, shipped_engine
from tests.sandbox.test_salesforce_sandbox import Api, error

ALL_OBJECTS = ["contact.yaml", "lead.yaml", "individual.yaml", "contact_point_type_consent.yaml"]


@pytest.fixture
def salesforce() -> Iterator[SalesforceSandbox]:
    yield from seeded_org(30, seed=7)


def _engine(
    ledger: Ledger,
    config_path: Path,
    salesforce: SalesforceSandbox,
    mappings: list[str],
    lookback_seconds: int | None = None,
) -> SyncEngine:
    options = SyncOptions(batch_size=25, signpost_lag_seconds=0, lookback_seconds=lookback_seconds)
    return shipped_engine(
        ledger, config_path, salesforce, "sf", "salesforce", mappings, {"query_batch_size": 200}, options
    )


def _run(
    ledger: Ledger,
    config_path: Path,
    salesforce: SalesforceSandbox,
    mappings: list[str],
    lookback_seconds: int | None = None,
) -> RunReport:
    report = _engine(ledger, config_path, salesforce, mappings, lookback_seconds).run()
    assert report.status == "succeeded", report.error
    return report


def _linked(ledger: Ledger) -> set[str]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(crm_links.c.record_id).where(crm_links.c.object_type == "Contact"))
        return {row.record_id for row in rows}


def _contact_cursor(ledger: Ledger) -> Cursor:
    with ledger.engine.connect() as conn:
        stored = conn.execute(
            select(sync_cursors.c.cursor).where(sync_cursors.c.object_type == "Contact")
        ).scalar_one()
    return Cursor.from_json(orjson.loads(stored))


def _contact_read_until(ledger: Ledger) -> datetime:
    until = _contact_cursor(ledger).read_until
    assert until is not None
    return as_utc(until)


def _hold(cursor: Cursor) -> datetime | None:
    """The open transaction's start the cursor keeps (its token), None for none."""
    if cursor.token is None:
        return None
    return as_utc(datetime.fromisoformat(orjson.loads(cursor.token)["hold"]))


def _email_marketing(ledger: Ledger, email: str) -> str | None:
    wanted = ("email_marketing", "email")
    view = ledger.subject_view(email)
    return next((s["status"] for s in view["purposes"] if (s["purpose"], s["channel"]) == wanted), None)


def test_a_change_committed_fifteen_minutes_after_its_stamp_is_read_by_the_next_run(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    org = salesforce.org
    real = org.clock
    began = org.now() - timedelta(minutes=15)
    org.clock = lambda: began - timedelta(minutes=1)
    before = org.create("Contact", LastName="Before", Email="before@example.test")
    org.clock = lambda: began
    late = org.begin_create("Contact", LastName="Late", Email="late@example.test", HasOptedOutOfEmail=True)
    # Committed in the same second, with a later id: the cursor stops on it, past the late one's.
    twin = org.create("Contact", LastName="Twin", Email="twin@example.test")
    assert late < twin
    org.clock = lambda: began + timedelta(minutes=1)
    after = org.create("Contact", LastName="After", Email="after@example.test")
    org.clock = real

    _run(ledger, config_path, salesforce, ["contact.yaml"])
    linked = _linked(ledger)
    assert {before, twin, after} <= linked and late not in linked, "what is visible is read"
    # The position goes on to the last record read; the start of the open transaction is held
    # apart, all of its second: the twin shares it with the late change, under a later id.
    first = _contact_cursor(ledger)
    assert _hold(first) == began and first.modstamp is not None and first.modstamp > began
    # Still open a quarter of an hour after it began: the next run goes on from the position
    # (to what the first run's pushes wrote), and keeps the hold.
    again = _run(ledger, config_path, salesforce, ["contact.yaml"])
    kept = _contact_cursor(ledger)
    assert late not in _linked(ledger) and _hold(kept) == began
    assert kept.modstamp is not None and kept.modstamp >= first.modstamp
    assert again.counts.evidence_recorded == 0
    org.commit(late)  # 15 minutes after its stamp: more than the 10-minute look-back
    _run(ledger, config_path, salesforce, ["contact.yaml"])
    assert {late, after} <= _linked(ledger), "a change committed after the look-back window was lost"
    done = _contact_cursor(ledger)
    assert _hold(done) is None and done.modstamp is not None and done.modstamp > began, "nothing held"
    # A plain position: the next read starts the whole look-back window behind it, as a read
    # without Get Updated would.
    _run(ledger, config_path, salesforce, ["contact.yaml"])
    assert _contact_read_until(ledger) > began + timedelta(minutes=14)


@SQLITE_ONLY  # the connector's rules; the ledger's SQL runs on PostgreSQL elsewhere
def test_an_opt_out_made_while_a_transaction_stays_open_for_hours_is_synced_by_the_next_run(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    """A transaction left open three hours (a stuck job) held every later change of its object
    out of the ledger, for as long as it stayed open, each run succeeding with an info line: an
    opt-out made two hours after it began never reached the ledger. The read goes to its bound;
    the cursor holds the transaction's start apart from its position, with a warning each run."""
    org = salesforce.org
    real = org.clock
    began = org.now() - timedelta(hours=3)
    org.clock = lambda: began
    batch = org.begin_create("Contact", LastName="Batch", Email="batch@example.test", HasOptedOutOfEmail=True)
    org.clock = lambda: began + timedelta(hours=2)
    optout = org.create("Contact", LastName="Out", Email="out@example.test", HasOptedOutOfEmail=True)
    org.clock = real

    with structlog.testing.capture_logs() as logged:
        _run(ledger, config_path, salesforce, ["contact.yaml"])
        assert optout in _linked(ledger) and batch not in _linked(ledger)
        assert _email_marketing(ledger, "out@example.test") == "withdrawn", "the opt-out is in the ledger"
        held = _contact_cursor(ledger)
        assert _hold(held) == began and held.modstamp is not None and held.modstamp > began
        # The engine's next read goes on from the position, the hold kept in its token.
        connector = SalesforceConnector("sf", salesforce.connection_settings())
        assert connector.resume_from(held) == held
        # A cursor stored by an earlier version (its position at the hold) resumes as a plain one.
        earlier = Cursor(began, None, None, began)
        assert connector.resume_from(earlier) == Cursor(began - timedelta(minutes=10))
        again = _run(ledger, config_path, salesforce, ["contact.yaml"])
    kept = _contact_cursor(ledger)
    assert _hold(kept) == began and kept.modstamp is not None and kept.modstamp >= held.modstamp
    assert again.counts.evidence_recorded == 0
    warned = [e for e in logged if e["event"] == "salesforce.open_transaction_holds_reads"]
    assert [(w["log_level"], w["object"]) for w in warned] == [("warning", "Contact")] * 2, "once a run"
    assert warned[0]["covered_until"] == began.isoformat() and warned[0]["open_minutes"] >= 180
    assert not any("example.test" in repr(event) for event in warned), "ids and times only"

    org.commit(batch)
    with structlog.testing.capture_logs() as logged:
        _run(ledger, config_path, salesforce, ["contact.yaml"])
    assert batch in _linked(ledger), "the transaction's record is read once it commits"
    assert _email_marketing(ledger, "batch@example.test") == "withdrawn"
    assert _hold(_contact_cursor(ledger)) is None
    assert not [e for e in logged if e["event"] == "salesforce.open_transaction_holds_reads"]
    _run(ledger, config_path, salesforce, ["contact.yaml"])
    assert _contact_read_until(ledger) > began + timedelta(hours=2, minutes=59)


@SQLITE_ONLY  # the connector's rules; the ledger's SQL runs on PostgreSQL elsewhere
def test_get_updated_is_asked_once_per_object_per_run_and_counted(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    for run in range(2):
        asked = salesforce.calls["updated"]
        engine = _engine(ledger, config_path, salesforce, ALL_OBJECTS)
        report = engine.run()
        assert report.status == "succeeded", report.error
        assert salesforce.calls["updated"] - asked == len(ALL_OBJECTS), f"run {run}"
        usage = engine.connector.usage
        assert usage.per_endpoint["updated"] == len(ALL_OBJECTS)
        assert report.counts.api_calls == usage.calls


@SQLITE_ONLY  # the connector's rules; the ledger's SQL runs on PostgreSQL elsewhere
def test_an_object_get_updated_does_not_serve_is_read_as_before_with_one_warning(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = salesforce._h_updated

    def refused(request: Any, version: str, sobject: str) -> Any:
        if sobject.lower() == "individual":
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return answer(request, version, sobject)

    monkeypatch.setattr(salesforce, "_h_updated", refused)
    # Warned once a process: an earlier test of this process may have been warned already.
    monkeypatch.setattr(sf_connector, "_REPLICATION_WARNED", set())
    with structlog.testing.capture_logs() as logged:
        for _ in range(2):
            report = _run(ledger, config_path, salesforce, ALL_OBJECTS)
            assert report.counts.read > 0
    warnings = [entry for entry in logged if entry["event"] == "salesforce.updated_unavailable"]
    assert [(w["object"], w["reason"]) for w in warnings] == [("Individual", "NOT_FOUND")]
    with ledger.engine.connect() as conn:
        kinds = {row.object_type for row in conn.execute(select(crm_links.c.object_type).distinct())}
    assert "Individual" in kinds, "the object is still read, up to the run's bound"


def test_get_updated_answers_the_start_of_an_open_transaction_and_refuses_bad_windows(
    salesforce: SalesforceSandbox,
) -> None:
    org = salesforce.org
    api = Api(salesforce)
    now = org.now() + timedelta(hours=1)
    org.clock = lambda: now  # the org's clock stands still, ahead: its last whole minute is known
    minute = format_datetime(now.replace(second=0))

    def ask(start: datetime | None, end: datetime | None) -> requests.Response:
        params = {name: when.isoformat() for name, when in (("start", start), ("end", end)) if when}
        return api.get("sobjects/Contact/updated/", params=params)

    window = (now - timedelta(hours=1), now + timedelta(minutes=5))
    assert ask(*window).json()["latestDateCovered"] == minute
    began = now - timedelta(minutes=20, seconds=7)
    org.clock = lambda: began
    late = org.begin_create("Contact", LastName="Late", Email="late@example.test")
    org.clock = lambda: now
    answered = ask(*window).json()
    assert answered["latestDateCovered"] == format_datetime(began) and late not in answered["ids"]
    # A window that starts after the open transaction began does not cover it.
    assert ask(began + timedelta(minutes=2), window[1]).json()["latestDateCovered"] == minute
    org.commit(late)
    answered = ask(*window).json()
    assert answered["latestDateCovered"] == minute and late in answered["ids"]
    for start, end, code in [
        (None, now, "MISSING_ARGUMENT"),
        (now - timedelta(hours=1), None, "MISSING_ARGUMENT"),
        (now - timedelta(days=31), now, "INVALID_REPLICATION_DATE"),
        (now - timedelta(days=29), now + timedelta(days=2), "INVALID_REPLICATION_DATE"),
        (now, now - timedelta(hours=1), "INVALID_REPLICATION_DATE"),
    ]:
        refused = ask(start, end)
        assert refused.status_code == 400, (start, end)
        assert error(refused)["errorCode"] == code
