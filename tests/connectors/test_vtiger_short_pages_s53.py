"""Vtiger's ``query`` applies the LIMIT first and then drops the rows the integration user may
not retrieve (``VtigerModuleOperation::query``: ``hasPermission(EntityMeta::$RETRIEVE, crmid)``
fails, ``continue``), so a page comes back short although more rows follow. A read must not end
on a short page: against the sandbox with ``hidden_owners`` (records owned by the admin, whom no
sharing rule opens to the integration role), one read, and one sync run, get every visible
record, in full and incremental reads alike."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_vtiger import VtigerConnector
from consentsync_vtiger.sandbox.server import VtigerSandbox
from sqlalchemy import select

from consentsync.ledger.schema import consent_events, crm_links
from consentsync.ledger.service import Ledger
from consentsync.sdk import ConnectorError, Cursor
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.connectors.against_sandbox import connector_settings, read_until
from tests.integration.helpers import shipped_engine

FIELDS = ["email", "emailoptout", "donotcall"]
HIDDEN = "19x1"  # the admin: its records are private, the integration user may not retrieve them
VISIBLE = "19x5"  # the integration user itself


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    with VtigerSandbox(hidden_owners=(HIDDEN,)) as server:
        yield server


def connector_for(sandbox: VtigerSandbox, **extra: Any) -> VtigerConnector:
    return VtigerConnector(
        "vt-test", connector_settings(sandbox.connection_settings(), {"timeout": 5}, extra)
    )


def _hidden(index: int) -> bool:
    """About a third of the records, in runs of one to three, so every page loses some rows."""
    return index % 7 in (1, 3, 4)


def _people(
    sandbox: VtigerSandbox, count: int, start: dt.datetime, *, crowd: int = 0, tag: str = "p"
) -> set[str]:
    """``count`` contacts a second apart from ``start``, every ``_hidden`` one owned by the
    admin; the first ``crowd`` of them share ``start``'s second. Returns the visible ids."""
    visible = set()
    for index in range(count):
        at = start + dt.timedelta(seconds=max(0, index - crowd + 1) if index >= crowd else 0)
        owner = HIDDEN if _hidden(index) else VISIBLE
        record_id = sandbox.crm.create(
            "Contacts",
            lastname=f"Person {tag}{index}",
            email=f"{tag}{index}@example.test",
            emailoptout="0",
            owner=owner,
            at=at,
        )
        if owner == VISIBLE:
            visible.add(record_id)
    return visible


def test_the_sandbox_drops_hidden_rows_after_the_limit(sandbox: VtigerSandbox) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=2)
    visible = _people(sandbox, 30, start)
    connector = connector_for(sandbox)
    page = connector._page("Contacts", ["id", "modifiedtime"], None, "2999-01-01 00:00:00", 0, 10)
    # The first ten rows, less the hidden ones among them: not the first ten visible ones.
    assert [row["id"] for row in page] == [
        row["id"]
        for index, row in enumerate(
            sorted(sandbox.crm.records("Contacts"), key=lambda r: int(r["id"][3:]))[:10]
        )
        if not _hidden(index)
    ]
    assert len(page) < 10 and len(visible) == 30 - sum(_hidden(i) for i in range(30))
    hidden = next(r["id"] for r in sandbox.crm.records("Contacts") if sandbox.crm.owner_of(r["id"]) == HIDDEN)
    with pytest.raises(ConnectorError, match="Permission to read given object is denied"):
        connector._call("retrieve", {"id": hidden})


@pytest.mark.parametrize(
    ("page_size", "overlap", "crowd"),
    [(100, 10, 0), (100, 10, 230), (10, 2, 0), (10, 2, 25)],
    ids=["pages-of-100", "crowded-second-100", "pages-of-10", "crowded-second-10"],
)
def test_a_full_read_returns_every_visible_record_in_one_read(
    sandbox: VtigerSandbox, page_size: int, overlap: int, crowd: int
) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=3)
    visible = _people(sandbox, 420, start, crowd=crowd)
    connector = connector_for(sandbox, page_size=page_size, crowded_second_overlap=overlap)
    records = list(connector.read_changes("Contacts", FIELDS, Cursor(), read_until()))
    ids = [r.record_id for r in records]
    assert len(ids) == len(set(ids)), "a record was read twice"
    assert set(ids) == visible, f"{len(visible - set(ids))} visible records not read in this read"
    keys = [(r.modstamp, r.record_id) for r in records]
    assert keys == sorted(keys)
    # One query past the last page says the read is complete; no more than that.
    queries = connector.usage.per_endpoint["query"]
    assert queries <= -(-420 // (page_size - overlap)) + 420 * 2 // page_size


def test_an_incremental_read_after_changes_returns_every_visible_change(sandbox: VtigerSandbox) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    _people(sandbox, 300, now - dt.timedelta(hours=3))
    connector = connector_for(sandbox)
    first = list(connector.read_changes("Contacts", FIELDS, Cursor(), read_until()))
    last = first[-1]
    # Later, users withdraw consents on 260 contacts (a third of them private to the admin)
    # and add 40 more, a second apart.
    revised: set[str] = set()
    contacts = sorted(sandbox.crm.records("Contacts"), key=lambda r: int(r["id"][3:]))
    later = now - dt.timedelta(hours=1)
    for index, row in enumerate(contacts[:260]):
        sandbox.crm.revise(row["id"], emailoptout="1", at=later + dt.timedelta(seconds=index))
        if sandbox.crm.owner_of(row["id"]) == VISIBLE:
            revised.add(row["id"])
    changed = revised | _people(sandbox, 40, later + dt.timedelta(seconds=300), tag="new")
    records = list(
        connector_for(sandbox).read_changes(
            "Contacts", FIELDS, Cursor(last.modstamp, last.record_id), read_until()
        )
    )
    ids = [r.record_id for r in records]
    assert len(ids) == len(set(ids))
    assert set(ids) == changed, f"{len(changed - set(ids))} visible changes not read in this read"
    assert all(r.fields["emailoptout"] == "1" for r in records if r.record_id in revised)


# -- through the sync engine: one run reads it all ---------------------------------------------


def _engine(ledger: Ledger, config_path: Path, sandbox: VtigerSandbox) -> SyncEngine:
    options = SyncOptions(batch_size=40, signpost_lag_seconds=0)
    settings = {"max_attempts": 4, "page_size": 10, "crowded_second_overlap": 2}
    return shipped_engine(ledger, config_path, sandbox, "vt", "vtiger", ["contacts.yaml"], settings, options)


def _linked(ledger: Ledger) -> set[str]:
    with ledger.engine.connect() as conn:
        return set(conn.execute(select(crm_links.c.record_id)).scalars())


@SQLITE_ONLY  # the connector's rules; the ledger's SQL runs on PostgreSQL elsewhere
def test_one_sync_run_reads_every_visible_record_and_then_every_withdrawal(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    visible = _people(sandbox, 120, now - dt.timedelta(hours=3))
    full = _engine(ledger, config_path, sandbox).run(full=True)
    assert full.status == "succeeded", full.error
    assert _linked(ledger) == visible, "the full run left visible contacts unread"
    assert full.counts.read == len(visible)
    # Then 70 contacts opt out, a second apart (after the last change the full run read), a
    # third of them private to the admin.
    withdrawn = set()
    contacts = sorted(sandbox.crm.records("Contacts"), key=lambda r: int(r["id"][3:]))
    for index, row in enumerate(contacts[:70]):
        sandbox.crm.revise(row["id"], emailoptout="1", at=now - dt.timedelta(hours=2, seconds=-index))
        if row["id"] in visible:
            withdrawn.add(row["id"])
    report = _engine(ledger, config_path, sandbox).run()
    assert report.status == "succeeded", report.error
    with ledger.engine.connect() as conn:
        subjects = dict(
            conn.execute(
                select(crm_links.c.record_id, crm_links.c.subject_id).where(
                    crm_links.c.record_id.in_(withdrawn)
                )
            ).all()
        )
        withdrawals = set(
            conn.execute(
                select(consent_events.c.subject_id).where(
                    consent_events.c.run_id == report.run_id, consent_events.c.status == "withdrawn"
                )
            ).scalars()
        )
    missed = {rid for rid in withdrawn if subjects[rid] not in withdrawals}
    assert not missed, f"{len(missed)} withdrawals not read in this run"
