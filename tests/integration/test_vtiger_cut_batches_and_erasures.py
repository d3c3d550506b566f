"""The sync engine against the Vtiger sandbox (shipped mappings, deletions read from sync), end to
end: a deletion listing cut inside the last sync batch by the run's budget, then a lead converted
between two runs; and an erasure reaching a converted lead, which Vtiger keeps with the person's
data."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from consentsync_vtiger.sandbox.server import VtigerSandbox
from sqlalchemy import select

from consentsync.ledger.schema import crm_links, sync_cursors
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import DELETIONS, SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import shipped_engine

# The connector's rules against its sandbox: the ledger's SQL under them runs on PostgreSQL in
# the engine's and the ledger's own tests (CI has 15 minutes on two cores).
pytestmark = SQLITE_ONLY

MAPPINGS = ["contacts.yaml", "leads.yaml"]
ADDRESS = "ana.silva@example.test"


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    with VtigerSandbox() as server:
        yield server


def _engine(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox, extra: dict[str, Any], **options: Any
) -> SyncEngine:
    chosen = SyncOptions(batch_size=40, signpost_lag_seconds=0, **options)
    settings = {"max_attempts": 4, "read_deletions": True, **extra}
    return shipped_engine(ledger, config_path, sandbox, "vt", "vtiger", MAPPINGS, settings, chosen)


def _listing_cursor(ledger: Ledger) -> dict[str, Any] | None:
    with ledger.engine.connect() as conn:
        row = conn.execute(
            select(sync_cursors.c.cursor).where(sync_cursors.c.object_type == "Leads" + DELETIONS)
        ).first()
    return None if row is None else orjson.loads(row.cursor)


@pytest.mark.parametrize("budget", [50, 55])
def test_a_lead_converted_after_a_cut_inside_the_last_batch_keeps_its_no(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox, budget: int
) -> None:
    """A first run's listing is cut inside its last sync batch (the budget spent by the per-lead
    retrieves), three hours back: the next run resumes at that exact position and asks sync for
    the batch again, which now also holds the leads converted since. An old lead (an id below
    the cursor's), opted out and converted between the two runs, is listed, and its no reaches
    the contact made from it."""
    crm = sandbox.crm
    past = datetime.now(UTC) - timedelta(hours=3)
    old = crm.create("Leads", lastname="Old", email="old@example.test", at=past - timedelta(seconds=10))
    history = [crm.create("Leads", lastname=f"H{i}", email=f"h{i}@example.test", at=past) for i in range(60)]
    for n, lead in enumerate(history):
        crm.convert_lead(lead, at=past + timedelta(seconds=n))
    _engine(ledger, config_path, sandbox, {"budget": {"per_run": budget}}).run(full=True)
    stored = _listing_cursor(ledger)
    assert stored is not None and stored.get("record_id"), "calibration: not cut inside the batch"
    assert old < stored["record_id"]

    moment = datetime.now(UTC) - timedelta(minutes=10)  # past the look-back window
    crm.revise(old, {"emailoptout": "1"}, at=moment)
    contact = crm.convert_lead(old, at=moment + timedelta(seconds=1))
    for _ in range(3):
        time.sleep(1.1)
        report = _engine(ledger, config_path, sandbox, {}).run()
        assert report.status == "succeeded", report.error
    made = crm.get(contact)
    assert made is not None and made["emailoptout"] == "1", "the old lead's no was lost"


@pytest.mark.parametrize("action", ["delete", "anonymise"])
def test_an_erasure_reaches_a_converted_lead(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox, action: str
) -> None:
    """Vtiger keeps a converted lead (retrieve, revise and delete still act on it): the listing
    hands it over as gone into a contact, the engine keeps its link as a record the CRM keeps,
    and the person's erasure reaches it as it reaches the contact made from it."""

    def run(**how: bool) -> None:
        erasures = {"Contacts": action, "Leads": action}
        report = _engine(ledger, config_path, sandbox, {}, erasure_actions=erasures).run(**how)
        assert report.status == "succeeded", report.error
        time.sleep(1.1)

    crm = sandbox.crm
    lead = crm.create("Leads", firstname="Ana", lastname="Silva", email=ADDRESS, phone="+351 912 345 678")
    run(full=True)
    contact = crm.convert_lead(lead)
    run()
    with ledger.engine.connect() as conn:
        link = conn.execute(
            select(crm_links.c.gone_at, crm_links.c.merged_into, crm_links.c.merged_into_object).where(
                crm_links.c.object_type == "Leads", crm_links.c.record_id == lead
            )
        ).one()
    assert link.gone_at is not None and (link.merged_into, link.merged_into_object) == (None, "Contacts")

    ledger.erase(ADDRESS, reason="Art. 17 request")
    for _ in range(3):
        run()
    made = crm.get(contact)
    assert made is None or made["lastname"] == "Erased"
    kept = crm.get(lead)  # a converted lead: retrieve still answers it
    if action == "delete":
        assert kept is None, "the erased person's converted lead was not deleted"
    else:
        assert kept is not None, "an anonymised lead is kept"
        left = (kept["firstname"], kept["lastname"], kept["email"], kept["phone"])
        assert left == ("", "Erased", "", ""), f"the erased person's converted lead keeps their data: {left}"
