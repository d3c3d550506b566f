"""An erased person's restriction (Art. 18) is never carried to anyone after the erasure (Art. 17:
their data is gone, so it restricts no one), and an erasure costs no more with more restricted
people in the ledger; on SQLite and PostgreSQL.

Before: a sync that met the erased person's record merged into another person's (or another
person's record showing the erased address) restricted that other person again, "carried from"
the erased person, and wrote it into the audit chain; and every erasure read the trail of every
restricted person of the ledger.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from sqlalchemy import event, select

from consentsync.ledger.schema import audit_entries
from consentsync.ledger.service import Ledger
from consentsync.subjects import search
from tests.conftest import Clock
from tests.integration.test_policy_s49_sync import _engine, _grant, _state
from tests.integration.test_policy_s50_address import _readdress, _two_people


def _restricted(ledger: Ledger, email: str) -> bool:
    (person,) = search(ledger, email, by="email")
    return bool(person["restricted"])


def _carried_entries(ledger: Ledger) -> list[dict[str, object]]:
    with ledger.engine.connect() as conn:
        payloads = conn.execute(
            select(audit_entries.c.payload).where(audit_entries.c.action == "subject.restricted")
        ).scalars()
        return [p for p in map(orjson.loads, payloads) if p["what"].get("carried_from")]


def _restricted_then_erased(ledger: Ledger, clock: Clock) -> None:
    clock.advance(minutes=1)
    ledger.restrict("b@example.com", restricted=True, reason="accuracy contested")
    clock.advance(minutes=1)
    ledger.erase("b@example.com", reason="Art. 17 request")
    clock.advance(minutes=1)


def test_a_merge_after_the_erasure_does_not_carry_the_erased_persons_restriction(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _two_people(ledger, config_path, clock)
    _restricted_then_erased(ledger, clock)
    org.merge("r2", "r1")  # B's record (still in the CRM) merged into A's after B's erasure
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert not _restricted(ledger, "a@example.com")
    assert _carried_entries(ledger) == []
    # The erasure itself still travels to A (a withdrawal at its time): A is suppressed, not
    # restricted.
    assert _state(ledger, "a@example.com")[1] is True


def test_a_record_taking_the_erased_address_is_not_restricted_by_the_erased_person(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _two_people(ledger, config_path, clock)
    _restricted_then_erased(ledger, clock)
    del org.records["r2"]
    _readdress(org, clock, "r1", "b@example.com")  # A's record now shows B's erased address
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert not _restricted(ledger, "a@example.com")
    assert _carried_entries(ledger) == []


def test_a_restricted_person_not_erased_still_carries_their_restriction(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The rule the fix keeps: a merge of a restricted (not erased) person's record restricts the
    survivor's person, carried from them."""
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    ledger.restrict("b@example.com", restricted=True, reason="accuracy contested")
    clock.advance(minutes=1)
    org.merge("r2", "r1")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _restricted(ledger, "a@example.com")
    assert len(_carried_entries(ledger)) == 1


def _statements(ledger: Ledger, action: object) -> int:
    """How many statements ``action()`` sends to the ledger."""
    count = 0

    def counted(*_args: object) -> None:
        nonlocal count
        count += 1

    event.listen(ledger.engine, "before_cursor_execute", counted)
    try:
        action()  # type: ignore[operator]
    finally:
        event.remove(ledger.engine, "before_cursor_execute", counted)
    return count


def test_an_erasure_reads_nothing_per_restricted_person(ledger: Ledger, clock: Clock) -> None:
    """An erasure's statements do not grow with the restricted people of the ledger (before: one
    read of each restricted person's trail per erasure, 725 s for 5,000 erasures beside 1,256
    restricted people)."""

    def erase_one(name: str) -> int:
        _grant(ledger, name, clock.now)
        clock.advance(minutes=1)
        return _statements(ledger, lambda: ledger.erase(name, reason="Art. 17 request"))

    few = erase_one("first@example.com")
    for n in range(40):
        address = f"r{n}@example.com"
        _grant(ledger, address, clock.now)
        ledger.restrict(address, restricted=True, reason="accuracy contested")
    clock.advance(minutes=1)
    many = erase_one("second@example.com")
    assert many <= few + 2, (few, many)
