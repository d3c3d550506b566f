"""What applying the expiries due costs each sync run: a range of the partial index of consents
with an expiry, never a read of the whole ledger; a consent its expiry cannot move is passed,
not looked up again forever. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import event, update

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import consent_states
from consentsync.ledger.service import Ledger, RecordRequest
from tests.conftest import Clock
from tests.integration.helpers import consent_value
from tests.integration.test_ledger_query_plans import _capture, _whole_table_reads

VALIDITY_DAYS = 730  # email marketing's in the starter config


def _people(ledger: Ledger, clock: Clock, due: int, current: int) -> None:
    """``due`` people whose grant is past its validity, ``current`` whose grant is within it, and
    as many who withdrew long ago (no expiry): the consents the lookup must not read."""
    old = clock.now - timedelta(days=VALIDITY_DAYS + 5)
    recent = clock.now - timedelta(days=10)
    requests = [
        RecordRequest(
            Identity(email=f"due{n}@example.org"), consent_value(ConsentStatus.GRANTED, old, clock.now)
        )
        for n in range(due)
    ]
    requests += [
        RecordRequest(
            Identity(email=f"current{n}@example.org"), consent_value(ConsentStatus.GRANTED, recent, clock.now)
        )
        for n in range(current)
    ]
    requests += [
        RecordRequest(
            Identity(email=f"gone{n}@example.org"), consent_value(ConsentStatus.WITHDRAWN, old, clock.now)
        )
        for n in range(current)
    ]
    ledger.record_many(requests)


def test_the_expiry_lookup_reads_an_index_range_not_the_ledger(ledger: Ledger, clock: Clock) -> None:
    _people(ledger, clock, due=12, current=30)
    statements = _capture(ledger)
    try:
        # Five a transaction: the later batches' lookups start past the last one's key.
        assert ledger.expire_due(batch_size=5).recorded == 12
    finally:
        event.remove(ledger.engine, "before_cursor_execute", statements.append_statement)
    lookups = [(sql, params) for sql, params in statements if "FROM consent_states" in sql and "LIMIT" in sql]
    assert len(lookups) == 3, [sql for sql, _ in lookups]
    assert _whole_table_reads(ledger, statements) == []
    if ledger.engine.dialect.name == "sqlite":
        raw = ledger.engine.raw_connection()
        try:
            for sql, params in lookups:
                plan = " | ".join(row[3] for row in raw.cursor().execute(f"EXPLAIN QUERY PLAN {sql}", params))
                assert "ix_consent_states_expires_at" in plan, plan
        finally:
            raw.close()
    assert ledger.expire_due().recorded == 0  # applied once


def test_a_consent_its_expiry_does_not_move_is_passed_not_looked_up_forever(
    ledger: Ledger, clock: Clock
) -> None:
    """A stored state still "granted" past its end although its expiry is recorded (the event is
    a duplicate, the state stays): the lookup moves past it by key and the call ends, the other
    consents due expired."""
    _people(ledger, clock, due=3, current=0)
    assert ledger.expire_due().recorded == 3
    with ledger.engine.begin() as conn:
        stuck = conn.execute(
            update(consent_states)
            .where(consent_states.c.subject_id == consent_states.c.subject_id)
            .values(status=ConsentStatus.GRANTED.value, expires_at=clock.now - timedelta(days=5))
        ).rowcount
    assert stuck == 3
    done: list[int] = []
    worker = threading.Thread(
        target=lambda: done.append(ledger.expire_due(batch_size=1).recorded), daemon=True
    )
    worker.start()
    worker.join(timeout=30)
    assert done == [0], "the expiry step kept looking up the same consents"
