"""The sync engine against the Vtiger sandbox (shipped mappings, deletions read from sync) where
records leave and come back without being edited: a lead converted to a contact (Vtiger hides it
from every query and lists it as deleted) and a contact restored from the recycle bin."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from consentsync_vtiger.sandbox.server import VtigerSandbox
from sqlalchemy import delete, func, select

from consentsync import audit
from consentsync.ledger.schema import crm_links, outbox, sync_cursors
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import DELETIONS, SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import shipped_engine
from tests.sandbox.serving import serve_seeded

# The connector's rules against its sandbox: the ledger's SQL under them runs on PostgreSQL in
# the engine's and the ledger's own tests (CI has 15 minutes on two cores).
pytestmark = SQLITE_ONLY

MAPPINGS = ["contacts.yaml", "leads.yaml"]


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    yield from serve_seeded(VtigerSandbox(), lambda server: server.crm.seed(40, seed=21))


def _engine(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox, extra: dict[str, Any] | None = None
) -> SyncEngine:
    options = SyncOptions(batch_size=40, signpost_lag_seconds=0)
    settings = {"max_attempts": 4, "read_deletions": True, **(extra or {})}
    return shipped_engine(ledger, config_path, sandbox, "vt", "vtiger", MAPPINGS, settings, options)


def _run(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox, extra: dict[str, Any] | None = None, **how: Any
) -> None:
    report = _engine(ledger, config_path, sandbox, extra).run(**how)
    assert report.status == "succeeded", report.error


def _link(ledger: Ledger, object_type: str, record_id: str) -> Any:
    with ledger.engine.connect() as conn:
        return conn.execute(
            select(crm_links.c.subject_id, crm_links.c.gone_at).where(
                crm_links.c.object_type == object_type, crm_links.c.record_id == record_id
            )
        ).one()


def test_a_lead_opted_out_and_converted_within_one_interval_keeps_its_no(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    """The person says no on their lead and a salesperson converts it before the next sync: no
    query answers the lead any more, and the contact made from it does not carry the opt-out
    (the stock conversion mapping leaves emailoptout out). The deletion listing hands the lead
    over with its last values: the no reaches the ledger, and from it the new contact; the
    lead's link is gone and nothing more is written to it."""
    crm = sandbox.crm
    lead = crm.create("Leads", firstname="Ana", lastname="Silva", email="ana.silva@example.test")
    _run(ledger, config_path, sandbox, full=True)
    person = _link(ledger, "Leads", lead).subject_id
    # A second later (the runs read up to the moment they start, in whole seconds).
    time.sleep(1.1)
    crm.revise(lead, emailoptout="1")
    contact = crm.convert_lead(lead)
    converted = crm.get(lead)
    assert converted is not None and crm.get(contact)["emailoptout"] == ""  # type: ignore[index]
    # A lead no sync ever read: entered, opted out and converted, all between two runs.
    unseen = crm.create("Leads", lastname="Novak", email="d.novak@example.test", emailoptout="1")
    unseen_contact = crm.convert_lead(unseen)

    _run(ledger, config_path, sandbox)
    made = crm.get(contact)
    assert made is not None and made["emailoptout"] == "1", "the lead's no was lost with its conversion"
    other = crm.get(unseen_contact)
    assert other is not None and other["emailoptout"] == "1", "the unseen lead's no was lost"
    assert _link(ledger, "Contacts", contact).subject_id == person
    assert _link(ledger, "Leads", lead).gone_at is not None
    with ledger.engine.connect() as conn:
        pending = conn.execute(
            select(func.count())
            .select_from(outbox)
            .where(outbox.c.record_id == lead, outbox.c.status == "pending")
        ).scalar_one()
    assert pending == 0
    after = crm.get(lead)
    assert after is not None and after["modifiedtime"] == converted["modifiedtime"]  # never written since


def test_a_contact_restored_from_the_recycle_bin_is_read_linked_and_pushed_to_again(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    """Deleted, the contact's link is marked gone; restored (CRMEntity::restore moves its
    modifiedtime), it is read again, its link revived, and the person's no (given meanwhile on
    their lead) is pushed to it."""
    crm = sandbox.crm
    contact = crm.create("Contacts", lastname="Back", email="back.again@example.test")
    lead = crm.create("Leads", lastname="Back", email="back.again@example.test")
    _run(ledger, config_path, sandbox, full=True)
    time.sleep(1.1)
    crm.delete(contact)
    _run(ledger, config_path, sandbox)
    assert _link(ledger, "Contacts", contact).gone_at is not None
    time.sleep(1.1)
    crm.restore(contact)
    crm.revise(lead, emailoptout="1")
    _run(ledger, config_path, sandbox)
    assert _link(ledger, "Contacts", contact).gone_at is None
    restored = crm.get(contact)
    assert restored is not None and restored["emailoptout"] == "1"
    with ledger.engine.connect() as conn:
        revived = [e["what"]["record"] for e in audit.entries(conn, action="crm.record_restored")]
    assert contact in revived


def test_a_full_run_after_a_lead_was_opted_out_and_converted_keeps_its_no(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    """A full run reads every live record again, and lists deletions from where the last listing
    ended (listed from the beginning, each deletion in the install's history would cost a
    retrieve): the lead converted since the last run comes with the no it carried."""
    crm = sandbox.crm
    lead = crm.create("Leads", firstname="Ana", lastname="Silva", email="ana.silva@example.test")
    _run(ledger, config_path, sandbox, full=True)
    time.sleep(1.1)
    crm.revise(lead, emailoptout="1")
    contact = crm.convert_lead(lead)
    _run(ledger, config_path, sandbox, full=True)
    made = crm.get(contact)
    assert made is not None and made["emailoptout"] == "1", "the lead's no was lost with its conversion"
    assert _link(ledger, "Leads", lead).gone_at is not None


def test_a_first_listing_after_earlier_reads_keeps_the_no_of_a_lead_converted_since(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    """The reviewer's case: the deletion listing has no stored position while the records were
    read before (read_deletions turned on after the connector ran for a while, or a ledger of
    the previous version, whose empty listings stored none). Its first listing, from the
    beginning, retrieves the leads it names: a lead opted out and converted since the last run
    keeps its no."""
    crm = sandbox.crm
    lead = crm.create("Leads", firstname="Ana", lastname="Silva", email="ana.silva@example.test")
    _run(ledger, config_path, sandbox, full=True)
    # As the previous version left it for an empty listing: no deletion position stored.
    with ledger.engine.begin() as conn:
        conn.execute(delete(sync_cursors).where(sync_cursors.c.object_type.like("%" + DELETIONS)))
    time.sleep(1.1)
    crm.revise(lead, emailoptout="1")
    contact = crm.convert_lead(lead)
    _run(ledger, config_path, sandbox)
    _run(ledger, config_path, sandbox)
    made = crm.get(contact)
    assert made is not None and made["emailoptout"] == "1", "the lead's no was lost with its conversion"


def test_leads_past_the_cap_keep_their_no(ledger: Ledger, config_path: Path, sandbox: VtigerSandbox) -> None:
    """The reviewer's case: more leads opted out and converted between two runs than
    conversion_checks_per_run. None is handed over bare: each keeps its no."""
    crm = sandbox.crm
    leads = [
        crm.create("Leads", firstname="A", lastname=f"L{i}", email=f"l{i}@example.test") for i in range(2)
    ]
    capped = {"conversion_checks_per_run": 1}
    _run(ledger, config_path, sandbox, capped, full=True)
    time.sleep(1.1)
    contacts = []
    for lead in leads:
        crm.revise(lead, emailoptout="1")
        contacts.append(crm.convert_lead(lead))
    for _ in range(3):
        _run(ledger, config_path, sandbox, capped)
        time.sleep(1.1)
    got = [(crm.get(c) or {}).get("emailoptout") for c in contacts]
    assert got == ["1", "1"], f"contacts made from opted-out leads: emailoptout={got}"


def test_a_long_history_is_checked_over_several_runs_none_handed_over_bare(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    """A first listing over a long history stops at conversion_checks_per_run: the engine keeps
    the cursor at the last lead handed over (no completed cursor jumps past the rest), and the
    next runs go on from there until every lead is checked. Leads opted out and converted before
    the listing was ever run keep their no, the contacts made from them get it."""
    crm = sandbox.crm
    past = datetime.now(UTC) - timedelta(hours=3)
    leads = [
        crm.create("Leads", lastname=f"Hist {i}", email=f"hist{i}@example.test", emailoptout="1", at=past)
        for i in range(250)
    ]
    contacts = [crm.convert_lead(lead, at=past + timedelta(seconds=n)) for n, lead in enumerate(leads)]
    capped = {"conversion_checks_per_run": 100}

    def ticked() -> int:
        return sum((crm.get(c) or {}).get("emailoptout") == "1" for c in contacts)

    _run(ledger, config_path, sandbox, capped, full=True)
    first = sandbox.calls["retrieve"]
    assert 0 < first <= 140, f"{first} retrieves in one run"
    assert 0 < ticked() < len(contacts)  # stopped at the cap: the rest waits for the next runs
    for _ in range(5):
        if ticked() == len(contacts):
            break
        time.sleep(1.1)
        _run(ledger, config_path, sandbox, capped)
    assert ticked() == len(contacts), "a converted lead's no was lost"


@pytest.mark.parametrize("budget", [60, 80, 100, 120])
def test_a_listing_cut_inside_a_sync_batch_loses_no_lead(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox, budget: int
) -> None:
    """A first deletion listing over a long history, cut inside a sync batch (the run's API
    budget spent by the per-lead retrieves): the engine keeps a cursor in the middle of the
    batch (it commits pages of its own size). The batch's leads are stamped with its start, so
    the next listing asks sync from there again and lists the rest of the batch: no converted
    lead's no is lost, however the runs fall."""
    crm = sandbox.crm
    past = datetime.now(UTC) - timedelta(hours=3)
    leads = [
        crm.create("Leads", lastname=f"Hist {i}", email=f"hist{i}@example.test", emailoptout="1", at=past)
        for i in range(250)
    ]
    contacts = [crm.convert_lead(lead, at=past + timedelta(seconds=n)) for n, lead in enumerate(leads)]

    def ticked() -> int:
        return sum((crm.get(c) or {}).get("emailoptout") == "1" for c in contacts)

    _engine(ledger, config_path, sandbox, {"budget": {"per_run": budget}}).run(full=True)
    for _ in range(8):
        time.sleep(1.1)
        _run(ledger, config_path, sandbox)
        if ticked() == len(contacts):
            break
    assert ticked() == len(contacts), f"{len(contacts) - ticked()} converted leads' nos lost"
