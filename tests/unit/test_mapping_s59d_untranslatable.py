"""A CRM value the mapping cannot translate stops only what it says (docs/policy.md, "Event times
and input limits"): a no on the same record (an opt-out ticked beside a legal-basis picklist value
an admin added since, a withdrawal beside another purpose's unknown legal base) is still read,
without the value (a withdrawal needs no basis); a grant whose basis cannot be named is held
back, alone. Each value held back is named for the record's quarantine. Without ``held_back``
(the callers that take a record whole) the first such value raises, as it always did."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consentsync.config import parse_config, starter_config_text
from consentsync.domain import ConsentStatus, LawfulBasis
from consentsync.mapping import Mapping, MappingValueError, load_mapping, parse_mapping

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 30, tzinfo=UTC)
NEW_BASIS = "Legitimate Interest (B2B)"  # a picklist value added after the mapping was written

TEXT = """\
version: 1
vendor: acme
object: Contact
identity: {record_id: Id, modstamp: Modified, email: Email}
consents:
  - purpose: email_marketing
    channel: email
    status: {field: OptOut, direction: pull, pull: {true: withdrawn, false: granted}}
    basis: {field: Basis, direction: pull, pull: {Consent: consent, Contract: contract}}
    event_time: {field: ChangedAt}
  - purpose: profiling
    channel: email
    status: {field: Profiling, direction: pull, pull: {"yes": granted, "no": withdrawn}}
  - purpose: service
    channel: phone
    status:
      field: DoNotCall
      direction: pull
      also_read: [DoNotContact]
      pull: {true: withdrawn, false: null}
"""


@pytest.fixture
def mapping() -> Mapping:
    return parse_mapping(TEXT, Path("contact.yaml"))


def _read(mapping: Mapping, **values: Any) -> tuple[dict[str, Any], list[str]]:
    record = {"Id": "c1", "Email": "a@example.com", **values}
    held_back: list[MappingValueError] = []
    evidence = mapping.evidence_from(record, connector="acme", observed_at=NOW, held_back=held_back)
    return {e.purpose: e for e in evidence}, [str(error) for error in held_back]


def test_an_opt_out_is_read_without_the_basis_the_mapping_cannot_name(mapping: Mapping) -> None:
    read, held = _read(mapping, OptOut=True, Basis=NEW_BASIS)
    assert (read["email_marketing"].status, read["email_marketing"].basis) == (ConsentStatus.WITHDRAWN, None)
    [reason] = held
    assert "field Basis: cannot translate" in reason and NEW_BASIS in reason
    # Taken whole (no held_back), the record still stops at the value, as before.
    with pytest.raises(MappingValueError, match="field Basis"):
        mapping.evidence_from(
            {"Id": "c1", "OptOut": True, "Basis": NEW_BASIS}, connector="acme", observed_at=NOW
        )


def test_a_grant_on_a_basis_the_mapping_cannot_name_is_held_back_alone(mapping: Mapping) -> None:
    read, held = _read(mapping, OptOut=False, Basis=NEW_BASIS, Profiling="no")
    assert "email_marketing" not in read  # never a consent on a basis nobody can name
    assert read["profiling"].status is ConsentStatus.WITHDRAWN  # the other purpose's no stays
    assert len(held) == 1 and "field Basis" in held[0]
    # Nothing else to say: nothing is read, the value is named.
    read, held = _read(mapping, OptOut=False, Basis=NEW_BASIS)
    assert read == {} and len(held) == 1


def test_a_no_beside_another_purposes_unknown_status_is_read(mapping: Mapping) -> None:
    read, held = _read(mapping, OptOut=True, Basis="Consent", Profiling="maybe later")
    assert (read["email_marketing"].status, read["email_marketing"].basis) == (
        ConsentStatus.WITHDRAWN,
        LawfulBasis.CONSENT,
    )
    assert "profiling" not in read
    assert len(held) == 1 and "field Profiling" in held[0] and "maybe later" in held[0]


def test_a_no_is_read_without_a_time_that_is_no_time(mapping: Mapping) -> None:
    read, held = _read(mapping, OptOut=True, Basis="Consent", ChangedAt="last Tuesday")
    assert (read["email_marketing"].status, read["email_marketing"].event_time) == (
        ConsentStatus.WITHDRAWN,
        None,
    )
    assert len(held) == 1 and "field ChangedAt" in held[0]
    read, held = _read(mapping, OptOut=False, Basis="Consent", ChangedAt="last Tuesday")
    assert "email_marketing" not in read and len(held) == 1


def test_a_no_in_one_field_is_read_beside_an_unknown_value_of_another(mapping: Mapping) -> None:
    read, held = _read(mapping, DoNotCall=True, DoNotContact="sometimes")
    assert read["service"].status is ConsentStatus.WITHDRAWN
    assert len(held) == 1 and "field DoNotContact" in held[0]
    # Without a no beside it, the status is not known: held back.
    read, held = _read(mapping, DoNotCall=False, DoNotContact="sometimes")
    assert "service" not in read and len(held) == 1


def test_the_shipped_mappings_read_the_nos_of_the_black_box_findings() -> None:
    starter = parse_config(starter_config_text(), Path("/srv/consentsync/consentsync.yaml"))
    kept = {"purposes": starter.purposes, "channels": starter.channels}
    contact = load_mapping(ROOT / "connectors/consentsync_salesforce/mappings/contact.yaml", **kept)
    read, held = _read(contact, Id="003A", HasOptedOutOfEmail=True, Legal_Basis__c=NEW_BASIS)
    assert read["email_marketing"].status is ConsentStatus.WITHDRAWN and len(held) == 1
    person = load_mapping(ROOT / "connectors/consentsync_superoffice/mappings/person.yaml", **kept)
    record = {"PersonId": "7", "LegalBase_EMARKETING": "WITHDRAWN", "LegalBase_STORE": "CUSTOMERSERVICE"}
    held_back: list[MappingValueError] = []
    evidence = person.evidence_from(record, connector="so", observed_at=NOW, held_back=held_back)
    assert {(e.purpose, e.status) for e in evidence} == {("email_marketing", ConsentStatus.WITHDRAWN)}
    assert [error.field for error in held_back] == ["LegalBase_STORE"]
