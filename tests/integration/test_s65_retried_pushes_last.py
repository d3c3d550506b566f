"""A few records a CRM keeps refusing (a workflow throwing on their save) never hold back anyone
else's push: the rows never sent go before the rows refused before. Before, the refused rows, the
oldest, headed every run's pushes, and Vtiger's stop after five refusals in a row stopped each run
before another person's opt-out was sent, until the five were dead-lettered many runs later."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from consentsync_vtiger.sandbox.server import VtigerCrm, VtigerSandbox
from sqlalchemy import select

from consentsync.ledger.schema import outbox
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncOptions
from tests.integration.helpers import shipped_engine


@pytest.fixture
def sandbox() -> Any:
    with VtigerSandbox() as server:
        yield server


def test_records_refused_before_do_not_hold_back_another_persons_opt_out(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    crm = sandbox.crm
    broken = [
        crm.create("Contacts", firstname=f"B{i}", lastname="Broken", email=f"b{i}@example.test")
        for i in range(6)
    ]
    leads = [crm.create("Leads", lastname="Broken", email=f"b{i}@example.test") for i in range(6)]
    cara = crm.create("Contacts", firstname="Cara", lastname="Diaz", email="cara.diaz@example.test")
    cara_lead = crm.create("Leads", lastname="Diaz", email="cara.diaz@example.test")
    revise = VtigerCrm.revise

    tried: list[str] = []

    def failing_on_the_broken(self: VtigerCrm, wsid: str, values: Any = None, **more: Any) -> Any:
        tried.append(wsid)
        if wsid in broken:
            raise RuntimeError("a workflow's custom function threw on this record")
        return revise(self, wsid, values, **more)

    monkeypatch.setattr(VtigerCrm, "revise", failing_on_the_broken)

    def run() -> Any:
        options = SyncOptions(batch_size=40, signpost_lag_seconds=0)
        engine = shipped_engine(
            ledger, config_path, sandbox, "vt", "vtiger", ["contacts.yaml", "leads.yaml"], {}, options
        )
        report = engine.run()
        time.sleep(1.1)  # Vtiger stamps whole seconds
        return report

    run()
    for lead in leads:
        revise(crm, lead, {"emailoptout": "1"})  # six opt-outs the contacts' saves will refuse
    time.sleep(1.1)
    run()
    with ledger.engine.connect() as conn:
        refused = conn.execute(
            select(outbox.c.record_id).where(outbox.c.status == "pending", outbox.c.attempts > 0)
        ).scalars()
        # Five refused in a row stop Vtiger's write: the sixth waits, unsent.
        assert len(set(broken) & set(refused)) == 5, "the broken records' pushes were not refused"
    revise(crm, cara_lead, {"emailoptout": "1"})
    time.sleep(1.1)
    tried.clear()
    report = run()
    # Each once a run: the sixth, never sent before (the stop came first), is refused in the
    # first pass and not sent again by the second, which takes the rows refused before.
    assert sorted(tried.count(record) for record in broken) == [1] * 6, tried
    assert crm.get(cara)["emailoptout"] == "1", (
        f"Cara's opt-out was held back ({report.status}: {report.error})"
    )
    with ledger.engine.connect() as conn:
        still = conn.execute(
            select(outbox.c.record_id).where(outbox.c.status == "pending", outbox.c.record_id.in_(broken))
        ).scalars()
        assert set(still) == set(broken), "the refused rows are not kept for the next run"
