"""HubSpot against its sandbox (session 51): when a contact opted out of all email said its no."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from consentsync_hubspot.sandbox.server import HubSpotApiError, iso_ms

from consentsync.sdk import Cursor
from tests.connectors.against_sandbox import read_until

FIELDS = ["email", "subscription_1001", "subscription_1001_timestamp"]


@pytest.fixture
def harness() -> Iterator[HubSpotHarness]:
    made = HubSpotHarness()
    made.start()
    yield made
    made.stop()


def _read_one(harness: HubSpotHarness, contact: str) -> dict[str, Any]:
    conn = HubSpotConnector("hs-test", harness.connector_settings())
    records = conn.read_changes("contacts", FIELDS, Cursor(), read_until())
    (record,) = [r for r in records if r.record_id == contact]
    return dict(record.fields)


def test_an_opt_out_of_all_after_an_older_unsubscribe_is_dated_by_the_opt_out(
    harness: HubSpotHarness,
) -> None:
    """The contact unsubscribed from the type three years ago and opted out of all email a week
    ago. The type reads UNSUBSCRIBED as of the latest no (the opt-out): dated by the old
    unsubscribe, a consent the person gave between the two would outrank the later opt-out."""
    portal = harness.sandbox.portal
    (contact,) = harness.seed(1)
    email = portal.get(contact)["email"]
    now = portal.now()
    portal.set_status(email, "1001", "UNSUBSCRIBED", at=now - dt.timedelta(days=3 * 365))
    portal.unsubscribe_all(email, at=now - dt.timedelta(days=7))
    fields = _read_one(harness, contact)
    opted_out_at = portal.opted_out_of_all(email)
    assert opted_out_at is not None
    assert fields["subscription_1001"] == "UNSUBSCRIBED"
    assert fields["subscription_1001_timestamp"] == iso_ms(opted_out_at)


def test_an_unsubscribe_after_the_opt_out_of_all_keeps_its_own_time(harness: HubSpotHarness) -> None:
    portal = harness.sandbox.portal
    (contact,) = harness.seed(1)
    email = portal.get(contact)["email"]
    now = portal.now()
    portal.unsubscribe_all(email, at=now - dt.timedelta(days=30))
    portal.set_status(email, "1001", "UNSUBSCRIBED", source="API", at=now - dt.timedelta(days=2))
    fields = _read_one(harness, contact)
    held = portal.status(email, "1001")
    assert held is not None and held.status == "UNSUBSCRIBED"
    assert fields["subscription_1001"] == "UNSUBSCRIBED"
    assert fields["subscription_1001_timestamp"] == iso_ms(held.timestamp)


def test_an_opt_out_of_all_of_unknown_time_leaves_an_older_unsubscribe_undated(
    harness: HubSpotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the wide-status read the opt-out's time is unknown: it may be later than the
    type's own unsubscribe, so the no is undated (read as late as possible), not dated by the
    older unsubscribe."""

    def not_served(_request: Any) -> Any:
        raise HubSpotApiError(404, "OBJECT_NOT_FOUND", "No route")

    monkeypatch.setattr(harness.sandbox, "_h_wide_status_batch_read", not_served)
    portal = harness.sandbox.portal
    (contact,) = harness.seed(1)
    email = portal.get(contact)["email"]
    now = portal.now()
    portal.set_status(email, "1001", "UNSUBSCRIBED", at=now - dt.timedelta(days=3 * 365))
    portal.unsubscribe_all(email, at=now - dt.timedelta(days=7))
    fields = _read_one(harness, contact)
    assert fields["subscription_1001"] == "UNSUBSCRIBED"
    assert fields["subscription_1001_timestamp"] is None
