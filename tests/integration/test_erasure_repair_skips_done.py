"""``Ledger.erase_absorbed`` (the repair of erasures made before bf255f8, once per ledger) opens a
write transaction only for an erased person holding someone absorbed into them who is not erased
yet (session 62 review of f1a636f): it took one for every erased person with a
``subject.absorbed`` entry, each locking the chain's head, in every process opening the ledger
before the marker row was written, though every erasure since bf255f8 left nothing to do."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, select

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import ConsentStatus
from consentsync.ledger import service
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import audit_head, ledger_settings, subjects
from consentsync.ledger.service import ABSORBED_ERASED_SETTING, Ledger
from tests.conftest import Clock
from tests.integration.helpers import consent_value

HOLDERS = 5


def _person(ledger: Ledger, clock: Clock, email: str) -> tuple[int, str]:
    outcome = ledger.record(
        Identity(email=email),
        consent_value(
            ConsentStatus.GRANTED, clock.now - timedelta(hours=1), clock.now, evidence_ref="form:1"
        ),
    )
    return outcome.subject_id, outcome.subject_uid


def _absorbed(ledger: Ledger, clock: Clock, holder: tuple[int, str], other: tuple[int, str]) -> None:
    """``other`` absorbed into ``holder``, as the holder's trail says it (what ledger/absorb.py
    writes; the erasures read only that entry)."""
    with ledger.engine.begin() as conn:
        record = AuditRecord(
            "subject.absorbed", {"absorbed": other[1]}, subject_uid=holder[1], subject_id=holder[0]
        )
        audit.append(conn, [record], clock.now)


def _erased_at(ledger: Ledger, uid: str) -> Any:
    with ledger.engine.connect() as conn:
        return conn.execute(select(subjects.c.erased_at).where(subjects.c.uid == uid)).scalar_one()


def _head(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(audit_head.c.seq)).scalar_one())


def test_holders_whose_absorbed_people_are_all_erased_cost_no_transaction(
    ledger: Ledger, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five holders erased by this version (their absorbed people with them) and one erased as
    before bf255f8 (its absorbed person left). The repair, run again as a process opening the
    ledger before its marker: one write transaction for that holder, one for the marker, none
    for the five; the person left is erased."""
    for index in range(HOLDERS):
        holder = _person(ledger, clock, f"holder{index}@example.test")
        _absorbed(ledger, clock, holder, _person(ledger, clock, f"absorbed{index}@example.test"))
        ledger.erase(f"holder{index}@example.test", reason="Art. 17 request")
    holder = _person(ledger, clock, "old@example.test")
    left = _person(ledger, clock, "left@example.test")
    _absorbed(ledger, clock, holder, left)
    with monkeypatch.context() as older:
        older.setattr(service, "absorbed_into", lambda _conn, _holders: [])  # erase before bf255f8
        ledger.erase("old@example.test", reason="Art. 17 request")
    assert _erased_at(ledger, left[1]) is None
    with ledger.engine.begin() as conn:  # as an older version left it: the step not done
        conn.execute(delete(ledger_settings).where(ledger_settings.c.name == ABSORBED_ERASED_SETTING))

    commits: list[object] = []

    def committed(conn: object) -> None:
        commits.append(conn)

    head = _head(ledger)
    event.listen(ledger.engine, "commit", committed)
    try:
        assert ledger.erase_absorbed() == 1
        assert len(commits) == 2  # the holder left, then the marker
        assert _erased_at(ledger, left[1]) is not None
        assert _head(ledger) > head

        # All erased now: a process opening before the marker commits the marker only.
        with ledger.engine.begin() as conn:
            conn.execute(delete(ledger_settings).where(ledger_settings.c.name == ABSORBED_ERASED_SETTING))
        commits.clear()
        head = _head(ledger)
        assert ledger.erase_absorbed() == 0
        assert (len(commits), _head(ledger)) == (1, head)
    finally:
        event.remove(ledger.engine, "commit", committed)
