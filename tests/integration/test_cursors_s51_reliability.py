"""`consentsync state reset CONNECTOR ledger --to TIME` after the ledger's clock stepped back (or
with writers on hosts whose clocks differ): every state change recorded at or after the time is
examined again, however the ids and the stamps of the changes interleave."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import state_changes
from consentsync.ledger.service import Ledger
from consentsync.sync import cursors
from consentsync.sync.engine import LEDGER_FEED
from tests.conftest import Clock
from tests.integration.helpers import consent_value

START = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)


def _record(ledger: Ledger, clock: Clock, email: str, at: datetime) -> None:
    clock.now = at
    ledger.record(Identity(email=email), consent_value(ConsentStatus.WITHDRAWN, at, at))


@pytest.mark.parametrize(
    "stamps",
    [
        # The clock stepped back by seven minutes after the second change (an NTP correction).
        [0, 5, -2, 6],
        # Two writers, the second's host two minutes behind, recording in turn.
        [0, 3, 1, 4, 2, 5],
    ],
)
def test_a_feed_reset_to_a_time_examines_every_change_recorded_since_however_the_clocks_ran(
    ledger: Ledger, clock: Clock, stamps: list[int]
) -> None:
    for number, minutes in enumerate(stamps):
        _record(ledger, clock, f"person{number}@example.com", START + timedelta(minutes=minutes))
    to = START + timedelta(minutes=2, seconds=30)
    clock.now = START + timedelta(minutes=10)
    cursors.reset(ledger.engine, "crm", LEDGER_FEED, to=to, actor="ops-anna", clock=clock)
    place = cursors.show(ledger.engine, "crm", LEDGER_FEED)[0]["position"]["state_change_id"]
    with ledger.engine.connect() as conn:
        changes = conn.execute(select(state_changes.c.id, state_changes.c.created_at)).all()
    since = sorted(change.id for change in changes if change.created_at >= to)
    assert since, "the test recorded nothing after the reset's time"
    skipped = [number for number in since if number <= place]
    assert skipped == [], f"changes {skipped} recorded after {to} lie behind the feed's place {place}"
    # Not from the beginning either: the changes before the first one since are not read again.
    assert place == since[0] - 1


def test_a_feed_reset_to_a_time_after_every_change_starts_at_the_end(ledger: Ledger, clock: Clock) -> None:
    for number in range(3):
        _record(ledger, clock, f"person{number}@example.com", START + timedelta(minutes=number))
    clock.now = START + timedelta(minutes=10)
    cursors.reset(
        ledger.engine, "crm", LEDGER_FEED, to=START + timedelta(minutes=5), actor="ops-anna", clock=clock
    )
    with ledger.engine.connect() as conn:
        top = max(conn.execute(select(state_changes.c.id)).scalars())
    assert cursors.show(ledger.engine, "crm", LEDGER_FEED)[0]["position"]["state_change_id"] == top
