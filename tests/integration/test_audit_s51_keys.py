"""Session 51: `audit verify` compares every field a ``consent.recorded`` entry says about its
event (the event time above all: it decides who said what last), not only its labels."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from consentsync import exit_codes
from consentsync.domain import ConsentStatus, LawfulBasis, SoftOptIn
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import consent_events
from consentsync.ledger.service import Ledger
from tests.conftest import Cli
from tests.integration.helpers import consent_value
from tests.integration.test_tamper_evidence import _as_owner_unprotected, _recorded_seq, _rewrite_from

SOFT = SoftOptIn("order-1", "own newsletter", "box at checkout", "footer link")


def _record(ledger: Ledger, email: str, day: int, soft_opt_in: SoftOptIn | None = None) -> None:
    at = datetime(2026, 1, day, 9, 30, 15, 250000, tzinfo=UTC)
    # A soft opt-in is recorded as what it is: no consent, legitimate interests.
    soft = {"soft_opt_in": soft_opt_in, "basis": LawfulBasis.LEGITIMATE_INTERESTS} if soft_opt_in else {}
    ledger.record(
        Identity(email=email),
        consent_value(
            ConsentStatus.NOT_APPLICABLE if soft_opt_in else ConsentStatus.GRANTED,
            at,
            ledger.clock(),
            notice_version="v1",
            evidence_ref="form-7",
            double_opt_in_at=at,
            **soft,
        ),
    )


def _first_event(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(select(consent_events.c.id).order_by(consent_events.c.id)).scalars().first()


def _edit_event(ledger: Ledger, event_id: int, **values: Any) -> None:
    _as_owner_unprotected(ledger.engine)
    with ledger.engine.begin() as conn:
        conn.execute(consent_events.update().where(consent_events.c.id == event_id).values(**values))


EDITS = {
    # An earlier consent moved after a later withdrawal wins precedence (docs/policy.md).
    "event_time": datetime(2026, 3, 1, tzinfo=UTC),
    "notice_version": "v2",
    "evidence_ref": "form-8",
    "double_opt_in_at": datetime(2026, 1, 5, tzinfo=UTC),
    "soft_opt_in_sale_ref": "order-2",
}


@pytest.mark.parametrize("column", sorted(EDITS))
def test_an_edited_event_field_is_named(cli: Cli, ledger: Ledger, column: str) -> None:
    _record(ledger, "a@example.com", 1, soft_opt_in=SOFT)
    _record(ledger, "b@example.com", 2)
    assert "consent events and audit entries agree: 2 events" in cli.ok("audit", "verify").stdout
    first = _first_event(ledger)
    _edit_event(ledger, first, **{column: EDITS[column]})
    result = cli("audit", "verify")
    assert result.exit_code == exit_codes.AUDIT_BROKEN
    assert "audit chain verified" in result.stdout  # the chain itself is whole
    assert f"consent event {first} has no audit entry saying the same" in result.stdout
    named = "soft_opt_in" if column.startswith("soft_opt_in") else column
    assert f"records it with another {named})" in result.stdout


def test_a_soft_opt_in_added_to_an_event_is_seen(cli: Cli, ledger: Ledger) -> None:
    _record(ledger, "a@example.com", 1)
    first = _first_event(ledger)
    _edit_event(
        ledger,
        first,
        **{
            f"soft_opt_in_{n}": getattr(SOFT, n)
            for n in ("sale_ref", "similar_products", "refusal_at_collection", "refusal_in_messages")
        },
    )
    result = cli("audit", "verify")
    assert result.exit_code == exit_codes.AUDIT_BROKEN
    assert "records it with another soft_opt_in)" in result.stdout


def _as_older_entry(ledger: Ledger, uid: str, edit: Any) -> None:
    """Rewrites the entry as an older version wrote it (and its chain, so that it verifies)."""
    _as_owner_unprotected(ledger.engine)
    _rewrite_from(ledger.engine, _recorded_seq(ledger.engine, uid), edit)


def _uid(ledger: Ledger, email: str) -> str:
    (uid,) = ledger.subject_uids_for_email(email)
    return uid


def test_an_older_entry_is_compared_on_what_it_carries(cli: Cli, ledger: Ledger) -> None:
    _record(ledger, "a@example.com", 1)
    _record(ledger, "b@example.com", 2)

    def older(payload: dict[str, Any]) -> dict[str, Any]:
        # Before the evidence fields were put in the chain; the time spelt with +00:00.
        for name in ("notice_version", "double_opt_in_at", "evidence_ref"):
            del payload["what"][name]
        payload["what"]["event_time"] = payload["what"]["event_time"].replace("Z", "+00:00")
        return payload

    _as_older_entry(ledger, _uid(ledger, "a@example.com"), older)
    assert "consent events and audit entries agree: 2 events" in cli.ok("audit", "verify").stdout
    first = _first_event(ledger)
    _edit_event(ledger, first, notice_version="v9")  # not carried by its entry: nothing to compare
    assert "consent events and audit entries agree: 2 events" in cli.ok("audit", "verify").stdout
    _edit_event(ledger, first, event_time=datetime(2026, 3, 1, tzinfo=UTC))
    result = cli("audit", "verify")
    assert result.exit_code == exit_codes.AUDIT_BROKEN
    assert f"consent event {first} has no audit entry saying the same" in result.stdout
    assert "records it with another event_time)" in result.stdout


def test_an_older_entry_without_its_event_is_named(cli: Cli, ledger: Ledger) -> None:
    _record(ledger, "a@example.com", 1)

    def older(payload: dict[str, Any]) -> dict[str, Any]:
        for name in ("notice_version", "double_opt_in_at", "evidence_ref"):
            del payload["what"][name]
        return payload

    uid = _uid(ledger, "a@example.com")
    _as_older_entry(ledger, uid, older)
    seq = _recorded_seq(ledger.engine, uid)
    _as_owner_unprotected(ledger.engine)
    with ledger.engine.begin() as conn:
        conn.execute(consent_events.delete())
    result = cli("audit", "verify")
    assert result.exit_code == exit_codes.AUDIT_BROKEN
    assert f"audit entry {seq} records a consent event the ledger does not hold" in result.stdout
    assert json.loads(cli("audit", "verify", "--json").stdout)["events"]["ok"] is False
