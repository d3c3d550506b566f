"""The sync engine against the Vtiger sandbox with the shipped mappings, on SQLite and PostgreSQL:
a full sync then nothing to do, a withdrawal in Vtiger reaching the person's other records,
Privacy Guard's states in the ledger, and a stopped run resuming."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_vtiger.sandbox.server import VtigerSandbox
from sqlalchemy import func, select

from consentsync import audit
from consentsync.ledger.schema import consent_events, crm_links, outbox, quarantine
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.integration.helpers import shipped_engine
from tests.sandbox.serving import serve_seeded

MAPPINGS = ["contacts.yaml", "leads.yaml", "accounts.yaml", "consents.yaml"]
MODULES = ("Contacts", "Leads", "Accounts", "Consents")


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    yield from serve_seeded(VtigerSandbox(), lambda server: server.crm.seed(150, seed=12))


def _engine(ledger: Ledger, config_path: Path, sandbox: VtigerSandbox, **settings: Any) -> SyncEngine:
    options = SyncOptions(batch_size=40, signpost_lag_seconds=0)
    tuned = {"max_attempts": 4, **settings}
    return shipped_engine(ledger, config_path, sandbox, "vt", "vtiger", MAPPINGS, tuned, options)


def _count(ledger: Ledger, table: Any, *where: Any) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def test_full_sync_then_nothing_to_do(ledger: Ledger, config_path: Path, sandbox: VtigerSandbox) -> None:
    before = {r["id"]: r["emailoptout"] for r in sandbox.crm.records("Contacts")}
    first = _engine(ledger, config_path, sandbox).run(full=True)
    assert first.status == "succeeded", first.error
    assert first.counts.read == sum(sandbox.crm.count(m) for m in MODULES)
    assert _count(ledger, outbox, outbox.c.status == "pending") == 0
    # No consent on record is not a no: a box is ticked only on the strength of a person's own no
    # (an opt-out or refusal on any of their records), never for want of a consent (the mapping
    # names no `no_consent` value), and a box is never cleared on no evidence.
    boxes = {r["id"]: r["emailoptout"] for r in sandbox.crm.records("Contacts")}
    changed = {rid for rid in boxes if boxes[rid] != before.get(rid, boxes[rid])}
    with ledger.engine.connect() as conn:
        rules = {e["what"]["record"]: e["rule"] for e in audit.entries(conn, action="crm.pushed")}
    assert changed and all(boxes[rid] == "1" for rid in changed)
    assert not [rid for rid in changed if rules.get(rid) in (None, "no_consent_on_record")]
    calls = first.counts.api_calls
    events = _count(ledger, consent_events)
    second = _engine(ledger, config_path, sandbox).run()
    assert second.status == "succeeded", second.error
    assert (second.counts.evidence_recorded, second.counts.pushes_enqueued) == (0, 0)
    third = _engine(ledger, config_path, sandbox).run()
    # The pushes stamped every pushed record just now: the look-back window reads them again,
    # and each is recognised as unchanged.
    assert third.counts.read == third.counts.unchanged_records and third.counts.pushes_enqueued == 0
    assert third.counts.evidence_recorded == 0
    assert third.counts.api_calls < calls
    assert _count(ledger, consent_events) == events
    with ledger.engine.connect() as conn:
        assert audit.verify(conn).ok


def test_privacy_guard_states_reach_the_ledger_and_unknown_names_are_quarantined(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    contact = sandbox.crm.records("Contacts")[0]["id"]
    sandbox.crm.create(
        "Consents",
        consent_name="Email Marketing",
        contact_id=contact,
        consent_status="Not Granted",
        granted_on="2026-10-01 09:00:00",
        consent_source="Webform",
    )
    odd = sandbox.crm.create(
        "Consents", consent_name="Newsletter Deluxe", contact_id=contact, consent_status="Granted"
    )
    report = _engine(ledger, config_path, sandbox).run(full=True)
    assert report.status == "succeeded", report.error
    with ledger.engine.connect() as conn:
        statuses = set(conn.execute(select(consent_events.c.status)).scalars())
        reasons = conn.execute(select(quarantine.c.record_id, quarantine.c.reason)).all()
        linked = conn.execute(
            select(func.count()).select_from(crm_links).where(crm_links.c.object_type == "Consents")
        ).scalar_one()
    assert {"refused", "granted", "requested"} <= statuses
    assert any(rid == odd and "Newsletter Deluxe" in reason for rid, reason in reasons)
    assert linked == sandbox.crm.count("Consents") - 1


def test_a_withdrawal_on_a_contact_reaches_the_lead_with_the_same_address(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    contact = sandbox.crm.create("Contacts", lastname="Doe", email="jane.doe@example.test", donotcall="0")
    lead = sandbox.crm.create("Leads", lastname="Doe", email="Jane.Doe@Example.test")
    assert _engine(ledger, config_path, sandbox).run(full=True).status == "succeeded"
    # These runs read up to the moment they start (signpost lag 0): an edit in the very second
    # a run read would be left behind by whole-second stamps (what the default lag of 2 s is
    # for), so the people below act a second later.
    time.sleep(1.1)
    sandbox.crm.revise(contact, emailoptout="1", donotcall="1")  # the person opts out, and of calls
    report = _engine(ledger, config_path, sandbox).run()
    assert report.status == "succeeded", report.error
    lead_now, contact_now = sandbox.crm.get(lead), sandbox.crm.get(contact)
    assert lead_now is not None and contact_now is not None
    assert lead_now["emailoptout"] == "1", "the contact's opt-out did not reach the lead with its address"
    assert contact_now["donotcall"] == "1"


def test_a_run_stopped_by_the_limit_resumes_and_loses_nothing(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    sandbox.faults.update(request_limit_after=6)
    stopped = _engine(ledger, config_path, sandbox).run(full=True)
    assert stopped.status == "stopped", stopped.error
    sandbox.faults.reset()
    for _ in range(4):
        report = _engine(ledger, config_path, sandbox).run()
        assert report.status == "succeeded", report.error
        if report.counts.read == report.counts.unchanged_records and report.counts.pushes_enqueued == 0:
            break
    with ledger.engine.connect() as conn:
        linked = conn.execute(select(func.count(func.distinct(crm_links.c.record_id)))).scalar_one()
    assert linked == sum(sandbox.crm.count(m) for m in MODULES)
    assert _count(ledger, outbox, outbox.c.status == "pending") == 0
