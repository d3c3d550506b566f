"""Vtiger Cloud's documented limits (help.vtiger.com, "Vtiger CRM API Limits", session 63): a
429 carries the X-FloodControl-* and X-RateLimit-* headers and no Retry-After. The connector
waits a 429 out until X-FloodControl-Reset, stops cleanly when the reset lies beyond
max_rate_limit_wait or the day's allowance is spent, paces its calls once
X-FloodControl-Remaining says 0, and keeps the daily reserve of ``budget``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from consentsync_vtiger import VtigerConnector
from consentsync_vtiger.sandbox.server import VtigerSandbox

from consentsync.sdk import Action, BudgetExhausted, ConnectorError, Cursor
from tests.connectors.against_sandbox import connector_settings, read_until

FIELDS = ["email", "emailoptout"]


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    # Three calls a window of four seconds: a One Growth tenant's 30 a minute, shortened.
    with VtigerSandbox(minute_limit=3, minute_window=4.0) as server:
        server.crm.seed(20, seed=4)
        yield server


def connector_for(sandbox: VtigerSandbox, **extra: Any) -> VtigerConnector:
    settings = {"timeout": 5, "max_attempts": 5, "max_rate_limit_wait": 60}
    return VtigerConnector("vt-flood", connector_settings(sandbox.connection_settings(), settings, extra))


def _spend_the_window(sandbox: VtigerSandbox) -> None:
    """Another integration of the tenant spends the minute window: the connector under test
    has seen no answer saying so, and its next call is refused 429."""
    other = connector_for(sandbox)
    other.check()
    other.describe("Contacts")
    other.describe("Leads")
    other.close()
    assert sandbox.faults_injected["flood_control"] == 0


def test_a_429_with_only_the_documented_headers_is_waited_out_until_the_reset(
    sandbox: VtigerSandbox,
) -> None:
    connector = connector_for(sandbox)
    _spend_the_window(sandbox)
    started = time.monotonic()
    records = list(connector.read_changes("Contacts", FIELDS, Cursor(), read_until()))
    assert len(records) == 20
    # One 429, then the window's reset: the sdk's backoff alone (under a second before the
    # second attempt) would have been refused again inside the four-second window.
    assert sandbox.faults_injected["flood_control"] == 1
    assert time.monotonic() - started >= 2.0


def test_a_reset_beyond_max_rate_limit_wait_stops_cleanly_at_once() -> None:
    with VtigerSandbox(minute_limit=3, minute_window=60.0) as sandbox:
        connector = connector_for(sandbox, max_rate_limit_wait=5)
        _spend_the_window(sandbox)
        started = time.monotonic()
        with pytest.raises(ConnectorError) as stopped:
            list(connector.read_changes("Contacts", FIELDS, Cursor(), read_until()))
        # RATE_LIMITED: the engine ends the run `stopped`, its cursor kept for the next run.
        assert stopped.value.action is Action.RATE_LIMITED
        assert stopped.value.retry_after is not None and stopped.value.retry_after > 5
        assert sandbox.faults_injected["flood_control"] == 1, "the 429 was retried inside the window"
        assert time.monotonic() - started < 3


def test_remaining_zero_paces_the_next_call_until_the_reset(sandbox: VtigerSandbox) -> None:
    connector = connector_for(sandbox)
    connector.check()
    connector.describe("Contacts")
    connector.describe("Leads")  # the window's third call: its answer says Remaining 0
    started = time.monotonic()
    assert len(list(connector.read_changes("Contacts", FIELDS, Cursor(), read_until()))) == 20
    assert sandbox.faults_injected["flood_control"] == 0, "called into a spent window"
    assert time.monotonic() - started >= 2.0


def test_a_spent_window_resetting_beyond_max_rate_limit_wait_stops_before_the_call() -> None:
    with VtigerSandbox(minute_limit=2, minute_window=60.0) as sandbox:
        connector = connector_for(sandbox, max_rate_limit_wait=5)
        connector.check()
        connector.describe("Contacts")
        with pytest.raises(ConnectorError) as stopped:
            connector.describe("Leads")
        assert stopped.value.action is Action.RATE_LIMITED
        assert sandbox.faults_injected["flood_control"] == 0
        assert sandbox.calls["describe"] == 1


def test_a_429_of_the_spent_daily_allowance_stops_without_retrying(sandbox: VtigerSandbox) -> None:
    connector = connector_for(sandbox)
    sandbox.faults.update(request_limit_after=0)
    with pytest.raises(BudgetExhausted) as stopped:
        connector.check()
    assert stopped.value.action is Action.RATE_LIMITED
    assert sandbox.faults_injected["request_limit"] == 1


def test_the_daily_reserve_stops_the_run_before_vtiger_refuses() -> None:
    with VtigerSandbox(api_limit=10) as sandbox:
        sandbox.crm.seed(5, seed=4)
        connector = connector_for(sandbox, budget={"daily_reserve_percent": 50})
        connector.check()
        for module in ("Contacts", "Leads", "Accounts", "Contacts", "Leads", "Accounts"):
            connector._describes.clear()  # each describe is a call
            try:
                connector.describe(module)
            except BudgetExhausted as stopped:
                assert "5/10 daily Vtiger API calls used" in str(stopped)
                break
        else:
            pytest.fail("the daily reserve did not stop the calls")
        assert sandbox.faults_injected["request_limit"] == 0
        assert connector.usage.used == 5 and connector.usage.limit == 10


def test_a_sent_retry_after_still_wins(sandbox: VtigerSandbox) -> None:
    sandbox.send_retry_after = True
    sandbox.retry_after = 7200
    connector = connector_for(sandbox)
    sandbox.faults.update(request_limit_after=0)
    with pytest.raises(ConnectorError) as stopped:
        connector.check()
    assert stopped.value.retry_after == 7200


def _answer(reset: str, date: str | None = None) -> requests.Response:
    response = requests.Response()
    response.headers["X-FloodControl-Reset"] = reset
    if date:
        response.headers["Date"] = date
    return response


def test_the_reset_is_read_as_seconds_or_as_an_epoch_time() -> None:
    from consentsync_vtiger.client import reset_in  # here: the other tests run without it

    date = "Mon, 07 Dec 2026 12:00:00 GMT"
    epoch = 1796644800  # that Date
    assert reset_in(_answer("42")) == 42
    assert reset_in(_answer(str(epoch + 30), date)) == 30
    assert reset_in(_answer(str((epoch + 30) * 1000), date)) == 30  # milliseconds
    assert reset_in(_answer(str(epoch - 5), date)) == 0  # already reset
    # Further than a day ahead (the help page's own example, 15349121212): no minute window's.
    assert reset_in(_answer("15349121212", date)) is None
    for unreadable in ("", "soon", "-3", "nan", "inf"):
        assert reset_in(_answer(unreadable, date)) is None
