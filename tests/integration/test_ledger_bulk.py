"""record_many keeps what its committed batches know about people for the next batches
(ledger.warm). These tests make the cache wrong on purpose: another writer between two batches,
the clock passing an expiry between two batches, a batch that fails. On SQLite the cache is on;
on PostgreSQL the same tests show the uncached path gives the same answers."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from consentsync import audit
from consentsync.domain import ConsentStatus, EffectiveState, LawfulBasis
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger, RecordRequest
from consentsync.ledger.warm import WarmSubjects
from tests.conftest import Clock
from tests.integration.helpers import consent_value

EMAIL = "ann@example.org"


def _request(
    ledger: Ledger, at: datetime, status: ConsentStatus = ConsentStatus.GRANTED, email: str = EMAIL
) -> RecordRequest:
    return RecordRequest(
        Identity(email=email), consent_value(status, at, ledger.clock(), notice_version="v1")
    )


def _recorded(ledger: Ledger, email: str = EMAIL) -> list[dict]:  # type: ignore[type-arg]
    uids = ledger.subject_uids_for_email(email)
    with ledger.engine.connect() as conn:
        return [e for e in audit.entries(conn, subject_uids=uids) if e["action"] == "consent.recorded"]


def _email_state(ledger: Ledger) -> dict:  # type: ignore[type-arg]
    view = ledger.subject_view(EMAIL)
    return next(p for p in view["purposes"] if p["purpose"] == "email_marketing" and p["channel"] == "email")


def test_a_write_by_another_connection_between_batches_is_seen_by_the_next_batch(ledger: Ledger) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)

    def stream() -> Iterator[RecordRequest]:
        yield _request(ledger, start)
        # Between the two batches, someone else objects to direct marketing (another connection:
        # record_many holds its own for the whole call).
        ledger.raise_objection(EMAIL, "email_marketing", direct_marketing=True)
        yield _request(ledger, start + timedelta(days=1))

    stats = ledger.record_many(stream(), batch_size=1)

    assert stats.recorded == 2
    second = _recorded(ledger)[-1]
    # Had the second batch trusted what the first left behind, "old" would say not suppressed.
    assert second["old"]["suppressed"] is True
    assert second["rule"] == "objection_direct_marketing"
    assert _email_state(ledger)["rule"] == "objection_direct_marketing"


def test_an_expiry_falling_between_two_batches_is_applied_to_the_second(ledger: Ledger, clock: Clock) -> None:
    granted_at = clock.now - timedelta(days=730) + timedelta(hours=1)  # expires in an hour

    def stream() -> Iterator[RecordRequest]:
        yield _request(ledger, granted_at)
        clock.advance(hours=2)
        # An older grant read again later: the consent is still the one that expired.
        yield _request(ledger, granted_at - timedelta(days=1))

    ledger.record_many(stream(), batch_size=1)

    first, second = _recorded(ledger)
    assert first["new"] == {"status": "granted", "basis": "consent", "suppressed": False}
    assert second["old"] == {"status": "expired", "basis": "consent", "suppressed": True}
    assert second["rule"] == "validity_expired"


def test_a_failed_batch_leaves_nothing_in_the_cache(ledger: Ledger) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    unknown = consent_value(ConsentStatus.GRANTED, start, ledger.clock(), purpose="no_such_purpose")
    bad = RecordRequest(Identity(email="bob@example.org"), unknown)
    with pytest.raises(Exception, match="unknown purpose"):
        ledger.record_many([_request(ledger, start), bad], batch_size=2)
    # Nothing of the failed batch was committed, so a new call starts from the ledger alone.
    ledger.record_many([_request(ledger, start + timedelta(days=1), ConsentStatus.WITHDRAWN)])
    only = _recorded(ledger)
    assert len(only) == 1
    assert only[0]["old"]["status"] == "applicable"
    assert _email_state(ledger)["status"] == "withdrawn"


def test_batches_of_one_and_one_batch_give_the_same_audit_trail(ledger: Ledger, clock: Clock) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    statuses = [ConsentStatus.GRANTED, ConsentStatus.WITHDRAWN, ConsentStatus.GRANTED, ConsentStatus.REFUSED]

    def requests(email: str) -> list[RecordRequest]:
        return [_request(ledger, start + timedelta(days=i), s, email) for i, s in enumerate(statuses)]

    ledger.record_many(requests(EMAIL), batch_size=1)
    ledger.record_many(requests("bob@example.org"), batch_size=100)
    trail = [(e["old"], e["new"], e["rule"]) for e in _recorded(ledger)]
    assert len(trail) == len(statuses)
    assert trail == [(e["old"], e["new"], e["rule"]) for e in _recorded(ledger, "bob@example.org")]
    assert [new["status"] for _old, new, _rule in trail] == ["granted", "withdrawn", "granted", "refused"]


def test_the_cache_drops_a_cached_state_whose_expiry_passed() -> None:
    computed_at = datetime(2026, 1, 1, tzinfo=UTC)
    state = EffectiveState(
        "email_marketing",
        "email",
        ConsentStatus.GRANTED,
        LawfulBasis.CONSENT,
        False,
        "latest_event_time",
        expires_at=computed_at + timedelta(days=1),
    )
    warm = WarmSubjects()
    key = (1, "email_marketing", "email")
    warm.effective[key] = (state, computed_at)
    assert warm.effective_at(key, computed_at + timedelta(hours=23)) is state
    assert warm.effective_at(key, computed_at + timedelta(days=1)) is None
    assert warm.effective_at(key, computed_at - timedelta(seconds=1)) is None  # the clock went back
    warm.effective[key] = (state, computed_at + timedelta(days=2))  # already expired when computed
    assert warm.effective_at(key, computed_at + timedelta(days=3)) is state


def _people(ledger: Ledger, count: int, start: datetime) -> Iterator[RecordRequest]:
    for person in range(count):
        yield _request(ledger, start + timedelta(minutes=person), email=f"p{person}@example.org")


def test_record_many_pauses_the_cycle_collector_and_leaves_no_cycles_per_event(ledger: Ledger) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    ledger.record_many(_people(ledger, 50, start), batch_size=50)
    seen: list[bool] = []

    def watched() -> Iterator[RecordRequest]:
        for request in _people(ledger, 300, start + timedelta(days=1)):
            seen.append(gc.isenabled())
            yield request

    gc.collect()
    ledger.record_many(watched(), batch_size=150)
    assert seen and not any(seen), "the collector ran during the bulk call"
    assert gc.isenabled()
    few = gc.collect()
    # Ten times the events in the same number of batches: cycles do not grow with the events.
    ledger.record_many(_people(ledger, 3000, start + timedelta(days=2)), batch_size=1500)
    assert gc.collect() <= few + 10

    gc.disable()
    try:
        ledger.record_many(_people(ledger, 10, start + timedelta(days=3)))
        assert not gc.isenabled(), "a caller's own pause was undone"
    finally:
        gc.enable()
