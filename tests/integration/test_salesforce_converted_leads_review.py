"""A converted lead is gone into its contact, a record of another object (the survivor's object
kept with the link, ledger migration 0016), and Salesforce keeps it, read-only, with the
person's data:

* a no on the lead reaches the existing contact it was converted into even where the contact
  holds another address (Salesforce copies neither the address nor Email Opt Out to an existing
  contact): the contact's person takes on the lead's nos, as a merge's survivor does;
* an erasure's delete still reaches the converted lead: done where the integration user may
  edit converted leads (*View and Edit Converted Leads*), else refused and dead-lettered with a
  problem for ops, never dropped in silence.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import select

from consentsync.ledger.schema import outbox, quarantine
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import shipped_engine
from tests.integration.test_salesforce_converted_leads import ADDRESS, MAPPINGS, _engine, _link, _run

# The connector's rules against its sandbox: the ledger's SQL under them runs on PostgreSQL in
# the engine's and the ledger's own tests (CI has 15 minutes on two cores).
pytestmark = SQLITE_ONLY


@pytest.fixture
def sandbox() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as server:
        yield server


def test_a_no_on_a_lead_reaches_the_existing_contact_it_is_converted_into(
    ledger: Ledger, config_path: Path, sandbox: Any
) -> None:
    org = sandbox.org
    contact = org.create("Contact", FirstName="Grete", LastName="Lind", Email="g.lind@work.example.test")
    lead = org.create("Lead", FirstName="Grete", LastName="Lind", Company="Acme", Email=ADDRESS)
    _run(_engine(ledger, config_path, sandbox), full=True)
    assert _link(ledger, "Lead", lead).subject_id != _link(ledger, "Contact", contact).subject_id
    org.update(lead, HasOptedOutOfEmail=True)
    time.sleep(1.1)  # whole-second stamps
    _run(_engine(ledger, config_path, sandbox))
    org.convert_lead(lead, contact_id=contact)
    time.sleep(1.1)
    _run(_engine(ledger, config_path, sandbox))
    _run(_engine(ledger, config_path, sandbox))
    assert org.get(contact)["HasOptedOutOfEmail"] is True, (
        "the lead's no never reached the contact it went into"
    )


def _erasing_engine(ledger: Ledger, config_path: Path, sandbox: Any) -> Any:
    options = SyncOptions(
        batch_size=50, signpost_lag_seconds=0, erasure_actions={"Contact": "delete", "Lead": "delete"}
    )
    settings = {"max_attempts": 3, "lock_retries": 2}
    return shipped_engine(ledger, config_path, sandbox, "sf", "salesforce", MAPPINGS, settings, options)


@pytest.mark.parametrize("may_edit_converted", [False, True])
def test_an_erasure_reaches_a_converted_lead_or_tells_ops(
    ledger: Ledger, config_path: Path, sandbox: Any, monkeypatch: pytest.MonkeyPatch, may_edit_converted: bool
) -> None:
    if may_edit_converted:  # the integration user holds "View and Edit Converted Leads"
        import consentsync_salesforce.sandbox.org as org_module

        monkeypatch.setattr(org_module, "_refuse_converted", lambda record: None)
    org = sandbox.org
    lead = org.create("Lead", FirstName="Grete", LastName="Lind", Company="Acme", Email=ADDRESS)
    assert _erasing_engine(ledger, config_path, sandbox).run(full=True).status == "succeeded"
    time.sleep(1.1)
    converted = org.convert_lead(lead)
    time.sleep(1.1)
    assert _erasing_engine(ledger, config_path, sandbox).run().status == "succeeded"
    time.sleep(1.1)
    ledger.erase(ADDRESS, reason="Art. 17 request")
    for _ in range(2):
        assert _erasing_engine(ledger, config_path, sandbox).run().status == "succeeded"
        time.sleep(1.1)
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.record_id, outbox.c.action, outbox.c.status)).all()
        problems = conn.execute(select(quarantine.c.record_id, quarantine.c.reason)).all()
    assert org.get(converted["contactId"])["IsDeleted"] is True
    lead_rows = [(action, status) for record_id, action, status in rows if record_id == lead]
    if may_edit_converted:
        assert org.get(lead)["IsDeleted"] is True, "the erased person's converted lead keeps their data"
        assert lead_rows == [("delete", "done")], lead_rows
    else:
        assert lead_rows == [("delete", "dead")], lead_rows
        assert [record_id for record_id, _ in problems] == [lead], "ops were not told"


def test_an_erasure_anonymise_a_converted_lead_refuses_goes_to_ops_once_and_carries_no_consent(
    ledger: Ledger, config_path: Path, sandbox: Any
) -> None:
    """Only the erasure's own values go to a converted lead (never the person's consents: they
    went with the flags), and a refusal by it is tried again only up to ``max_push_attempts``,
    then dead-lettered for ops (no read will settle it; a lock or a throttle would be)."""
    org = sandbox.org
    lead = org.create("Lead", FirstName="Grete", LastName="Lind", Company="Acme", Email=ADDRESS)
    options = SyncOptions(
        batch_size=50, signpost_lag_seconds=0, erasure_actions={"Lead": "anonymise"}, max_push_attempts=2
    )

    def run() -> None:
        engine = shipped_engine(ledger, config_path, sandbox, "sf", "salesforce", MAPPINGS, {}, options)
        assert engine.run().status == "succeeded"
        time.sleep(1.1)

    run()
    org.convert_lead(lead)
    time.sleep(1.1)
    run()
    ledger.erase(ADDRESS, reason="Art. 17 request")
    for _ in range(3):
        run()
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(outbox.c.status, outbox.c.attempts, outbox.c.fields).where(outbox.c.record_id == lead)
        ).all()
        problems = conn.execute(select(quarantine.c.record_id).where(quarantine.c.record_id == lead)).all()
    assert [(status, attempts) for status, attempts, _ in rows] == [("dead", 2)], rows
    assert "HasOptedOutOfEmail" not in rows[0][2] and "Erased" in rows[0][2], rows[0][2]
    assert len(problems) == 1


def test_a_no_on_a_lead_converted_then_deleted_reaches_the_contact(
    ledger: Ledger, config_path: Path, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin clears out converted leads (deletes them) before the next sync: the deleted lead
    still names the contact it went into, and its no reaches that contact's person."""
    import consentsync_salesforce.sandbox.org as org_module

    monkeypatch.setattr(org_module, "_refuse_converted", lambda record: None)  # may delete converted leads
    org = sandbox.org
    contact = org.create("Contact", FirstName="Grete", LastName="Lind", Email="g.lind@work.example.test")
    lead = org.create("Lead", FirstName="Grete", LastName="Lind", Company="Acme", Email=ADDRESS)
    _run(_engine(ledger, config_path, sandbox), full=True)
    org.update(lead, HasOptedOutOfEmail=True)
    org.convert_lead(lead, contact_id=contact)
    org.delete(lead)
    time.sleep(1.1)
    _run(_engine(ledger, config_path, sandbox))
    _run(_engine(ledger, config_path, sandbox))
    assert org.get(contact)["HasOptedOutOfEmail"] is True, (
        "the lead's no never reached the contact it went into"
    )


def test_a_converted_lead_locked_for_a_while_is_erased_once_the_lock_is_gone(
    ledger: Ledger, config_path: Path, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal a later try settles (the record locked by another save) is tried again on a
    converted lead as on any record, not dead-lettered at once: the erasure then goes through."""
    import consentsync_salesforce.sandbox.org as org_module

    monkeypatch.setattr(org_module, "_refuse_converted", lambda record: None)  # may edit converted leads
    org = sandbox.org
    lead = org.create("Lead", FirstName="Grete", LastName="Lind", Company="Acme", Email=ADDRESS)
    assert _erasing_engine(ledger, config_path, sandbox).run(full=True).status == "succeeded"
    time.sleep(1.1)
    org.convert_lead(lead)
    time.sleep(1.1)
    assert _erasing_engine(ledger, config_path, sandbox).run().status == "succeeded"
    time.sleep(1.1)
    ledger.erase(ADDRESS, reason="Art. 17 request")
    sandbox.faults.lock_records(lead, attempts=5)  # locked through this run's tries only
    _erasing_engine(ledger, config_path, sandbox).run()
    time.sleep(1.1)
    sandbox.faults.release_records()
    for _ in range(2):
        _erasing_engine(ledger, config_path, sandbox).run()
        time.sleep(1.1)
    assert org.get(lead)["IsDeleted"] is True, "the erased person's converted lead kept after a passing lock"
