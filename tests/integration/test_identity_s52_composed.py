"""The reverse of session 51's rule: a CRM record showing an address composed (NFC, as most
systems send it) finds the person, and the erasure, an older version kept under the decomposed
form it came in then (NFD: macOS, some web forms). Both are one address (UTS #46 composes the
decomposed one). Before, the person was made a second time and, erased, imported again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from consentsync.ledger.service import Ledger
from consentsync.subjects import search
from tests.conftest import Clock
from tests.integration.test_identity_s51_regulator import NFD, _held_forms, _people, withdrawn_as_kept
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _pushed
from tests.integration.test_policy_s50_address import _readdress, _two_people

COMPOSED = "b@caf\u00e9.example"


def test_a_crm_record_showing_the_composed_address_links_to_the_person_kept_decomposed(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    withdrawn_as_kept(ledger, clock, NFD)
    assert _people(ledger) == 1
    clock.advance(minutes=1)
    org = Org(clock)
    org.put("r1", COMPOSED.upper())
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _people(ledger) == 1, "a second person was made for the same mailbox"
    (person,) = search(ledger, COMPOSED, by="email")
    assert [record["record_id"] for record in person["crm_records"]] == ["r1"]
    assert _pushed(org, "r1") == [{"optout": True}]  # the person's withdrawal reaches the record


def test_an_address_erased_decomposed_stays_suppressed_on_a_record_showing_it_composed(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    _grant(ledger, NFD, clock.now - timedelta(days=30))
    ledger.erase(NFD, reason="Art. 17 request")  # its entry: the keyed hash of the NFD form
    clock.advance(minutes=1)
    _readdress(org, clock, "r1", COMPOSED.upper())  # A's record now shows the erased address
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]
    assert COMPOSED not in _held_forms(ledger) and NFD not in _held_forms(ledger)
