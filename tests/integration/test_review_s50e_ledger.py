"""One address, every person held under it (docs/policy.md, "One address, one form"), checked on
SQLite and PostgreSQL: a ledger an older version filled may hold one person per form of an
address (its domain in Unicode and in punycode, or as it came before UTS #46 mapping). An
erasure or a restriction asked for the address reaches each of them, a decision on an erased
address says suppressed whoever is found under another form, and a restriction carried from a
person ends when that person is erased."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from consentsync.domain import ConsentStatus, Origin, lookup_email, normalise_email
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import subject_identifiers
from consentsync.ledger.service import Ledger
from consentsync.reconcile import Rule
from consentsync.subjects import search
from tests.conftest import Clock
from tests.integration.helpers import consent_value
from tests.integration.test_policy_s49_sync import _engine, _grant, _state
from tests.integration.test_policy_s50_address import _two_people

UNICODE = "a@bücher.example"
PUNYCODE = "a@xn--bcher-kva.example"
NFD = "b@cafe\u0301.example"  # as an older version stored it: lower-cased only
FULLWIDTH = "c@\uff45xample.com"  # UTS #46 maps it to "c@example.com"


def _held(ledger: Ledger) -> list[str]:
    with ledger.engine.connect() as conn:
        return sorted(conn.execute(select(subject_identifiers.c.value)).scalars())


def _restricted(ledger: Ledger, email: str) -> bool:
    (person,) = search(ledger, email, by="email")
    return bool(person["restricted"])


def test_an_erasure_reaches_every_person_held_under_a_form_of_the_address(
    ledger: Ledger, clock: Clock
) -> None:
    _grant(ledger, normalise_email(UNICODE), clock.now - timedelta(days=30))
    _grant(ledger, PUNYCODE, clock.now - timedelta(days=30))  # as an older version kept it
    assert len(ledger.subject_uids_for_email(lookup_email(UNICODE))) == 2
    result = ledger.erase(lookup_email(UNICODE), reason="Art. 17 request")
    assert result["subject_known"] and len(result["subjects"]) == 2
    assert _held(ledger) == []
    for form in (UNICODE, PUNYCODE):
        assert _state(ledger, lookup_email(form))[1] is True
        found = search(ledger, form, by="email")
        assert len(found) == 2 and all(p["erased"] and not p["emails"] for p in found)


def test_a_decision_on_an_erased_address_is_suppressed_whoever_holds_another_form(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.erase(lookup_email(UNICODE), reason="Art. 17 request")
    clock.advance(minutes=1)
    # As an older version left it: it erased the Unicode form only, and the person it had taken
    # the punycode form for (consent given before the erasure) stands on no suppression entry.
    _grant(ledger, PUNYCODE, clock.now - timedelta(days=30))
    assert _held(ledger) == [PUNYCODE]
    uid, state = ledger.decision_for(lookup_email(UNICODE), "email_marketing", "email")
    assert uid is not None and state.suppressed and state.rule == Rule.ERASURE


def test_a_person_who_came_back_after_the_erasure_is_decided_by_their_own_state(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.erase(lookup_email(UNICODE), reason="Art. 17 request")
    clock.advance(minutes=1)
    # A new sign-up: the person is created on the address's entry, and their fresh consent counts.
    ledger.record(
        Identity(email=normalise_email(UNICODE)),
        consent_value(
            ConsentStatus.GRANTED, clock.now, clock.now, origin=Origin.CAPTURE, notice_version="v1"
        ),
    )
    expected = ledger.effective_states_in
    with ledger.engine.connect() as conn:
        (subject_id,) = conn.execute(select(subject_identifiers.c.subject_id)).scalars()
        own = expected(conn, [subject_id])[subject_id][("email_marketing", "email")]
    _uid, state = ledger.decision_for(lookup_email(PUNYCODE), "email_marketing", "email")
    assert (state.status, state.suppressed) == (own.status, own.suppressed)


def test_a_restriction_reaches_every_person_held_under_a_form_of_the_address(
    ledger: Ledger, clock: Clock
) -> None:
    _grant(ledger, normalise_email(UNICODE), clock.now - timedelta(days=30))
    _grant(ledger, PUNYCODE, clock.now - timedelta(days=30))
    result = ledger.restrict(lookup_email(PUNYCODE), restricted=True, reason="accuracy contested")
    assert len(result["subjects"]) == 2
    assert all(p["restricted"] for p in search(ledger, UNICODE, by="email"))
    ledger.restrict(lookup_email(UNICODE), restricted=False, reason="settled")
    assert not any(p["restricted"] for p in search(ledger, UNICODE, by="email"))


def test_an_address_stored_before_uts46_mapping_is_found_and_erased(ledger: Ledger, clock: Clock) -> None:
    for raw in (NFD, FULLWIDTH):
        _grant(ledger, raw, clock.now - timedelta(days=30))  # as an older version stored it
        assert lookup_email(raw) != raw  # the one form now differs
        (found,) = search(ledger, raw, by="email")
        assert found["emails"] == [raw]
        assert ledger.subject_view(lookup_email(raw))["subject"] == found["subject"]
        assert _state(ledger, lookup_email(raw)) == ("granted", False)
        result = ledger.erase(lookup_email(raw), reason="Art. 17 request")
        assert result["subject"] == found["subject"]
        (after,) = search(ledger, raw, by="email")
        assert after["erased"] and after["emails"] == []
        assert _state(ledger, lookup_email(raw))[1] is True
    assert _held(ledger) == []


def test_erasing_a_restricted_person_lifts_the_restriction_carried_from_them(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    ledger.restrict("b@example.com", restricted=True, reason="accuracy contested")
    clock.advance(minutes=1)
    org.merge("r2", "r1")  # B's record merged into A's: A's record now holds B's data
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _restricted(ledger, "a@example.com")
    clock.advance(minutes=1)
    ledger.erase("b@example.com", reason="Art. 17 request")
    assert not _restricted(ledger, "a@example.com")
    assert _state(ledger, "a@example.com") == ("granted", False)
    assert _state(ledger, "b@example.com")[1] is True
