"""An address whose domain is internationalised is one person, one suppression entry, whether a
source gives it in Unicode or in punycode (docs/policy.md, "One address, one form"), on SQLite
and PostgreSQL against a scripted CRM; people and erasures an older version kept under the other
form are still found."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from consentsync.domain import ConsentStatus, LawfulBasis, Origin, lookup_email, normalise_email
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import subject_identifiers
from consentsync.ledger.service import Ledger
from consentsync.subjects import search
from tests.conftest import Clock
from tests.integration.helpers import consent_value
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _pushed, _state
from tests.integration.test_policy_s50_address import _readdress

UNICODE = "a@bücher.example"
PUNYCODE = "a@xn--bcher-kva.example"


def test_a_no_ticked_on_a_crm_record_under_punycode_reaches_the_person_given_in_unicode(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    _grant(ledger, normalise_email("A@Bücher.example"), clock.now - timedelta(days=30))  # the hub
    org = Org(clock)
    org.put("r1", PUNYCODE.upper(), optout=True)  # the CRM holds the domain as punycode
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded" and report.counts.subjects_created == 0
    assert _state(ledger, normalise_email(UNICODE)) == ("withdrawn", True)
    assert len(search(ledger, PUNYCODE, by="email")) == 1


def test_a_withdrawal_given_in_unicode_reaches_the_crm_record_under_punycode(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r1", PUNYCODE)
    _grant(ledger, normalise_email(PUNYCODE), clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == []  # opted in, as the ledger says
    clock.advance(minutes=1)
    ledger.record(
        Identity(email=normalise_email(UNICODE)),
        consent_value(
            ConsentStatus.WITHDRAWN, clock.now, clock.now, basis=LawfulBasis.CONSENT, origin=Origin.CAPTURE
        ),
    )
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]


def test_a_person_an_older_version_kept_under_punycode_is_found_by_either_form(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """Stored identifiers are not rewritten: the person is found, linked and erased all the same."""
    _grant(ledger, PUNYCODE, clock.now - timedelta(days=30))  # as an older version stored it
    assert len(search(ledger, "A@Bücher.example", by="email")) == 1
    org = Org(clock)
    org.put("r9", UNICODE, optout=True)  # a record new to the ledger, in the other form
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded" and report.counts.subjects_created == 0
    assert _state(ledger, lookup_email(UNICODE)) == ("withdrawn", True)
    assert ledger.erase(lookup_email(UNICODE), reason="Art. 17 request")["subject_known"]
    assert len(ledger.subject_uids_for_email(lookup_email(PUNYCODE))) == 1


def test_an_erasure_given_in_unicode_suppresses_another_persons_record_showing_punycode(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r1", "x@example.com")
    _grant(ledger, "x@example.com", clock.now - timedelta(days=30))
    _grant(ledger, normalise_email(UNICODE), clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)
    ledger.erase(lookup_email(UNICODE), reason="Art. 17 request")
    clock.advance(minutes=1)
    _readdress(org, clock, "r1", PUNYCODE)  # x's record now holds the erased address, in punycode
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]


def test_an_erasure_an_older_version_hashed_under_punycode_still_binds_the_unicode_form(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r1", "x@example.com")
    _grant(ledger, "x@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    ledger.erase(PUNYCODE, reason="Art. 17 request")  # the entry an older version made
    clock.advance(minutes=1)
    assert _state(ledger, lookup_email(UNICODE))[1] is True
    _readdress(org, clock, "r1", UNICODE)
    org.put("r2", "A@Bücher.EXAMPLE", optout=False)  # a record new to the ledger
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}] and _pushed(org, "r2") == [{"optout": True}]
    with ledger.engine.connect() as conn:  # an erased address is never written in again
        held = conn.execute(select(subject_identifiers.c.value)).scalars().all()
    assert sorted(held) == ["x@example.com"]
