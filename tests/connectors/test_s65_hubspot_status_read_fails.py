"""bb65 fix-conn item 2: before an unsubscribe that pushes no legal basis, the connector reads the
basis HubSpot holds with the status (a v4 status read), to send it back. "A failed look-up never
holds back a person's no" (``_held_bases``), yet a status read that failed after its retries (a
5xx) failed the whole write group before any v3 unsubscribe was sent. A look-up that fails now
leaves the unsubscribes to go with ``default_legal_basis``; an error that is the run's (a rate
limit, the token, a permission, the day's budget) still stops the write, as it stops any call."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.sandbox.harness import HubSpotHarness

from consentsync.sdk import BudgetExhausted, ConnectorError, RecordUpdate

EMAIL = "held@example.test"


@pytest.fixture
def harness() -> Iterator[HubSpotHarness]:
    made = HubSpotHarness(merges="new")
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _held_contact(harness: HubSpotHarness) -> str:
    """A contact subscribed to 1001 under a basis other than ``default_legal_basis``."""
    portal = harness.sandbox.portal
    at = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(microsecond=0)
    contact = portal.create({"email": EMAIL}, at=at)
    portal.set_status(
        EMAIL,
        "1001",
        "SUBSCRIBED",
        legal_basis="LEGITIMATE_INTEREST_CLIENT",
        explanation="form",
        source="Form",
        at=at + dt.timedelta(minutes=1),
    )
    return str(contact)


def _unsubscribe(contact: str) -> list[RecordUpdate]:
    return [RecordUpdate("contacts", contact, {"subscription_1001": "UNSUBSCRIBED"})]


def _connector(harness: HubSpotHarness, **extra: Any) -> HubSpotConnector:
    return HubSpotConnector("hs", harness.connector_settings(max_attempts=2, max_rate_limit_wait=0, **extra))


@pytest.mark.parametrize("status", [500, 503])
def test_a_status_read_that_fails_does_not_hold_back_the_unsubscribe(
    harness: HubSpotHarness, status: int
) -> None:
    contact = _held_contact(harness)
    harness.sandbox.faults.update(error_rate=1.0, error_status=status, error_kinds={"status_batch_read"})
    with structlog.testing.capture_logs() as logs:
        results = _connector(harness).write(_unsubscribe(contact))
    assert [(r.ok, r.error_code) for r in results] == [(True, None)], results
    assert harness.sandbox.calls["status_batch_read"] >= 1  # looked up, and failed
    held = harness.sandbox.portal.status(EMAIL, "1001")
    # The no is in, under the configured default (the basis held could not be read).
    assert (held.status, held.legal_basis) == ("UNSUBSCRIBED", "CONSENT_WITH_NOTICE")
    warned = [entry for entry in logs if entry["event"] == "hubspot.held_basis_unread"]
    assert len(warned) == 1 and warned[0]["records"] == [contact]
    assert "@" not in repr(warned), "an address reached the log"


@pytest.mark.parametrize("status", [401, 403, 429])
def test_an_error_of_the_run_still_stops_the_write(harness: HubSpotHarness, status: int) -> None:
    """A limit, the token, a permission: the next call would be refused alike. Nothing is sent."""
    contact = _held_contact(harness)
    harness.sandbox.faults.update(error_rate=1.0, error_status=status, error_kinds={"status_batch_read"})
    with pytest.raises(ConnectorError):
        _connector(harness).write(_unsubscribe(contact))
    assert harness.sandbox.calls["unsubscribe"] == 0
    assert harness.sandbox.portal.status(EMAIL, "1001").status == "SUBSCRIBED"


def test_the_basis_held_is_sent_back_when_the_status_read_answers(harness: HubSpotHarness) -> None:
    contact = _held_contact(harness)
    results = _connector(harness).write(_unsubscribe(contact))
    assert [(r.ok, r.error_code) for r in results] == [(True, None)], results
    held = harness.sandbox.portal.status(EMAIL, "1001")
    assert (held.status, held.legal_basis) == ("UNSUBSCRIBED", "LEGITIMATE_INTEREST_CLIENT")


def test_the_days_budget_spent_on_the_look_up_stops_the_write(harness: HubSpotHarness) -> None:
    """The day's limit (429 DAILY) reached by the status read: the write stops, nothing sent."""
    contact = _held_contact(harness)
    # The subscription definitions and the address read pass; the status read is refused.
    harness.sandbox.faults.update(request_limit_after=3)
    with pytest.raises(BudgetExhausted) as stopped:
        _connector(harness).write(_unsubscribe(contact))
    assert str(stopped.value).startswith("subscription statuses: 429 DAILY")
    assert harness.sandbox.calls["unsubscribe"] == 0
    assert harness.sandbox.portal.status(EMAIL, "1001").status == "SUBSCRIBED"
