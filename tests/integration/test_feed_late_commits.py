"""A change in the ledger that commits after a later one is still passed on: two real database
sessions, one holding its change uncommitted while the other's commits and a connector reads the
feed (PostgreSQL hands out feed ids at insert, not at commit).

consentsync's own writers queue on the writer lock (ledger/engine.py), so among them the case no
longer arises; a session outside it still can (another version mid-upgrade, a repair by hand),
and the feed must not skip its change: the holder below writes through an engine of its own."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, insert, select, text

from consentsync.domain import ConsentStatus, canonical_json
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import state_changes, subjects
from consentsync.ledger.service import Ledger
from consentsync.sync.feed import FeedPlace, read_feed
from tests.integration.test_ledger import _evidence


def _follow(ledger: Ledger, place: FeedPlace) -> tuple[set[int], FeedPlace]:
    with ledger.engine.begin() as conn:
        rows, moved = read_feed(conn, place, 100)
    return {subject_id for _, subject_id in rows}, moved


def _subject(ledger: Ledger, email: str) -> int:
    ledger.record(Identity(email=email), _evidence(ledger))
    with ledger.engine.connect() as conn:
        return conn.execute(select(subjects.c.id).order_by(subjects.c.id.desc()).limit(1)).scalar_one()


# SQLite commits one writer at a time, in id order: the case cannot arise there.
@pytest.mark.postgres
@pytest.mark.parametrize("ledger_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("commit", [True, False], ids=["committed late", "rolled back"])
def test_a_change_committed_after_a_later_one_is_still_read(ledger: Ledger, commit: bool) -> None:
    late, early = _subject(ledger, "late@example.com"), _subject(ledger, "early@example.com")
    _, place = _follow(ledger, FeedPlace())
    outside = create_engine(ledger.engine.url)
    with outside.connect() as holder:
        transaction = holder.begin()
        # As a ledger writer does: its other writes first (it holds a transaction id), then the
        # feed row.
        holder.execute(text("SELECT 1 FROM subjects WHERE id = :id FOR UPDATE"), {"id": late})
        holder.execute(insert(state_changes).values(subject_id=late, created_at=ledger.clock()))
        try:
            ledger.record(
                Identity(email="early@example.com"),
                _evidence(ledger, ConsentStatus.WITHDRAWN, at=ledger.clock()),
            )
            seen, place = _follow(ledger, place)
            assert seen == {early}
        finally:
            (transaction.commit if commit else transaction.rollback)()
    outside.dispose()
    seen, place = _follow(ledger, place)
    assert seen == ({late} if commit else set())
    # A rolled-back change's id is given up once no transaction that could hold it is running
    # (another test's session on the same server may hold the horizon back for a moment).
    deadline = time.monotonic() + 10
    while place.gaps and time.monotonic() < deadline:
        time.sleep(0.1)
        _, place = _follow(ledger, place)
    assert place.gaps == {}
    assert canonical_json({"state_change_id": place.last}) == place.to_json()
