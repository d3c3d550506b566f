"""The audit chain says under which notice, confirmation and reference a person acted (Art. 7(1):
the controller must be able to show the consent), and keeps saying it after the person's erasure,
which leaves the chain as it is (docs/policy.md, "What erasure leaves")."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from consentsync import audit
from consentsync.domain import ConsentStatus, LawfulBasis, SoftOptIn, iso
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from tests.conftest import Clock
from tests.integration.helpers import consent_value


def _recorded(ledger: Ledger, email: str) -> list[dict[str, Any]]:
    uids = ledger.subject_uids_for_email(email)
    with ledger.engine.connect() as conn:
        return [e for e in audit.entries(conn, subject_uids=uids) if e["action"] == "consent.recorded"]


def test_the_chain_names_the_notice_confirmation_and_reference_of_a_consent_after_erasure(
    ledger: Ledger, clock: Clock
) -> None:
    at = clock.now - timedelta(days=2)
    confirmed = at + timedelta(minutes=3)
    ledger.record(
        Identity(email="dora@example.com"),
        consent_value(
            ConsentStatus.GRANTED,
            at,
            clock.now,
            notice_version="privacy-v7",
            double_opt_in_at=confirmed,
            evidence_ref="form submission 4711",
        ),
    )
    clock.advance(minutes=1)
    ledger.record(
        Identity(email="dora@example.com"),
        consent_value(ConsentStatus.WITHDRAWN, clock.now, clock.now, source="preference_center"),
    )
    clock.advance(minutes=1)
    ledger.erase("dora@example.com", reason="Art. 17 request")
    granted, withdrawn = _recorded(ledger, "dora@example.com")
    assert granted["what"]["notice_version"] == "privacy-v7"
    assert granted["what"]["evidence_ref"] == "form submission 4711"
    assert granted["what"]["double_opt_in_at"] == iso(confirmed)
    assert (granted["source"], granted["what"]["origin"]) == ("web_form", "capture")
    # A value recorded without them says so, rather than leaving the question open.
    assert withdrawn["what"]["notice_version"] is None and withdrawn["what"]["evidence_ref"] is None
    with ledger.engine.connect() as conn:
        assert audit.verify(conn).ok


def test_the_chain_names_the_evidence_of_each_soft_opt_in_condition(ledger: Ledger, clock: Clock) -> None:
    soft = SoftOptIn("order 7", "same product line", "checkout form v4", "footer v2")
    ledger.record(
        Identity(email="eve@example.com"),
        consent_value(
            ConsentStatus.NOT_APPLICABLE,
            clock.now - timedelta(days=1),
            clock.now,
            basis=LawfulBasis.LEGITIMATE_INTERESTS,
            soft_opt_in=soft,
        ),
    )
    (entry,) = _recorded(ledger, "eve@example.com")
    assert entry["what"]["soft_opt_in"] == {
        "sale_ref": "order 7",
        "similar_products": "same product line",
        "refusal_at_collection": "checkout form v4",
        "refusal_in_messages": "footer v2",
    }


def test_the_chain_says_when_the_person_objected(ledger: Ledger, clock: Clock) -> None:
    """Ops enter an objection made by phone an hour ago: the time it was made decides which
    consent lifts it (Art. 21(3)), and the chain keeps it, as it keeps an event's time."""
    made = (clock.now - timedelta(hours=1)).replace(microsecond=0)
    result = ledger.raise_objection(
        "finn@example.com", "email_marketing", direct_marketing=True, raised_at=made
    )
    uids = ledger.subject_uids_for_email("finn@example.com")
    with ledger.engine.connect() as conn:
        (entry,) = [e for e in audit.entries(conn, subject_uids=uids) if e["action"] == "objection.raised"]
    assert entry["what"]["objection"] == result["id"]
    assert entry["what"]["raised_at"] == iso(made)
