"""A blank notice version or evidence reference is no proof (docs/policy.md, "Evidence"; GDPR
Art. 7(1)). Before session 57 ``Evidence.has_proof`` asked only ``is not None``: a grant with
``notice_version=""`` (or "   ", or ``evidence_ref=""``) from a trusted capture source counted as
a new consent and reversed a withdrawal. These tests take no ledger; the entry points (CLI,
``Ledger.validate``, the capture API) are in tests/integration/test_s57_proof_blank.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from consentsync.config import parse_config, starter_config_text
from consentsync.domain import (
    NOTICE_VERSION_MAX,
    ConsentStatus,
    Evidence,
    InvalidInput,
    Origin,
    check_label,
    holds_value,
)
from consentsync.mapping import parse_mapping
from consentsync.reconcile import Policy, consent_state, summarise

WITHDRAWN_AT = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
GRANTED_AT = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
OBSERVED = datetime(2026, 11, 3, 10, 0, 5, tzinfo=UTC)
POLICY = Policy(trusted_sources=frozenset({"web_form", "ops"}))
# Empty, spaces, a tab alone, a no-break space: each shows nothing.
BLANKS = ["", " ", "   ", "\t", "\u00a0 "]


def _grant(**proof: Any) -> Evidence:
    return Evidence.from_web_form(ConsentStatus.GRANTED, GRANTED_AT, OBSERVED, **proof)


def _withdrawal() -> Evidence:
    return Evidence(
        "email_marketing",
        "email",
        ConsentStatus.WITHDRAWN,
        None,
        WITHDRAWN_AT,
        WITHDRAWN_AT,
        "ops",
        Origin.CAPTURE,
    )


def _decided(*evidence: Evidence) -> tuple[ConsentStatus, str]:
    purpose = parse_config(starter_config_text(), Path("consentsync.yaml")).purposes["email_marketing"]
    state = consent_state(summarise(evidence, POLICY), purpose, "email")
    return state.status, state.rule


@pytest.mark.parametrize("field", ["notice_version", "evidence_ref"])
@pytest.mark.parametrize("blank", BLANKS)
def test_a_blank_notice_version_or_evidence_reference_is_no_proof(field: str, blank: str) -> None:
    assert _grant(**{field: blank}).has_proof is False
    assert _grant(**{field: "privacy-v3"}).has_proof is True
    # Another proof value still proves the capture, whatever blank one comes with it.
    assert _grant(**{field: blank}, double_opt_in_at=GRANTED_AT).has_proof is True
    other = "evidence_ref" if field == "notice_version" else "notice_version"
    assert _grant(**{field: blank, other: "form-4711"}).has_proof is True


@pytest.mark.parametrize("field", ["notice_version", "evidence_ref"])
@pytest.mark.parametrize("blank", BLANKS)
def test_a_grant_with_only_a_blank_proof_value_does_not_reverse_a_withdrawal(field: str, blank: str) -> None:
    """The tester's repro, as the fold reads it: withdrawn, then a trusted web-form grant with a
    blank proof value, stays withdrawn; the same grant with a real one reverses it."""
    for order in ((_withdrawal(), _grant(**{field: blank})), (_grant(**{field: blank}), _withdrawal())):
        assert _decided(*order) == (ConsentStatus.WITHDRAWN, "sticky_withdrawal")
    assert _decided(_withdrawal(), _grant(**{field: "v3"})) == (
        ConsentStatus.GRANTED,
        "trusted_opt_in_reverses",
    )


@pytest.mark.parametrize("blank", BLANKS)
def test_a_proof_label_given_blank_is_refused_naming_it(blank: str) -> None:
    with pytest.raises(InvalidInput, match=r"^--notice-version .* is blank: a blank value proves nothing"):
        check_label(blank, "--notice-version", NOTICE_VERSION_MAX, proof=True)
    # Left out is fine; a real value too; other labels keep their rule (an empty actor passes).
    assert check_label(None, "--notice-version", NOTICE_VERSION_MAX, proof=True) is None
    assert check_label("v3", "--notice-version", NOTICE_VERSION_MAX, proof=True) == "v3"
    assert check_label("", "--actor", NOTICE_VERSION_MAX) == ""


def test_holds_value() -> None:
    assert [holds_value(text) for text in (None, *BLANKS, "v1", " v1 ")] == [False] * 6 + [True, True]


MAPPING = """\
version: 1
vendor: acme
object: Contact
identity: {record_id: Id, modstamp: Modified, email: Email}
consents:
  - purpose: email_marketing
    channel: email
    status:
      field: OptOut
      direction: pull
      pull: {true: withdrawn, false: granted}
    event_time: {field: ChangedAt}
    notice_version: {field: Notice_Version__c}
"""


@pytest.mark.parametrize("blank", [*BLANKS[:3], None])
def test_a_blank_crm_notice_field_reads_as_no_notice_version_not_as_bad_input(blank: str | None) -> None:
    """A CRM's empty text field means no value: the evidence carries none (not "", which would
    read as a value), and the record is not refused (quarantined) for it."""
    mapping = parse_mapping(MAPPING, Path("contact.yaml"))
    record = {
        "Id": "c1",
        "Email": "a@example.com",
        "OptOut": False,
        "ChangedAt": "2026-11-03T10:00:00Z",
        "Notice_Version__c": blank,
    }
    [evidence] = mapping.evidence_from(
        record, connector="acme-main", observed_at=OBSERVED + timedelta(days=1)
    )
    assert evidence.notice_version is None and evidence.origin is Origin.CRM
