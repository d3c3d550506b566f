"""HubSpot (session 63, F2): "already ..." counts as done only for the state that was asked for.

HubSpot's v3 answers a change to the state an address holds already with 400 VALIDATION_ERROR
"<email> is already subscribed to subscription <id>" (as integrators quote it, e.g. in
HubSpot client mocks and logged answers; "is already unsubscribed from subscription <id>" for an
unsubscribe). The connector took any "already subscribed" or "already unsubscribed" as success,
whatever it had sent: a subscribe refused with text naming "already unsubscribed" counted as a
yes HubSpot held, and the ledger believed a consent HubSpot never accepted. The sandbox answered
200 with the status unchanged; it now answers as HubSpot does.
"""

from __future__ import annotations

from collections.abc import Iterator
from unittest import mock

import pytest
from consentsync_hubspot.connector import ERRORS, REFUSES_RESUBSCRIBE, HubSpotConnector
from consentsync_hubspot.sandbox.harness import MARKETING, HubSpotHarness

from consentsync.sdk import ConnectorError, RecordUpdate, WriteResult

ADDRESS = "already.case@example.test"


@pytest.fixture
def harness() -> Iterator[HubSpotHarness]:
    made = HubSpotHarness()
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _answered(harness: HubSpotHarness, state: str, message: str) -> WriteResult:
    """The connector's answer for one v3 change that HubSpot refuses with 400 ``message``."""
    conn = HubSpotConnector("hs-test", harness.connector_settings())
    action = "subscribe" if state == "SUBSCRIBED" else "unsubscribe"
    refused = ConnectorError(
        f"{action}: 400 VALIDATION_ERROR {message}", ERRORS.classify(400, "VALIDATION_ERROR")
    )
    with mock.patch.object(conn, "_request", side_effect=refused):
        return conn._set_subscription("101", ADDRESS, MARKETING, state, None)


def test_a_subscribe_refused_as_already_unsubscribed_is_the_resubscribe_refusal(
    harness: HubSpotHarness,
) -> None:
    for message in (
        f"{ADDRESS} is already unsubscribed from subscription {MARKETING}",
        # HubSpot's v1 API words its refusal so; v3's wording was not found: either is a refusal.
        "You cannot subscribe an unsubscribed address.",
    ):
        result = _answered(harness, "SUBSCRIBED", message)
        assert (result.ok, result.error_code, result.retryable) == (False, REFUSES_RESUBSCRIBE, False), (
            message
        )


def test_already_counts_as_done_only_for_the_state_sent(harness: HubSpotHarness) -> None:
    subscribed = f"{ADDRESS} is already subscribed to subscription {MARKETING}"
    unsubscribed = f"{ADDRESS} is already unsubscribed from subscription {MARKETING}"
    assert _answered(harness, "SUBSCRIBED", subscribed).ok
    assert _answered(harness, "UNSUBSCRIBED", unsubscribed).ok
    wrong = _answered(harness, "UNSUBSCRIBED", subscribed)
    assert (wrong.ok, wrong.error_code) == (False, "VALIDATION_ERROR")
    assert ADDRESS not in str(wrong.message), "the address is kept out of the answer"
    assert _answered(harness, "SUBSCRIBED", unsubscribed).ok is False


def test_the_sandbox_answers_a_change_to_the_state_held_as_hubspot_does(harness: HubSpotHarness) -> None:
    (contact,) = harness.seed(1)
    email = str(harness.stored(contact)["email"])
    portal = harness.sandbox.portal
    portal.set_status(email, MARKETING, "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", explanation="form")
    session = harness.sandbox.requests_session()
    session.headers["Authorization"] = f"Bearer {harness.sandbox.credentials.access_token}"
    base = f"{harness.sandbox.api_url}/communication-preferences/v3"
    body = {
        "emailAddress": email,
        "subscriptionId": MARKETING,
        "legalBasis": "CONSENT_WITH_NOTICE",
        "legalBasisExplanation": "test",
    }
    again = session.post(f"{base}/subscribe", json=body)
    assert again.status_code == 400, again.text
    assert (again.json()["category"], again.json()["message"]) == (
        "VALIDATION_ERROR",
        f"{email} is already subscribed to subscription {MARKETING}",
    )
    assert session.post(f"{base}/unsubscribe", json=body).status_code == 200
    twice = session.post(f"{base}/unsubscribe", json=body)
    assert (twice.status_code, twice.json()["message"]) == (
        400,
        f"{email} is already unsubscribed from subscription {MARKETING}",
    )
    # Sent again (a run stopped after HubSpot applied it): the connector answers it done.
    conn = HubSpotConnector("hs-test", harness.connector_settings())
    (again,) = conn.write([RecordUpdate("contacts", contact, {f"subscription_{MARKETING}": "UNSUBSCRIBED"})])
    assert again.ok, again
