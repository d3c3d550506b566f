"""The CRM's clock as its answers' Date headers tell it (consentsync.sdk.clock): what one answer
proves of the offset between its clock and ours (whole seconds, the request's round trip),
headers that prove nothing, and the bound it puts on a read. Then the same against a sandbox
whose clock runs behind ours, through the session every connector makes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from hypothesis import given
from hypothesis import strategies as st

from consentsync.sdk.clock import (
    MAX_PLAUSIBLE_OFFSET,
    ClockOffset,
    CrmClock,
    bounded_until,
    http_date,
    offset_from_date,
)
from consentsync.sdk.connector import Connector
from consentsync.sdk.http import http_session
from consentsync.sdk.settings import ConnectorSettings

T = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
SENT = T + timedelta(milliseconds=300)
RECEIVED = T + timedelta(milliseconds=500)


def _date(moment: datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


def test_a_date_ten_minutes_behind_bounds_the_offset_by_the_round_trip_and_the_dropped_fraction() -> None:
    # The server made the answer between 10:00:00.300 and 10:00:00.500 (ours), when its clock
    # read 09:50:00 and a fraction: 600.5 s behind at most, 599.3 s at least.
    offset = offset_from_date("Sun, 06 Dec 2026 09:50:00 GMT", SENT, RECEIVED)
    assert offset == ClockOffset(low=timedelta(seconds=-600.5), high=timedelta(seconds=-599.3))
    assert offset.behind


def test_a_clock_in_step_with_ours_is_not_taken_for_behind() -> None:
    # 10:00:00 said at 10:00:00.4: the dropped fraction may hold the difference.
    offset = offset_from_date(_date(T), SENT, RECEIVED)
    assert offset is not None
    assert offset.low == timedelta(seconds=-0.5) and offset.high == timedelta(seconds=0.7)
    assert not offset.behind


def test_a_clock_ahead_is_not_behind() -> None:
    offset = offset_from_date(_date(T + timedelta(minutes=10)), SENT, RECEIVED)
    assert offset is not None and offset.low > timedelta(minutes=9) and not offset.behind


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "garbage",
        "Sun, 06 Dec 2026 25:61:00 GMT",  # no such time
        "Sun, 31 Feb 2026 10:00:00 GMT",  # no such day
        "Thu, 01 Jan 1970 00:00:00 GMT",  # a server whose clock was never set
        _date(T + MAX_PLAUSIBLE_OFFSET + timedelta(minutes=1)),
    ],
    ids=["missing", "empty", "blank", "garbled", "bad-time", "bad-day", "epoch", "far-ahead"],
)
def test_a_missing_garbled_or_implausible_date_says_nothing(header: str | None) -> None:
    assert offset_from_date(header, SENT, RECEIVED) is None
    clock = CrmClock()
    clock.observe_date("crm.example.test", header, SENT, RECEIVED)
    assert clock.offset() is None


def test_the_obsolete_date_forms_are_read_and_a_date_without_a_zone_is_gmt() -> None:
    assert http_date("Sunday, 06-Dec-26 10:00:00 GMT") == T
    assert http_date("Sun Dec  6 10:00:00 2026") == T
    assert http_date("Sun, 06 Dec 2026 11:00:00 +0100") == T


def test_times_out_of_order_say_nothing() -> None:
    assert offset_from_date(_date(T), RECEIVED, SENT) is None


def test_a_garbled_header_keeps_what_an_earlier_answer_said() -> None:
    clock = CrmClock()
    clock.observe_date("crm.example.test", "Sun, 06 Dec 2026 09:50:00 GMT", SENT, RECEIVED)
    clock.observe_date("crm.example.test", "not a date", SENT, RECEIVED)
    clock.observe_date("crm.example.test", None, SENT, RECEIVED)
    offset = clock.offset()
    assert offset is not None and offset.behind


def test_the_server_furthest_behind_is_the_clock_taken() -> None:
    # A token endpoint in step with ours, the API's servers ten minutes behind: the API's clock.
    clock = CrmClock()
    clock.observe_date("login.example.test", _date(T), SENT, RECEIVED)
    clock.observe_date("api.example.test", "Sun, 06 Dec 2026 09:50:00 GMT", SENT, RECEIVED)
    clock.observe_date("login.example.test", _date(T), SENT, RECEIVED)
    assert clock.offset() == ClockOffset(low=timedelta(seconds=-600.5), high=timedelta(seconds=-599.3))


def test_a_hosts_latest_answer_replaces_its_earlier_one() -> None:
    # Its clock was set right meanwhile: the earlier offset no longer holds.
    clock = CrmClock()
    clock.observe_date("api.example.test", "Sun, 06 Dec 2026 09:50:00 GMT", SENT, RECEIVED)
    clock.observe_date("api.example.test", _date(T), SENT, RECEIVED)
    offset = clock.offset()
    assert offset is not None and not offset.behind


def test_observe_takes_a_response_sent_its_elapsed_time_ago() -> None:
    clock = CrmClock()
    now = datetime.now(UTC)
    response: Any = SimpleNamespace(
        headers={"Date": _date(now - timedelta(minutes=10))},
        elapsed=timedelta(milliseconds=200),
        request=SimpleNamespace(url="https://user:pass@crm.example.test:8443/api?q=1"),
        url="https://crm.example.test:8443/api?q=1",
    )
    clock.observe(response)
    offset = clock.offset()
    assert offset is not None and offset.behind
    assert timedelta(minutes=-10, seconds=-2) < offset.low <= timedelta(minutes=-10)
    assert timedelta(minutes=-10) < offset.high <= timedelta(minutes=-10, seconds=1.3)


LAG = timedelta(seconds=2)
UNTIL = T - LAG


def test_a_crm_clock_behind_bounds_the_read_by_its_own_time() -> None:
    behind = ClockOffset(low=timedelta(seconds=-600.5), high=timedelta(seconds=-599.3))
    assert bounded_until(UNTIL, T, LAG, behind) == T - timedelta(seconds=600.5) - LAG


@pytest.mark.parametrize(
    "offset",
    [
        None,  # nothing known yet: as before
        ClockOffset(low=timedelta(seconds=-0.5), high=timedelta(seconds=0.7)),  # in step
        ClockOffset(low=timedelta(minutes=10), high=timedelta(minutes=10, seconds=1)),  # ahead
    ],
    ids=["unknown", "in-step", "ahead"],
)
def test_a_crm_clock_not_known_behind_keeps_our_bound(offset: ClockOffset | None) -> None:
    assert bounded_until(UNTIL, T, LAG, offset) == UNTIL


@given(
    low=st.floats(min_value=-86_000, max_value=86_000),
    width=st.floats(min_value=0, max_value=30),
    lag=st.floats(min_value=0, max_value=60),
)
def test_the_bound_is_never_later_than_ours_nor_than_the_crms_lowest_reading(
    low: float, width: float, lag: float
) -> None:
    offset = ClockOffset(low=timedelta(seconds=low), high=timedelta(seconds=low + width))
    until = bounded_until(T - timedelta(seconds=lag), T, timedelta(seconds=lag), offset)
    assert until <= T - timedelta(seconds=lag)
    if offset.behind:
        assert until <= T + offset.low - timedelta(seconds=lag)


# -- through the session every connector makes, against a sandbox whose clock is off --------------


@pytest.fixture
def sandbox_behind() -> Any:
    with SalesforceSandbox() as sandbox:
        sandbox.skew_clock(timedelta(minutes=-10))
        yield sandbox


def test_the_sessions_answers_tell_the_settings_clock_of_a_crm_ten_minutes_behind(
    sandbox_behind: Any,
) -> None:
    settings = ConnectorSettings(ca_bundle=str(sandbox_behind.ca_cert_path))
    assert settings.crm_clock.offset() is None  # no answer yet
    with http_session(settings) as session:
        response = session.get(f"{sandbox_behind.base_url}/services/data/")
    assert response.headers.get("Date")
    offset = settings.crm_clock.offset()
    assert offset is not None and offset.behind
    assert timedelta(minutes=-10, seconds=-2) < offset.low <= timedelta(minutes=-10) < offset.high


def test_a_connector_finds_the_clock_of_its_validated_settings() -> None:
    class _Plain(Connector):
        vendor = "plain"

        def check(self) -> None: ...

        def describe(self, object_type: str) -> dict[str, Any]:
            return {}

        def read_changes(self, *args: Any) -> Any:
            return iter(())

        def write(self, updates: Any) -> list[Any]:
            return []

    plain = _Plain("plain", {})
    assert plain.crm_clock() is None  # no settings of the sdk's: nothing known, as before
    plain.config = ConnectorSettings()  # type: ignore[attr-defined]
    assert plain.crm_clock() is plain.config.crm_clock  # type: ignore[attr-defined]
    # A copy of the settings (model_copy) shares the clock: so do a connector's readers.
    assert plain.config.model_copy().crm_clock is plain.config.crm_clock  # type: ignore[attr-defined]
