"""What a record's address does to a person's no, checked on SQLite and PostgreSQL against a
scripted CRM (docs/policy.md, "A record that carries another person's address"):

* a CRM record of one person that comes to carry another person's address (a CRM user's edit,
  an import that updates by id, a merge that kept the other's address): the CRM will write to
  that address, so the no of the address's owner, and their erasure, must reach the record;
* a known record whose address the CRM holds wrongly (a typo) is quarantined for the address,
  but the opt-out ticked on it is still its person's and reaches their other records.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from consentsync.domain import ConsentStatus, LawfulBasis, Origin
from consentsync.ledger.identity import CrmLink, Identity
from consentsync.ledger.schema import quarantine, subject_identifiers
from consentsync.ledger.service import Ledger
from tests.conftest import Clock
from tests.integration.helpers import consent_value
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _pushed, _state


def _two_people(ledger: Ledger, config_path: Path, clock: Clock) -> Org:
    """A and B, each opted in on their own record (r1, r2), read once."""
    org = Org(clock)
    org.put("r1", "a@example.com")
    org.put("r2", "b@example.com")
    _grant(ledger, "a@example.com", clock.now - timedelta(days=30))
    _grant(ledger, "b@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert org.written == []
    return org


def _readdress(org: Org, clock: Clock, record_id: str, email: str) -> None:
    org.records[record_id]["email"] = email
    org.records[record_id]["modifiedon"] = clock.now


def _b_withdraws(ledger: Ledger, clock: Clock) -> None:
    """B withdraws through a capture, a minute after the last sync and a minute before the next."""
    clock.advance(minutes=1)
    ledger.record(
        Identity(email="b@example.com"),
        consent_value(
            ConsentStatus.WITHDRAWN, clock.now, clock.now, basis=LawfulBasis.CONSENT, origin=Origin.CAPTURE
        ),
    )
    clock.advance(minutes=1)


def test_a_record_given_the_address_of_a_person_who_withdrew_is_told_no(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _two_people(ledger, config_path, clock)
    _b_withdraws(ledger, clock)
    del org.records["r2"]  # B's own record is gone from the CRM; A's record now holds B's address
    _readdress(org, clock, "r1", "b@example.com")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    # The CRM writes to B's address through r1: B's withdrawal reaches it.
    assert _pushed(org, "r1") == [{"optout": True}]
    assert _state(ledger, "a@example.com") == ("withdrawn", True)
    assert _state(ledger, "b@example.com") == ("withdrawn", True)
    # Once: a later run neither records the no again nor pushes again.
    clock.advance(minutes=5)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded"
    assert (report.counts.evidence_recorded, report.counts.pushes_enqueued) == (0, 0)


def test_a_record_given_an_erased_address_is_suppressed_and_the_address_stays_out(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    ledger.erase("b@example.com", reason="Art. 17 request")
    clock.advance(minutes=1)
    del org.records["r2"]
    _readdress(org, clock, "r1", "b@example.com")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    # The erased address is never to be contacted again (Art. 17, the suppression list).
    assert _pushed(org, "r1") == [{"optout": True}]
    assert _state(ledger, "a@example.com") == ("withdrawn", True)
    with ledger.engine.connect() as conn:
        held = conn.execute(
            select(subject_identifiers.c.value).where(subject_identifiers.c.value == "b@example.com")
        ).all()
    assert held == []  # never written back to the ledger
    # A's own new consent, newer than the erasure, lifts it for A, as it would any carried no.
    clock.advance(minutes=1)
    _grant(ledger, "a@example.com", clock.now)
    assert _state(ledger, "a@example.com") == ("granted", False)


def test_a_record_keeping_its_own_address_carries_nothing(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _two_people(ledger, config_path, clock)
    _b_withdraws(ledger, clock)
    _readdress(org, clock, "r1", "A@Example.com ")  # the same address, written otherwise
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == []
    assert _state(ledger, "a@example.com") == ("granted", False)


def test_an_erased_address_on_a_record_found_through_its_links_is_not_written_back(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """A record new to the ledger found through a record it points to (a consent record's
    Individual) and carrying an erased address: the address stays a hash, and the erasure
    reaches the record's person."""
    org = _two_people(ledger, config_path, clock)
    ledger.erase("b@example.com", reason="Art. 17 request")
    with ledger.engine.begin() as conn:
        (a_id,), _ = ledger.link_in(conn, [Identity(email="a@example.com")])
        found: list[tuple[int, int]] = []
        (subject_id,), _ = ledger.link_in(
            conn,
            [Identity(email="b@example.com", link=CrmLink("scripted", "consent", "c9"), subject_id=a_id)],
            elsewhere=found,
        )
        held = conn.execute(
            select(subject_identifiers.c.value).where(subject_identifiers.c.value == "b@example.com")
        ).all()
    assert subject_id == a_id
    assert held == []
    assert [owner != a_id and record_subject == a_id for owner, record_subject in found] == [True]
    assert org.written == []


def test_an_opt_out_on_a_known_record_with_an_unusable_address_is_still_the_persons(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r1", "a@example.com")
    org.put("r2", "a@example.com")  # the same person's duplicate
    _grant(ledger, "a@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)
    # The person phones: the agent ticks the opt-out and mistypes the address in passing.
    org.records["r1"].update(email="a at example.com", optout=True, modifiedon=clock.now)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded"
    assert _state(ledger, "a@example.com") == ("withdrawn", True)
    assert _pushed(org, "r2") == [{"optout": True}]
    # Ops still see the address problem, named by field, without the value's address.
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(quarantine.c.record_id, quarantine.c.reason)).all()
    assert [row.record_id for row in rows] == ["r1"]
    assert "email" in rows[0].reason and "a at example.com" not in rows[0].reason
    # Read again unchanged: nothing new, no second quarantine row.
    clock.advance(minutes=5)
    again = _engine(ledger, config_path, org).run()
    assert (again.counts.evidence_recorded, again.counts.quarantined) == (0, 0)


def test_a_new_record_with_an_unusable_address_is_still_quarantined_whole(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """Nobody knows whose a record new to the ledger is without its address: it waits for ops."""
    org = Org(clock)
    org.put("r1", "a at example.com", optout=True)
    report = _engine(ledger, config_path, org).run()
    assert (report.counts.quarantined, report.counts.evidence_recorded, report.counts.subjects_created) == (
        1,
        0,
        0,
    )


def test_a_merge_of_an_erased_persons_record_into_another_carries_the_erasure(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The CRM says the erased person and the survivor's are one human: the survivor is not to be
    marketed to on the strength of the survivor's person's consent given before the erasure."""
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    ledger.erase("a@example.com", reason="Art. 17 request")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]  # the erasure's suppression, passed on
    clock.advance(minutes=5)
    org.merge("r1", "r2")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "b@example.com") == ("withdrawn", True)
    assert _pushed(org, "r2") == [{"optout": True}]
    # The survivor's person's own new consent, newer than the erasure, lifts it.
    clock.advance(minutes=1)
    _grant(ledger, "b@example.com", clock.now)
    assert _state(ledger, "b@example.com") == ("granted", False)


def test_the_owners_no_read_on_the_same_page_as_the_readdressed_record_travels(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """Every order of arrival: B's opt-out and A's record taking B's address, read together."""
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    org.records["r2"].update(optout=True, modifiedon=clock.now)  # B says no on their record
    _readdress(org, clock, "r1", "b@example.com")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "b@example.com") == ("withdrawn", True)
    assert _state(ledger, "a@example.com") == ("withdrawn", True)
    assert _pushed(org, "r1") == [{"optout": True}]
