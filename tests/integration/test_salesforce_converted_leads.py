"""The sync engine against the Salesforce sandbox (shipped Contact and Lead mappings) when a
salesperson converts a lead. Salesforce keeps a converted lead, queryable, with ``IsConverted``
true, and refuses every write to it (CANNOT_UPDATE_CONVERTED_LEAD): the person now lives in the
contact it was converted into. The lead must count as gone (nothing pushed to it, nothing dead-
lettered or left pending for it), its last no must stay the person's, and what the person is
owed must reach the contact."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import select

from consentsync import audit
from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import crm_links, outbox, quarantine
from consentsync.ledger.service import Ledger, utcnow
from consentsync.sync.engine import RunReport, SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import consent_value, shipped_engine

# The connector's rules against its sandbox: the ledger's SQL under them runs on PostgreSQL in
# the engine's and the ledger's own tests (CI has 15 minutes on two cores).
pytestmark = SQLITE_ONLY

MAPPINGS = ["contact.yaml", "lead.yaml"]
ADDRESS = "grete.lind@example.test"


@pytest.fixture
def sandbox() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as server:
        yield server


def _engine(ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox) -> SyncEngine:
    options = SyncOptions(batch_size=50, signpost_lag_seconds=0)
    settings = {"max_attempts": 3, "lock_retries": 2}
    return shipped_engine(ledger, config_path, sandbox, "sf", "salesforce", MAPPINGS, settings, options)


def _run(engine: SyncEngine, **how: Any) -> RunReport:
    report = engine.run(**how)
    assert report.status == "succeeded", report.error
    # Salesforce stamps whole seconds, and a run reads up to the moment it starts: what happens
    # next is stamped after this run's bound.
    time.sleep(1.1)
    return report


def _link(ledger: Ledger, object_type: str, record_id: str) -> Any:
    with ledger.engine.connect() as conn:
        return conn.execute(
            select(crm_links.c.subject_id, crm_links.c.gone_at, crm_links.c.merged_into).where(
                crm_links.c.object_type == object_type, crm_links.c.record_id == record_id
            )
        ).one_or_none()


def _rows(ledger: Ledger, record_id: str) -> list[tuple[str, str | None]]:
    with ledger.engine.connect() as conn:
        return [
            (row.status, row.last_error)
            for row in conn.execute(
                select(outbox.c.status, outbox.c.last_error)
                .where(outbox.c.record_id == record_id)
                .order_by(outbox.c.id)
            )
        ]


def _open_problems(ledger: Ledger, record_id: str) -> list[str]:
    with ledger.engine.connect() as conn:
        return list(
            conn.execute(
                select(quarantine.c.reason).where(
                    quarantine.c.record_id == record_id, quarantine.c.resolved_at.is_(None)
                )
            ).scalars()
        )


def _pushed_to(ledger: Ledger, record_id: str) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        return [e for e in audit.entries(conn, action="crm.pushed") if e["what"]["record"] == record_id]


def _withdraw(ledger: Ledger, email: str) -> None:
    """The person unsubscribes elsewhere (a web form another system captured)."""
    now = utcnow()
    ledger.record(
        Identity(email=email), consent_value(ConsentStatus.WITHDRAWN, now - timedelta(seconds=1), now)
    )


def _email_marketing(ledger: Ledger, email: str) -> tuple[str, bool]:
    view = ledger.subject_view(email)
    state = next(s for s in view["purposes"] if (s["purpose"], s["channel"]) == ("email_marketing", "email"))
    return state["status"], state["suppressed"]


def _assert_gone_and_untouched(ledger: Ledger, sandbox: SalesforceSandbox, lead: str, stamp: Any) -> None:
    link = _link(ledger, "Lead", lead)
    assert link is not None and link.gone_at is not None, "the converted lead still counts as a live record"
    # Gone into its contact, a record of another object (never taken for a Lead's id).
    assert link.merged_into == sandbox.org.get(lead)["ConvertedContactId"]  # type: ignore[index]
    with ledger.engine.connect() as conn:
        kind = conn.execute(
            select(crm_links.c.merged_into_object).where(crm_links.c.record_id == lead)
        ).scalar()
    assert kind == "Contact"
    assert [status for status, _ in _rows(ledger, lead)] in ([], ["superseded"]), _rows(ledger, lead)
    assert _open_problems(ledger, lead) == [], "the converted lead left a problem open for ops"
    assert _pushed_to(ledger, lead) == []
    after = sandbox.org.get(lead)
    assert after is not None and after["SystemModstamp"] == stamp, (
        "something was written to the converted lead"
    )


def test_a_withdrawal_after_the_lead_was_converted_reaches_the_contact_and_not_the_lead(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox
) -> None:
    """(1) The lead is read and linked; a salesperson converts it; the person withdraws
    elsewhere. The next run hands the lead over as gone: the opt-out is pushed to the new
    contact only, and nothing waits, dead or pending, for the lead."""
    org = sandbox.org
    lead = org.create("Lead", FirstName="Grete", LastName="Lind", Company="Acme", Email=ADDRESS)
    engine = _engine(ledger, config_path, sandbox)
    _run(engine, full=True)
    person = _link(ledger, "Lead", lead).subject_id
    converted = org.convert_lead(lead)
    contact = converted["contactId"]
    stamp = org.get(lead)["SystemModstamp"]  # type: ignore[index]
    _withdraw(ledger, ADDRESS)
    time.sleep(1.1)

    report = _run(_engine(ledger, config_path, sandbox))
    assert report.counts.push_failed == 0
    assert org.get(contact)["HasOptedOutOfEmail"] is True, "the withdrawal never reached the new contact"  # type: ignore[index]
    assert _link(ledger, "Contact", contact).subject_id == person
    assert _email_marketing(ledger, ADDRESS) == ("withdrawn", True)
    _assert_gone_and_untouched(ledger, sandbox, lead, stamp)
    _run(_engine(ledger, config_path, sandbox))  # the look-back reads the lead again: still gone
    _assert_gone_and_untouched(ledger, sandbox, lead, stamp)


def test_a_lead_converted_while_the_run_pushes_to_it_is_neither_dead_lettered_nor_retried_for_ever(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox
) -> None:
    """(1b) The conversion lands between the run's read and its push: Salesforce refuses the
    push with CANNOT_UPDATE_CONVERTED_LEAD. The run succeeds; the row waits (not dead-lettered,
    no problem for ops) and is sent once, not again in the run's passes; the next run reads
    the conversion, supersedes the row and pushes to the contact."""
    org = sandbox.org
    lead = org.create("Lead", FirstName="Grete", LastName="Lind", Company="Acme", Email=ADDRESS)
    _run(_engine(ledger, config_path, sandbox), full=True)
    _withdraw(ledger, ADDRESS)
    engine = _engine(ledger, config_path, sandbox)
    write_batches = engine.connector.write_batches
    converted: dict[str, str] = {}

    def converted_first(updates: Any) -> Any:
        if not converted:  # a salesperson converts the lead as the run starts pushing
            converted.update(org.convert_lead(lead))
        before = sandbox.calls["composite"]
        yield from write_batches(updates)
        assert sandbox.calls["composite"] - before == 1, "the refused lead was sent again in the run"

    engine.connector.write_batches = converted_first  # type: ignore[method-assign]
    report = _run(engine)
    assert converted, "the run pushed nothing to the lead"
    assert report.counts.push_failed == 1
    ((status, error),) = _rows(ledger, lead)
    assert status == "pending" and error is not None and "CANNOT_UPDATE_CONVERTED_LEAD" in error
    assert _open_problems(ledger, lead) == [], "a converted lead's refusal was quarantined"
    stamp = org.get(lead)["SystemModstamp"]  # type: ignore[index]

    _run(_engine(ledger, config_path, sandbox))
    assert [status for status, _ in _rows(ledger, lead)] == ["superseded"]
    assert org.get(converted["contactId"])["HasOptedOutOfEmail"] is True  # type: ignore[index]
    _assert_gone_and_untouched(ledger, sandbox, lead, stamp)


def test_a_lead_opted_out_and_converted_between_two_syncs_keeps_its_no(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox
) -> None:
    """(2) The person unsubscribes on their lead, and a salesperson converts it into the
    person's existing contact before the next sync: Salesforce does not carry Email Opt Out to
    an existing contact. The lead comes with its last values: the no is the person's, recorded
    and pushed to the contact. A lead no sync ever read (made, opted out and converted into a
    new contact between two runs) is linked gone, into its contact; its no reaches the ledger."""
    org = sandbox.org
    existing = org.create("Contact", FirstName="Grete", LastName="Lind", Email=ADDRESS)
    lead = org.create("Lead", FirstName="Grete", LastName="Lind", Company="Acme", Email=ADDRESS)
    _run(_engine(ledger, config_path, sandbox), full=True)
    person = _link(ledger, "Contact", existing).subject_id
    assert _link(ledger, "Lead", lead).subject_id == person
    org.update(lead, HasOptedOutOfEmail=True)
    org.convert_lead(lead, contact_id=existing)
    assert org.get(existing)["HasOptedOutOfEmail"] is False  # type: ignore[index]
    stamp = org.get(lead)["SystemModstamp"]  # type: ignore[index]
    unseen = org.create("Lead", LastName="Novak", Company="Globex", Email="d.novak@example.test")
    org.update(unseen, HasOptedOutOfEmail=True)
    unseen_contact = org.convert_lead(unseen)["contactId"]
    unseen_stamp = org.get(unseen)["SystemModstamp"]  # type: ignore[index]
    time.sleep(1.1)

    _run(_engine(ledger, config_path, sandbox))
    assert _email_marketing(ledger, ADDRESS) == ("withdrawn", True), (
        "the lead's no was lost with its conversion"
    )
    assert org.get(existing)["HasOptedOutOfEmail"] is True, "the no never reached the contact"  # type: ignore[index]
    _assert_gone_and_untouched(ledger, sandbox, lead, stamp)
    assert _email_marketing(ledger, "d.novak@example.test") == ("withdrawn", True)
    assert _link(ledger, "Contact", unseen_contact) is not None
    # Linked as a merge's unseen duplicate is: by its id only, gone into its contact (so that an
    # erasure of the person still reaches the data it keeps).
    unseen_link = _link(ledger, "Lead", unseen)
    assert unseen_link is not None and unseen_link.gone_at is not None, "a converted lead linked as live"
    assert unseen_link.merged_into == unseen_contact
    assert org.get(unseen)["SystemModstamp"] == unseen_stamp  # type: ignore[index]
