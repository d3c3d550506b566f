"""The push stage's two passes (the rows never sent, then those a CRM refused before) send each
outbox row at most once a run, and are taken again while one sends anything. Before 62e1ab3, a row
an earlier run decided (a stopped run's, a plan's) that the CRM refused in the first pass was sent
again by the second, the same run (two writes, two attempts spent of the ten before the dead
letter); and a withdrawal captured while the second pass sent was decided in that pass but waited
for the next run, however soon its CRM could have had it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from consentsync_vtiger.sandbox.server import VtigerCrm, VtigerSandbox
from sqlalchemy import select

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import outbox
from consentsync.ledger.service import Ledger, utcnow
from consentsync.sync.engine import RunReport, SyncEngine, SyncOptions
from tests.integration.helpers import consent_value, sandbox_engine, shipped_engine, shipped_mappings


@pytest.fixture
def vtiger() -> Iterator[VtigerSandbox]:
    with VtigerSandbox() as server:
        yield server


def _vtiger_engine(ledger: Ledger, config_path: Path, sandbox: VtigerSandbox) -> SyncEngine:
    options = SyncOptions(batch_size=40, signpost_lag_seconds=0)
    return shipped_engine(
        ledger, config_path, sandbox, "vt", "vtiger", ["contacts.yaml", "leads.yaml"], {}, options
    )


def _rows(ledger: Ledger, record_id: str) -> list[tuple[str, int, str | None]]:
    """The outbox rows of ``record_id``: status, attempts and the run that decided each."""
    with ledger.engine.connect() as conn:
        found = conn.execute(
            select(outbox.c.status, outbox.c.attempts, outbox.c.run_id)
            .where(outbox.c.record_id == record_id)
            .order_by(outbox.c.id)
        ).all()
    return [(row.status, row.attempts, row.run_id) for row in found]


def _refusing(
    monkeypatch: pytest.MonkeyPatch, refused: set[str], then: Callable[[str], None] | None = None
) -> list[str]:
    """Vtiger's revise made to throw for the records in ``refused`` (a workflow's custom function
    failing on their save: the write is refused for now); ``then`` is called with each record id
    before its save. The ids of every revise the CRM was asked for, in order."""
    revise = VtigerCrm.revise
    tried: list[str] = []

    def revising(self: VtigerCrm, wsid: str, values: Any = None, **more: Any) -> Any:
        tried.append(wsid)
        if then is not None:
            then(wsid)
        if wsid in refused:
            raise RuntimeError("a workflow's custom function threw on this record")
        return revise(self, wsid, values, **more)

    monkeypatch.setattr(VtigerCrm, "revise", revising)
    return tried


def test_a_stopped_runs_push_refused_now_is_sent_once_this_run(
    ledger: Ledger, config_path: Path, vtiger: VtigerSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    crm = vtiger.crm
    ann = crm.create("Contacts", firstname="Ann", lastname="Ames", email="ann.ames@example.test")
    crm.create("Leads", lastname="Ames", email="ann.ames@example.test", emailoptout="1")
    # A run stopped (SIGTERM: the daemon sets stop_requested) once it has decided its pushes:
    # Ann's lead says no, her contact's opt-out is decided, committed, and never sent.
    first = _vtiger_engine(ledger, config_path, vtiger)

    def stop_while_examining(report: RunReport) -> None:
        if report.stage == "examining":
            first.stop_requested.set()

    first.progress = stop_while_examining
    stopped = first.run()
    assert stopped.status == "stopped", stopped.error
    assert _rows(ledger, ann) == [("pending", 0, stopped.run_id)], "the stop did not leave the push unsent"
    time.sleep(1.1)  # Vtiger stamps whole seconds

    tried = _refusing(monkeypatch, {ann})
    report = _vtiger_engine(ledger, config_path, vtiger).run()
    # Sent by the first pass (never sent before) and refused: the second pass, which takes the
    # rows refused before, leaves it to the next run. Before, it was sent again right away.
    assert tried.count(ann) == 1, tried
    assert _rows(ledger, ann) == [("pending", 1, stopped.run_id)]
    assert report.counts.pushed == 0
    assert crm.get(ann)["emailoptout"] != "1"


def _salesforce_engine(ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox) -> SyncEngine:
    settings = {
        "login_url": sandbox.login_url,
        "auth": "client_credentials",
        "client_id": sandbox.credentials.client_id,
        "client_secret": sandbox.credentials.client_secret,
        "ca_bundle": str(sandbox.ca_cert_path),
        # Each save the org refuses is left pending at once: one CRM attempt per push sent.
        "lock_retries": 0,
    }
    connector = {
        "name": "sf",
        "vendor": "salesforce",
        "mappings": shipped_mappings("salesforce", "contact.yaml"),
        "settings": settings,
    }
    # Observing: the runs decide the pushes and send none; an approved plan sends them.
    options = SyncOptions(batch_size=40, signpost_lag_seconds=0, mode="observe")
    return sandbox_engine(ledger, config_path, connector, options)


def test_a_plans_push_refused_now_is_sent_once_by_its_apply(
    ledger: Ledger, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SalesforceSandbox() as sandbox:
        org = sandbox.org
        ann = org.create("Contact", LastName="Ames", Email="ann.ames@example.test")
        assert _salesforce_engine(ledger, config_path, sandbox).run().status == "succeeded"
        now = utcnow()
        ledger.record(
            Identity(email="ann.ames@example.test"),
            consent_value(ConsentStatus.WITHDRAWN, now, now, source="preference_center"),
        )
        observed = _salesforce_engine(ledger, config_path, sandbox).run()
        assert observed.status == "succeeded", observed.error
        assert _rows(ledger, ann) == [("pending", 0, observed.run_id)]
        plan = _salesforce_engine(ledger, config_path, sandbox).run(dry_run=True).plan
        assert plan is not None and [item.record_id for item in plan.items] == [ann]

        # The org refuses every save of Ann's contact for now (UNABLE_TO_LOCK_ROW): counted where
        # the org checks each record it is asked to save.
        sandbox.faults.fail_records(ann)
        consume = sandbox.faults.consume_failure
        tried: list[str] = []

        def counting(record_id: str) -> bool:
            tried.append(record_id)
            return consume(record_id)

        monkeypatch.setattr(sandbox.faults, "consume_failure", counting)
        applied = _salesforce_engine(ledger, config_path, sandbox).run(apply_plan=plan)
        # The apply's first pass sent the plan's row (decided by the observing run) and the org
        # refused it; the second pass did not send it again.
        assert tried.count(ann) == 1, tried
        assert _rows(ledger, ann) == [("pending", 1, observed.run_id)]
        assert applied.status == "stopped" and applied.note is not None, (applied.status, applied.error)
        assert "1 of the plan's 1" in applied.note
        assert org.get(ann)["HasOptedOutOfEmail"] is False


def test_a_withdrawal_captured_while_the_retried_pass_sends_goes_this_run(
    ledger: Ledger, config_path: Path, vtiger: VtigerSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    crm = vtiger.crm
    ann = crm.create("Contacts", firstname="Ann", lastname="Ames", email="ann.ames@example.test")
    crm.create("Leads", lastname="Ames", email="ann.ames@example.test", emailoptout="1")
    bob = crm.create("Contacts", firstname="Bob", lastname="Bell", email="bob.bell@example.test")
    refused = {ann}
    armed: list[bool] = []  # the second run's save of Ann's contact captures Bob's withdrawal
    captured: list[str] = []

    def bob_withdraws(wsid: str) -> None:
        if armed and wsid == ann and not captured:
            now = utcnow()
            ledger.record(
                Identity(email="bob.bell@example.test"),
                consent_value(ConsentStatus.WITHDRAWN, now, now, source="preference_center"),
            )
            captured.append(wsid)

    tried = _refusing(monkeypatch, refused, bob_withdraws)
    # Ann's lead says no; her contact's save is refused: her row is one refused before.
    first = _vtiger_engine(ledger, config_path, vtiger).run()
    assert _rows(ledger, ann) == [("pending", 1, first.run_id)], first.error
    time.sleep(1.1)  # Vtiger stamps whole seconds

    # The next run: the CRM takes Ann's save now. While it is being sent (the second pass: her
    # row is the only one, and one refused before), Bob withdraws on the preference centre.
    refused.clear()
    armed.append(True)
    tried.clear()
    report = _vtiger_engine(ledger, config_path, vtiger).run()
    assert report.status == "succeeded", report.error
    assert captured and tried[0] == ann, tried
    assert crm.get(ann)["emailoptout"] == "1"
    # Bob's opt-out, decided while the second pass ran, was sent by this run, not the next.
    assert crm.get(bob)["emailoptout"] == "1", f"Bob's opt-out waits: {_rows(ledger, bob)}"
    # Decided by this run (while its second pass ran), and done.
    assert [(status, run) for status, _, run in _rows(ledger, bob)] == [("done", report.run_id)]
    assert report.counts.pushed == 2
    assert tried.count(ann) == 1 and tried.count(bob) == 1, tried
