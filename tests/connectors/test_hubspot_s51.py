"""HubSpot against its sandbox (session 51): when a contact opted out of all email said its no."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from consentsync_hubspot.sandbox.server import HubSpotApiError, iso_ms

from consentsync.sdk import Cursor
from tests.connectors.against_sandbox import read_until

FIELDS = ["email", "subscription_1001", "subscription_1001_timestamp"]


def _read_one(hubspot: HubSpotHarness, contact: str) -> dict[str, Any]:
    conn = HubSpotConnector("hs-test", hubspot.connector_settings())
    records = conn.read_changes("contacts", FIELDS, Cursor(), read_until())
    (record,) = [r for r in records if r.record_id == contact]
    return dict(record.fields)


def test_an_opt_out_of_all_after_an_older_unsubscribe_is_dated_by_the_opt_out(
    hubspot: HubSpotHarness,
) -> None:
    """The contact unsubscribed from the type three years ago and opted out of all email a week
    ago. The type reads UNSUBSCRIBED as of the latest no (the opt-out): dated by the old
    unsubscribe, a consent the person gave between the two would outrank the later opt-out."""
    portal = hubspot.sandbox.portal
    (contact,) = hubspot.seed(1)
    email = portal.get(contact)["email"]
    now = portal.now()
    portal.set_status(email, "1001", "UNSUBSCRIBED", at=now - dt.timedelta(days=3 * 365))
    portal.unsubscribe_all(email, at=now - dt.timedelta(days=7))
    fields = _read_one(hubspot, contact)
    opted_out_at = portal.opted_out_of_all(email)
    assert opted_out_at is not None
    assert fields["subscription_1001"] == "UNSUBSCRIBED"
    assert fields["subscription_1001_timestamp"] == iso_ms(opted_out_at)


def test_an_unsubscribe_after_the_opt_out_of_all_keeps_its_own_time(hubspot: HubSpotHarness) -> None:
    portal = hubspot.sandbox.portal
    (contact,) = hubspot.seed(1)
    email = portal.get(contact)["email"]
    now = portal.now()
    portal.unsubscribe_all(email, at=now - dt.timedelta(days=30))
    portal.set_status(email, "1001", "UNSUBSCRIBED", source="API", at=now - dt.timedelta(days=2))
    fields = _read_one(hubspot, contact)
    held = portal.status(email, "1001")
    assert held is not None and held.status == "UNSUBSCRIBED"
    assert fields["subscription_1001"] == "UNSUBSCRIBED"
    assert fields["subscription_1001_timestamp"] == iso_ms(held.timestamp)


def test_an_opt_out_of_all_of_unknown_time_leaves_an_older_unsubscribe_undated(
    hubspot: HubSpotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the wide-status read the opt-out's time is unknown: it may be later than the
    type's own unsubscribe, so the no is undated (read as late as possible), not dated by the
    older unsubscribe."""

    def not_served(_request: Any) -> Any:
        raise HubSpotApiError(404, "OBJECT_NOT_FOUND", "No route")

    monkeypatch.setattr(hubspot.sandbox, "_h_wide_status_batch_read", not_served)
    portal = hubspot.sandbox.portal
    (contact,) = hubspot.seed(1)
    email = portal.get(contact)["email"]
    now = portal.now()
    portal.set_status(email, "1001", "UNSUBSCRIBED", at=now - dt.timedelta(days=3 * 365))
    portal.unsubscribe_all(email, at=now - dt.timedelta(days=7))
    fields = _read_one(hubspot, contact)
    assert fields["subscription_1001"] == "UNSUBSCRIBED"
    assert fields["subscription_1001_timestamp"] is None
