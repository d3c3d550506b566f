"""A CRM record showing an address in a form an older version stored it under (before UTS #46
mapping: a domain in NFD, with fullwidth letters) is that person's on the sync path too
(docs/policy.md, "One address, one form"): it links to the person the ledger holds under that
form, whose no then reaches it, rather than making a second person who has said nothing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from consentsync.domain import ConsentStatus, LawfulBasis, Origin, lookup_email
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import subject_identifiers, subjects
from consentsync.ledger.service import Ledger
from consentsync.subjects import search
from tests.conftest import Clock
from tests.integration.helpers import consent_value
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _pushed, _state
from tests.integration.test_policy_s50_address import _readdress, _two_people

NFD = "b@cafe\u0301.example"  # as an older version stored it: lower-cased only
FULLWIDTH = "c@\uff45xample.com"  # UTS #46 maps it to "c@example.com"


def withdrawn_as_kept(ledger: Ledger, clock: Clock, stored: str) -> None:
    """The person, as an older version kept them (the address as it came), opted in, then
    withdrew through a capture."""
    _grant(ledger, stored, clock.now - timedelta(days=30))
    clock.advance(minutes=1)
    ledger.record(
        Identity(email=stored),
        consent_value(
            ConsentStatus.WITHDRAWN, clock.now, clock.now, basis=LawfulBasis.CONSENT, origin=Origin.CAPTURE
        ),
    )


def _people(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(subjects)).scalar_one())


@pytest.mark.parametrize("stored", [NFD, FULLWIDTH])
def test_a_crm_record_showing_an_address_as_an_older_version_stored_it_links_to_that_person(
    ledger: Ledger, config_path: Path, clock: Clock, stored: str
) -> None:
    withdrawn_as_kept(ledger, clock, stored)
    assert lookup_email(stored) != stored and _people(ledger) == 1
    clock.advance(minutes=1)
    # A CRM record with the same address as the person typed it (upper case, as CRMs keep it).
    org = Org(clock)
    org.put("r1", stored.upper())
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _people(ledger) == 1  # no second person for the same mailbox
    (person,) = search(ledger, stored, by="email")
    assert [record["record_id"] for record in person["crm_records"]] == ["r1"]
    # The person's withdrawal reaches the record the CRM mails from.
    assert _pushed(org, "r1") == [{"optout": True}]
    assert org.records["r1"]["optout"] is True


@pytest.mark.parametrize("stored", [NFD, FULLWIDTH])
def test_an_address_an_older_version_erased_as_it_came_stays_suppressed_on_another_persons_record(
    ledger: Ledger, config_path: Path, clock: Clock, stored: str
) -> None:
    """The per-address rule (an erased address is never contacted again, whoever's record holds
    it) holds for an entry an older version made under the address as it came."""
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    # As an older version erased it: its suppression entry is the keyed hash of that form.
    _grant(ledger, stored, clock.now - timedelta(days=30))
    ledger.erase(stored, reason="Art. 17 request")
    clock.advance(minutes=1)
    _readdress(org, clock, "r1", stored.upper())  # A's record now holds the erased address
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]
    # A consents anew (to A's own address): r1 still holds the erased one, and stays suppressed.
    clock.advance(minutes=1)
    _grant(ledger, "a@example.com", clock.now)
    assert _state(ledger, "a@example.com") == ("granted", False)
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]  # never told it may mail the erased address
    held = _held_forms(ledger)
    assert lookup_email(stored) not in held and stored not in held  # never written back


def _held_forms(ledger: Ledger) -> list[str]:
    with ledger.engine.connect() as conn:
        return list(conn.execute(select(subject_identifiers.c.value)).scalars())
