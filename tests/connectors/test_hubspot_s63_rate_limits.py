"""HubSpot (session 63, F3): the burst limit is a rolling ten-second window, not a second.

HubSpot's usage guidelines (https://developers.hubspot.com/docs/developer-tooling/platform/
usage-guidelines) limit an app to a number of calls per ten seconds (100, or 190 on Professional
and Enterprise), answer more with 429 ``policyName`` ``TEN_SECONDLY_ROLLING``, and describe the
window with ``X-HubSpot-RateLimit-Max``, ``-Remaining`` and ``-Interval-Milliseconds`` (10000).
HubSpot's own Node client waits ten seconds on that policy and one second on search's "You have
reached your secondly limit." The connector waited one second on every 429 without Retry-After
(five attempts: about four seconds, all inside the same window, then the run failed) and paced
by ``-Secondly-Remaining`` only. The sandbox modelled a one-second window.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from consentsync_hubspot.connector import HubSpotConnector
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from consentsync_hubspot.sandbox.server import HubSpotSandbox

from consentsync.sdk import Action

#: A short window, so that the tests wait seconds, not tens of them.
WINDOW_MS = 3000
BURST = 4


@pytest.fixture
def harness() -> Iterator[HubSpotHarness]:
    made = HubSpotHarness(burst_limit=BURST, burst_interval_ms=WINDOW_MS)
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _throttled(body: bytes, **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = 429
    response._content = body
    response.headers["Content-Type"] = "application/json"
    response.headers.update(headers)
    return response


def test_a_429_is_waited_out_for_the_window_it_names(harness: HubSpotHarness) -> None:
    conn = HubSpotConnector("hs-test", harness.connector_settings())
    rolling = (
        b'{"status":"error","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING",'
        b'"message":"You have reached your ten_secondly_rolling limit."}'
    )
    search = b'{"status":"error","errorType":"RATE_LIMIT","message":"You have reached your secondly limit."}'
    waits = {
        "rolling, no headers": conn._classified("list", _throttled(rolling)).retry_after,
        "rolling, its window": conn._classified(
            "list", _throttled(rolling, **{"X-HubSpot-RateLimit-Interval-Milliseconds": "4000"})
        ).retry_after,
        "no policy named": conn._classified("list", _throttled(b'{"status":"error"}')).retry_after,
        "search": conn._classified("search", _throttled(search)).retry_after,
        "Retry-After": conn._classified("list", _throttled(rolling, **{"Retry-After": "2"})).retry_after,
    }
    assert waits == {
        "rolling, no headers": 10.0,
        "rolling, its window": 4.0,
        "no policy named": 10.0,
        "search": 1.0,
        "Retry-After": 2.0,
    }
    error = conn._classified("list", _throttled(rolling))
    assert error.action is Action.RATE_LIMITED and error.rule.reason == "ten-second API limit reached"


def test_the_sandbox_counts_a_rolling_window_and_says_so() -> None:
    with HubSpotSandbox(burst_limit=3, burst_interval_ms=WINDOW_MS, search_per_second=100) as server:
        session = server.requests_session()
        session.headers["Authorization"] = f"Bearer {server.credentials.access_token}"
        url = f"{server.api_url}/crm/v3/objects/contacts"
        answers = [session.get(url) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        first = answers[0].headers
        assert (
            first["X-HubSpot-RateLimit-Max"],
            first["X-HubSpot-RateLimit-Remaining"],
            first["X-HubSpot-RateLimit-Interval-Milliseconds"],
        ) == ("3", "2", str(WINDOW_MS))
        refused = answers[3]
        assert refused.json()["policyName"] == "TEN_SECONDLY_ROLLING"
        assert refused.json()["message"] == "You have reached your ten_secondly_rolling limit."
        assert refused.headers["X-HubSpot-RateLimit-Remaining"] == "0"
        assert "Retry-After" not in refused.headers
        assert server.rejections["TEN_SECONDLY_ROLLING"] == 1
        time.sleep(1.2)  # a second later the window still holds the three calls
        assert session.get(url).status_code == 429
        time.sleep(WINDOW_MS / 1000)
        assert session.get(url).status_code == 200


def test_the_connector_paces_to_the_window_it_is_told(harness: HubSpotHarness) -> None:
    """Calls past the window's allowance wait for it (``-Remaining`` at 0): none is refused."""
    conn = HubSpotConnector("hs-test", harness.connector_settings(max_attempts=2))
    started = time.monotonic()
    for _ in range(BURST + 2):
        conn.check()
    assert harness.sandbox.rejections["TEN_SECONDLY_ROLLING"] == 0
    assert time.monotonic() - started >= WINDOW_MS / 1000 - 0.5


def test_a_window_another_app_filled_is_waited_out_not_given_up(harness: HubSpotHarness) -> None:
    """Another integration on the same token spent the window before the connector's first
    call: the 429 is waited out for the window (not a second at a time, which would spend
    every attempt inside it and fail the run)."""
    conn = HubSpotConnector("hs-test", harness.connector_settings(max_attempts=3))
    other = harness.sandbox.requests_session()
    other.headers["Authorization"] = f"Bearer {harness.sandbox.credentials.access_token}"
    for _ in range(BURST):
        assert other.get(f"{harness.sandbox.api_url}/crm/v3/objects/contacts").status_code == 200
    conn.check()
    assert harness.sandbox.rejections["TEN_SECONDLY_ROLLING"] == 1


def test_a_window_longer_than_the_run_may_wait_stops_the_run_instead(harness: HubSpotHarness) -> None:
    """Pacing is held to max_rate_limit_wait as a 429's wait is (session 63 review): a window the
    run may not sit out (0: never sit one out) is a rate-limited error at once, which stops the
    run cleanly, not a sleep of whatever the header says."""
    conn = HubSpotConnector("hs-test", harness.connector_settings(max_attempts=1, max_rate_limit_wait=0))
    for _ in range(BURST):
        conn.check()  # the window's allowance spent: the last answer says -Remaining 0
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        conn.check()
    assert time.monotonic() - started < 1.0
    assert getattr(raised.value, "action", None) is Action.RATE_LIMITED, raised.value
