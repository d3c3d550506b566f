"""The SuperOffice example mapping, and the status push table's `withdrawn` case: a CRM that
records a withdrawal as a value of its own is told a refusal from a consent never given."""

from __future__ import annotations

from pathlib import Path

import pytest

from consentsync.config import parse_config, starter_config_text
from consentsync.domain import ConsentStatus, EffectiveState, LawfulBasis
from consentsync.mapping import MappingError, load_mapping, parse_mapping

PERSON = Path(__file__).resolve().parents[2] / "connectors/consentsync_superoffice/mappings/person.yaml"


def _state(status: ConsentStatus, *, suppressed: bool, rule: str = "test") -> dict:  # type: ignore[type-arg]
    value = EffectiveState(
        "email_marketing", "email", status, LawfulBasis.CONSENT, suppressed=suppressed, rule=rule
    )
    return {("email_marketing", "email"): value}


@pytest.fixture
def person():  # type: ignore[no-untyped-def]
    starter = parse_config(starter_config_text(), Path("/srv/consentsync/consentsync.yaml"))
    return load_mapping(PERSON, purposes=starter.purposes, channels=starter.channels)


def test_person_reads_legal_bases_as_status_and_basis(person) -> None:  # type: ignore[no-untyped-def]
    record = {
        "PersonId": "7",
        "ConsentUpdated": "2026-11-23T03:21:24Z",
        "Email": " Ann@Example.com ",
        "LegalBase_EMARKETING": "SOFTOPTIN",
        "Updated_EMARKETING": "2026-11-20T10:00:00.1234567+01:00",
        "Source_EMARKETING": "FORM",
        "LegalBase_STORE": "WITHDRAWN",
    }
    assert person.identity_from(record) == ("7", "ann@example.com", [])
    evidence = {
        (e.purpose, e.channel): e for e in person.evidence_from(record, connector="so", observed_at=None)
    }  # type: ignore[arg-type]
    marketing = evidence[("email_marketing", "email")]
    assert (marketing.status, marketing.basis) == (ConsentStatus.GRANTED, LawfulBasis.LEGITIMATE_INTERESTS)
    assert marketing.event_time is not None and marketing.event_time.hour == 9
    assert "capture source: FORM" in (marketing.evidence_ref or "")
    assert {e.status for k, e in evidence.items() if k[0] == "service"} == {ConsentStatus.WITHDRAWN}


@pytest.mark.parametrize(
    ("status", "suppressed", "rule", "shown", "written"),
    [
        (
            ConsentStatus.WITHDRAWN,
            True,
            "sticky_withdrawal",
            "CONSENT",
            {"LegalBase_EMARKETING": "WITHDRAWN"},
        ),
        (ConsentStatus.REFUSED, True, "sticky_refusal", None, {"LegalBase_EMARKETING": "WITHDRAWN"}),
        (
            ConsentStatus.GRANTED,
            True,
            "objection_direct_marketing",
            "CONSENT",
            {"LegalBase_EMARKETING": "WITHDRAWN"},
        ),
        # No consent on record, or an expired one: RemoveConsent where SuperOffice shows one ...
        (ConsentStatus.EXPIRED, True, "validity_expired", "CONSENT", {"LegalBase_EMARKETING": None}),
        # ... and nothing at all for a person who never had one.
        (ConsentStatus.APPLICABLE, True, "no_consent_on_record", None, {}),
        (ConsentStatus.WITHDRAWN, True, "sticky_withdrawal", "WITHDRAWN", {}),
        # Allowed: a sync never invents a consent.
        (ConsentStatus.GRANTED, False, "latest_event_time", None, {}),
    ],
)
def test_push_cases(person, status, suppressed, rule, shown, written) -> None:  # type: ignore[no-untyped-def]
    record = {"LegalBase_EMARKETING": shown, "LegalBase_STORE": "LEGITIMATE"}
    updates = person.updates_for(record, _state(status, suppressed=suppressed, rule=rule))
    assert {k: v for k, v in updates.items() if k.endswith("EMARKETING")} == written


def test_withdrawn_is_a_push_key_and_nothing_else_is() -> None:
    text = PERSON.read_text().replace("push: {withdrawn: WITHDRAWN, suppressed: null}", "push: {refused: X}")
    with pytest.raises(MappingError) as raised:
        parse_mapping(text, PERSON)
    assert "accepted are suppressed, allowed, withdrawn" in str(raised.value)
