"""Salesforce: a transaction left open (Get Updated's latestDateCovered held back at its start)
and reads that need more calls than a run's budget. The position kept to hold the transaction
was its start, so every run read again from there: under a small budget the runs never got past
the same first pages, stopped on their budget before any push, for as long as the transaction
stayed open. The read's progress and the hold are kept apart in the cursor (its token): runs
go on from where the last one got to and, once the transaction commits, read once more from its
start. And a start Get Updated reports behind a position already passed (a read before it was
not held) is held all the same, the position kept."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from consentsync_salesforce import SalesforceConnector
from consentsync_salesforce.sandbox import ApiError, SalesforceSandbox, format_datetime
from sqlalchemy import func, select

from consentsync.domain import as_utc
from consentsync.ledger.schema import crm_links, outbox, sync_cursors
from consentsync.ledger.service import Ledger
from consentsync.sdk import Cursor
from consentsync.sync.engine import RunReport, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import seeded_org, shipped_engine

CONTACTS = 1000  # five query pages of 200


@pytest.fixture
def salesforce() -> Iterator[SalesforceSandbox]:
    yield from seeded_org(30, seed=7)


def _run(
    ledger: Ledger,
    config_path: Path,
    salesforce: SalesforceSandbox,
    lookback: int | None = None,
    **settings: Any,
) -> RunReport:
    options = SyncOptions(batch_size=100, signpost_lag_seconds=0, lookback_seconds=lookback)
    settings = {"query_batch_size": 200, **settings}
    engine = shipped_engine(
        ledger, config_path, salesforce, "sf", "salesforce", ["contact.yaml"], settings, options
    )
    return engine.run()


def _linked(ledger: Ledger) -> set[str]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(crm_links.c.record_id).where(crm_links.c.object_type == "Contact"))
        return {row.record_id for row in rows}


def _pending(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(outbox).where(outbox.c.status == "pending")
            ).scalar_one()
        )


def _cursor(ledger: Ledger) -> Cursor:
    with ledger.engine.connect() as conn:
        stored = conn.execute(
            select(sync_cursors.c.cursor).where(sync_cursors.c.object_type == "Contact")
        ).scalar_one()
    return Cursor.from_json(orjson.loads(stored))


def _hold(cursor: Cursor) -> datetime | None:
    if cursor.token is None:
        return None
    return as_utc(datetime.fromisoformat(orjson.loads(cursor.token)["hold"]))


def _withdrawn(ledger: Ledger, email: str) -> bool:
    view = ledger.subject_view(email)
    wanted = ("email_marketing", "email")
    return any(
        (s["purpose"], s["channel"]) == wanted and s["status"] == "withdrawn" for s in view["purposes"]
    )


@SQLITE_ONLY  # the connector's rules; the ledger's SQL runs on PostgreSQL elsewhere
def test_runs_under_a_small_budget_go_on_past_an_open_transaction_and_read_it_once_it_commits(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    org = salesforce.org
    real = org.clock
    began = org.now() - timedelta(hours=3)
    org.clock = lambda: began
    late = org.begin_create("Contact", LastName="Late", Email="late@example.test", HasOptedOutOfEmail=True)
    made = []
    for number in range(CONTACTS):
        org.clock = lambda number=number: began + timedelta(minutes=1, seconds=5 * number)
        made.append(org.create("Contact", LastName=f"P{number}", Email=f"p{number}@example.test"))
    org.clock = real

    # A run's budget: a login, a Get Updated, a query and two more pages (and, the first run, a
    # describe) — less than a read of every change since the transaction began.
    budget = {"budget": {"per_run": 5}}
    statuses, seen = [], []
    for _ in range(12):
        report = _run(ledger, config_path, salesforce, **budget)
        statuses.append(report.status)
        seen.append(len(_linked(ledger) & set(made)))
        if report.status == "succeeded" and _pending(ledger) == 0:
            break
    assert statuses[0] != "succeeded", "the budget cuts the first read (else the test shows nothing)"
    assert seen[-1] == CONTACTS, (statuses, seen)
    assert statuses[-1] == "succeeded" and _pending(ledger) == 0, (statuses, seen)
    # Each cut run went on from where the last one got to.
    cut = [count for count, status in zip(seen, statuses, strict=True) if status != "succeeded"]
    assert cut == sorted(set(cut)), seen
    assert late not in _linked(ledger) and _hold(_cursor(ledger)) == began

    org.commit(late)  # three hours after its stamp
    for _ in range(12):
        report = _run(ledger, config_path, salesforce, **budget)
        if report.status == "succeeded" and late in _linked(ledger):
            break
    assert late in _linked(ledger) and _withdrawn(ledger, "late@example.test")
    assert _hold(_cursor(ledger)) is None


@SQLITE_ONLY
def test_a_start_reported_behind_the_position_is_held_though_nothing_is_read_after_it(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first read whose Get Updated was refused (a window over its id limit) went to its bound
    unheld, past a transaction open since 40 minutes. A later read that reads nothing (nothing
    changed after the position) is told that start: GetUpdatedResult bounds latestDateCovered by
    the window's end only ("the start time of that long-running transaction until it
    completes"). The position is kept, the start held with it: when the transaction commits its
    change is read, though it lies further behind the position than the look-back window."""
    org = salesforce.org
    answer = salesforce._h_updated
    mode = {"updated": "refused"}

    def updated(request: Any, version: str, sobject: str) -> Any:
        if mode["updated"] == "refused":
            raise ApiError(400, "EXCEEDED_ID_LIMIT", "too many ids: use a smaller window")
        said = answer(request, version, sobject)
        # The earliest transaction still open, wherever it began.
        opened = org.open_since(sobject, datetime(2000, 1, 1, tzinfo=began.tzinfo), org.now())
        body = orjson.loads(said.body)
        if opened is not None and format_datetime(opened) < body["latestDateCovered"]:
            body["latestDateCovered"] = format_datetime(opened)
            said = dataclasses.replace(said, body=orjson.dumps(body))
        return said

    monkeypatch.setattr(salesforce, "_h_updated", updated)
    real = org.clock
    began = org.now() - timedelta(minutes=40)
    org.clock = lambda: began
    late = org.begin_create("Contact", LastName="Late", Email="late@example.test", HasOptedOutOfEmail=True)
    org.clock = real
    for _ in range(2):  # the second reads what the first one pushed
        assert _run(ledger, config_path, salesforce).status == "succeeded"
    passed = _cursor(ledger)
    assert passed.modstamp is not None and passed.modstamp > began + timedelta(minutes=30)

    mode["updated"] = "answered"
    report = _run(ledger, config_path, salesforce, lookback=0)  # reads nothing after the position
    assert report.status == "succeeded" and report.counts.read == 0, report.counts
    kept = _cursor(ledger)
    assert (kept.modstamp, kept.record_id) == (passed.modstamp, passed.record_id), "the position is kept"
    assert _hold(kept) == began

    org.commit(late)
    assert _run(ledger, config_path, salesforce).status == "succeeded"
    assert late in _linked(ledger), "a change committed 40 minutes after its stamp was lost"
    assert _withdrawn(ledger, "late@example.test")


@SQLITE_ONLY
def test_a_hold_outlives_a_run_whose_get_updated_was_refused(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that cannot ask whether the held transaction committed (its window refused) keeps
    the hold, and its position never moves back; the next run that can ask reads the late change
    once it commits."""
    org = salesforce.org
    answer = salesforce._h_updated
    refused = {"now": False}

    def updated(request: Any, version: str, sobject: str) -> Any:
        if refused["now"]:
            raise ApiError(400, "EXCEEDED_ID_LIMIT", "too many ids: use a smaller window")
        return answer(request, version, sobject)

    monkeypatch.setattr(salesforce, "_h_updated", updated)
    real = org.clock
    began = org.now() - timedelta(minutes=40)
    org.clock = lambda: began
    late = org.begin_create("Contact", LastName="Late", Email="late@example.test", HasOptedOutOfEmail=True)
    org.clock = real
    assert _run(ledger, config_path, salesforce).status == "succeeded"
    held = _cursor(ledger)
    assert _hold(held) == began and held.modstamp is not None

    refused["now"] = True
    assert _run(ledger, config_path, salesforce).status == "succeeded"
    kept = _cursor(ledger)
    assert _hold(kept) == began and kept.modstamp is not None and kept.modstamp >= held.modstamp

    refused["now"] = False
    org.commit(late)
    assert _run(ledger, config_path, salesforce).status == "succeeded"
    assert late in _linked(ledger) and _withdrawn(ledger, "late@example.test")
    assert _hold(_cursor(ledger)) is None


def test_a_cursor_token_that_is_no_hold_resumes_as_a_plain_position(salesforce: SalesforceSandbox) -> None:
    connector = SalesforceConnector("sf", salesforce.connection_settings())
    stamp = salesforce.org.now()
    with structlog.testing.capture_logs() as logged:
        start = connector.resume_from(Cursor(stamp, "003000000000001AAA", "not json"))
    assert start == Cursor(stamp - timedelta(minutes=10))
    assert [e["event"] for e in logged] == ["salesforce.cursor_token_unreadable"]


@SQLITE_ONLY
def test_a_reread_after_a_commit_cut_by_the_budget_is_not_skipped_when_the_next_hold_commits(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    """T1 open since 3 h, T2 open since 30 min. T1 commits: the run re-reads from 10 min before
    T1's start, holding T2, and its budget cuts that re-read before T1's record. T2 commits
    before the next run: that run started 10 min before T2's start, past T1's record (lost)."""
    org = salesforce.org
    real = org.clock
    began1 = (org.now() - timedelta(hours=3)).replace(microsecond=0)
    org.clock = lambda: began1
    late1 = org.begin_create("Contact", LastName="Late1", Email="late1@example.test", HasOptedOutOfEmail=True)
    # 1,000 contacts in the 9 minutes before T1 began (read before it, in the look-back window
    # the re-read starts from).
    made = []
    for number in range(1000):
        org.clock = lambda number=number: began1 - timedelta(seconds=540) + timedelta(seconds=number // 2)
        made.append(org.create("Contact", LastName=f"P{number}", Email=f"p{number}@example.test"))
    began2 = (real() - timedelta(minutes=30)).replace(microsecond=0)
    org.clock = lambda: began2
    late2 = org.begin_create("Contact", LastName="Late2", Email="late2@example.test", HasOptedOutOfEmail=True)
    org.clock = real

    for _ in range(2):
        assert _run(ledger, config_path, salesforce).status == "succeeded"
    assert _hold(_cursor(ledger)) == began1
    assert set(made) <= _linked(ledger)

    org.commit(late1)
    report = _run(ledger, config_path, salesforce, budget={"per_run": 5})
    assert report.status != "succeeded", "the budget cuts the re-read (else the test shows nothing)"
    cut = _cursor(ledger)
    assert _hold(cut) == began2 and cut.modstamp is not None and cut.modstamp < began1, cut
    assert late1 not in _linked(ledger)

    org.commit(late2)
    for _ in range(12):
        report = _run(ledger, config_path, salesforce, budget={"per_run": 5})
        if report.status == "succeeded" and _pending(ledger) == 0:
            break
    assert late2 in _linked(ledger)
    assert late1 in _linked(ledger), "T1's late opt-out was skipped"
    assert _withdrawn(ledger, "late1@example.test")


@SQLITE_ONLY
def test_a_hold_whose_window_grows_past_get_updateds_id_limit_still_reads_the_late_change(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Get Updated refuses a window of more than 600,000 ids (EXCEEDED_ID_LIMIT; 50 here). The
    hold was asked about over a window from before it to the run's bound, which only grows: once
    refused, it was refused every run, the hold never released, and the transaction's change,
    stamped hours behind the position, never read. It is asked about over a window around it."""
    from consentsync_salesforce.sandbox import server

    monkeypatch.setattr(server, "MAX_REPLICATION_IDS", 50)
    org = salesforce.org
    real = org.clock
    began = (org.now() - timedelta(hours=3)).replace(microsecond=0)
    org.clock = lambda: began
    late = org.begin_create("Contact", LastName="Late", Email="late@example.test", HasOptedOutOfEmail=True)
    org.clock = real
    for _ in range(2):
        assert _run(ledger, config_path, salesforce).status == "succeeded"
    assert _hold(_cursor(ledger)) == began
    busy = (real() - timedelta(minutes=30)).replace(microsecond=0)
    for number in range(60):  # a busy half hour (stamped late: a bulk load committing now)
        org.clock = lambda number=number: busy + timedelta(seconds=number)
        org.create("Contact", LastName=f"B{number}", Email=f"b{number}@example.test")
    org.clock = real
    org.commit(late)
    for _ in range(4):
        assert _run(ledger, config_path, salesforce).status == "succeeded"
    assert late in _linked(ledger), "the committed transaction's opt-out was never read"
    assert _withdrawn(ledger, "late@example.test")


@SQLITE_ONLY
def test_a_reread_after_a_commit_cut_by_the_budget_goes_on_from_its_position(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    """Once the hold commits, the read once more from 10 minutes before it is cut by the budget
    with nothing else open: the cursor was a plain position whose next read started 10 minutes
    behind it, where more contacts are stamped than a run can read; every run read the same
    pages again and stopped, never reaching the late opt-out."""
    org = salesforce.org
    real = org.clock
    began = (org.now() - timedelta(hours=3)).replace(microsecond=0)
    org.clock = lambda: began
    late = org.begin_create("Contact", LastName="Late", Email="late@example.test", HasOptedOutOfEmail=True)
    made = []
    for number in range(300):  # in the 5 minutes before the re-read's start
        org.clock = lambda number=number: began - timedelta(seconds=900) + timedelta(seconds=number)
        made.append(org.create("Contact", LastName=f"E{number}", Email=f"e{number}@example.test"))
    for number in range(1000):  # in the 9 minutes before the transaction began
        org.clock = lambda number=number: began - timedelta(seconds=540) + timedelta(seconds=number // 2)
        made.append(org.create("Contact", LastName=f"P{number}", Email=f"p{number}@example.test"))
    org.clock = real
    for _ in range(2):
        assert _run(ledger, config_path, salesforce).status == "succeeded"
    assert _hold(_cursor(ledger)) == began and set(made) <= _linked(ledger)

    org.commit(late)
    statuses = []
    for _ in range(6):
        report = _run(ledger, config_path, salesforce, budget={"per_run": 5})
        statuses.append(report.status)
        if report.status == "succeeded" and _pending(ledger) == 0:
            break
    assert statuses[0] != "succeeded", "the budget cuts the re-read (else the test shows nothing)"
    assert late in _linked(ledger), statuses
    assert _withdrawn(ledger, "late@example.test")
    assert statuses[-1] == "succeeded" and _hold(_cursor(ledger)) is None, statuses


@SQLITE_ONLY
def test_a_hold_that_cannot_be_asked_about_is_kept_and_warned_of(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Get Updated refuses even the window around the hold: the hold stays (its transaction's
    change is read once it can be asked again) and each such run warns, naming no record."""
    org = salesforce.org
    answer = salesforce._h_updated
    refused = {"now": False}

    def updated(request: Any, version: str, sobject: str) -> Any:
        if refused["now"]:
            raise ApiError(400, "EXCEEDED_ID_LIMIT", "too many ids: use a smaller window")
        return answer(request, version, sobject)

    monkeypatch.setattr(salesforce, "_h_updated", updated)
    real = org.clock
    began = (org.now() - timedelta(hours=2)).replace(microsecond=0)
    org.clock = lambda: began
    late = org.begin_create("Contact", LastName="Late", Email="late@example.test", HasOptedOutOfEmail=True)
    org.clock = real
    assert _run(ledger, config_path, salesforce).status == "succeeded"
    assert _hold(_cursor(ledger)) == began

    refused["now"] = True
    org.commit(late)
    for _ in range(2):
        with structlog.testing.capture_logs() as logged:
            assert _run(ledger, config_path, salesforce).status == "succeeded"
        warned = [e for e in logged if e["event"] == "salesforce.hold_unchecked"]
        assert len(warned) == 1 and warned[0]["object"] == "Contact", logged
        assert set(warned[0]) <= {"event", "log_level", "connector", "object", "held_from"}
        assert _hold(_cursor(ledger)) == began

    refused["now"] = False
    assert _run(ledger, config_path, salesforce).status == "succeeded"
    assert late in _linked(ledger) and _withdrawn(ledger, "late@example.test")
    assert _hold(_cursor(ledger)) is None
