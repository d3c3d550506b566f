"""One address, one form, for the local part too (docs/policy.md, "One address, one form"): an
address whose local part came decomposed (NFD, "o" and U+0308, as macOS keyboards send "ö") is
the same mailbox as the composed one (NFC). The ledger now stores the address composed, local
part included (RFC 6531/6532), and every lookup of a non-ASCII address, whatever its domain, also
tries the forms older versions kept: the local part as it came (decomposed) with the domain
composed or in punycode, and the whole address decomposed. Before, only the domain was mapped:
after erasing the decomposed spelling, a CRM record showing the composed spelling of the same
mailbox made a new person, wrote the erased address back into the ledger and was never
suppressed (and the other way round)."""

from __future__ import annotations

import unicodedata
from datetime import timedelta
from pathlib import Path

import pytest

from consentsync.domain import lookup_email, normalise_email
from consentsync.ledger.service import Ledger
from consentsync.subjects import search
from tests.conftest import Clock
from tests.integration.test_identity_s51_regulator import _held_forms, _people, withdrawn_as_kept
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _pushed, _state
from tests.integration.test_policy_s50_address import _readdress, _two_people

DOMAINS = ["example.com", "b\u00fccher.example"]  # an ASCII domain and an IDN one


def composed(domain: str) -> str:
    """The address composed (NFC): the one form."""
    return unicodedata.normalize("NFC", f"j\u00f6rg@{domain}")


def decomposed(domain: str) -> str:
    """The address as a macOS keyboard sends it: all of it decomposed (NFD)."""
    return unicodedata.normalize("NFD", composed(domain))


def kept_before(domain: str) -> str:
    """What versions before session 53 stored for the decomposed address: the local part as it
    came (NFD), the domain in its one form (composed Unicode labels)."""
    return f"jo\u0308rg@{domain}"


def _rule(ledger: Ledger, email: str) -> str:
    """The rule a decision asked for this address (the capture API's) rests on."""
    _uid, state = ledger.decision_for(email, "email_marketing", "email")
    return state.rule


def _holds_none_of(ledger: Ledger, domain: str) -> None:
    """No spelling of the erased mailbox is held (it was not written back)."""
    for held in _held_forms(ledger):
        assert lookup_email(held) != composed(domain), f"the erased address {held!a} was written back"


@pytest.mark.parametrize("domain", DOMAINS)
def test_an_address_whose_local_part_came_decomposed_is_stored_composed(domain: str) -> None:
    assert normalise_email(decomposed(domain).upper()) == composed(domain)
    assert normalise_email(kept_before(domain)) == composed(domain)
    assert lookup_email(decomposed(domain)) == composed(domain)


@pytest.mark.parametrize("domain", DOMAINS)
def test_a_record_showing_the_composed_address_finds_the_person_kept_with_a_decomposed_local_part(
    ledger: Ledger, config_path: Path, clock: Clock, domain: str
) -> None:
    withdrawn_as_kept(ledger, clock, kept_before(domain))  # as session 52 stored it
    assert _people(ledger) == 1
    clock.advance(minutes=1)
    org = Org(clock)
    org.put("r1", composed(domain).upper())
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _people(ledger) == 1, "a second person was made for the same mailbox"
    (person,) = search(ledger, composed(domain), by="email")
    assert [record["record_id"] for record in person["crm_records"]] == ["r1"]
    assert _pushed(org, "r1") == [{"optout": True}]  # the person's withdrawal reaches the record
    assert _held_forms(ledger) == [kept_before(domain)]  # kept as stored, not doubled
    # A decision asked for the composed address (the capture API) finds the person's no.
    assert _state(ledger, lookup_email(composed(domain))) == ("withdrawn", True)


@pytest.mark.parametrize("domain", DOMAINS)
def test_a_record_showing_the_decomposed_address_finds_the_person_kept_composed(
    ledger: Ledger, config_path: Path, clock: Clock, domain: str
) -> None:
    withdrawn_as_kept(ledger, clock, composed(domain))
    assert _people(ledger) == 1
    clock.advance(minutes=1)
    org = Org(clock)
    org.put("r1", decomposed(domain).upper())  # as a macOS keyboard sent it
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _people(ledger) == 1, "a second person was made for the same mailbox"
    (person,) = search(ledger, decomposed(domain), by="email")
    assert [record["record_id"] for record in person["crm_records"]] == ["r1"]
    assert _pushed(org, "r1") == [{"optout": True}]
    assert _held_forms(ledger) == [composed(domain)]
    assert _state(ledger, lookup_email(decomposed(domain))) == ("withdrawn", True)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("erased_as", ["decomposed", "composed"])
def test_an_address_erased_in_one_spelling_stays_suppressed_when_shown_in_the_other(
    ledger: Ledger, config_path: Path, clock: Clock, domain: str, erased_as: str
) -> None:
    """Erased decomposed as session 52 stored it (its suppression entry is the keyed hash of that
    form), shown composed; or erased composed, shown decomposed."""
    if erased_as == "decomposed":
        erased, shown = kept_before(domain), composed(domain)
    else:
        erased, shown = lookup_email(composed(domain)), decomposed(domain)
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    _grant(ledger, str(erased), clock.now - timedelta(days=30))
    ledger.erase(erased, reason="Art. 17 request")
    people = _people(ledger)
    clock.advance(minutes=1)
    _readdress(org, clock, "r1", shown.upper())  # A's record now shows the erased address
    org.put("r3", shown)  # and a record new to the ledger shows it too
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]
    assert _pushed(org, "r3") == [{"optout": True}]
    assert _rule(ledger, lookup_email(shown)) == "erasure_suppression"  # a decision
    assert _people(ledger) == people, "a new person was made for the erased mailbox"
    _holds_none_of(ledger, domain)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("first", ["decomposed", "composed"])
def test_after_erasing_one_spelling_a_record_showing_the_other_is_suppressed(
    ledger: Ledger, config_path: Path, clock: Clock, domain: str, first: str
) -> None:
    """The reviewer's case, through today's paths alone: the person comes from a record showing
    one spelling, is erased as the CLI erases (``lookup_email`` of that spelling), and a record
    imported later shows the other spelling of the same mailbox."""
    spelling = {"decomposed": decomposed(domain), "composed": composed(domain)}
    other = spelling["composed" if first == "decomposed" else "decomposed"]
    _grant(ledger, normalise_email(spelling[first]), clock.now - timedelta(days=3))
    org = Org(clock)
    org.put("r1", spelling[first])
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _people(ledger) == 1
    stored = _held_forms(ledger)
    clock.advance(minutes=1)
    ledger.erase(lookup_email(spelling[first]), reason="Art. 17 request")
    clock.advance(minutes=1)
    org.put("r2", other)  # the same mailbox, on a record imported into the CRM
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r2") == [{"optout": True}], "the erased address was not suppressed"
    assert _people(ledger) == 1, "a new person was made for the erased mailbox"
    _holds_none_of(ledger, domain)
    assert stored == [composed(domain)]  # the person was stored in the one form, whatever spelling
