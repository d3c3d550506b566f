"""Every sandbox can run with its CRM's clock off ours (``HttpsSandbox.skew_clock``, the
harness's ``skew_clock``): its answers' Date header and the change times its store stamps say the
CRM's time, as a CRM server whose clock is off does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consentsync.sdk.clock import http_date
from consentsync.sdk.harness import ClockSkewHarness, available_harnesses

VENDORS = sorted(available_harnesses())
OFFSET = timedelta(minutes=-10)


@pytest.fixture(params=VENDORS)
def harness(request: pytest.FixtureRequest) -> Iterator[Any]:
    made = available_harnesses()[request.param].load()()
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _close_to(moment: datetime, expected: datetime) -> bool:
    return abs(moment - expected) < timedelta(seconds=3)


def test_a_skewed_sandbox_stamps_and_dates_with_the_crms_clock(harness: Any) -> None:
    assert isinstance(harness, ClockSkewHarness)
    sandbox = harness.sandbox
    (store,) = sandbox.stores()
    assert _close_to(store.clock(), datetime.now(UTC))
    harness.skew_clock(OFFSET)
    assert _close_to(store.clock(), datetime.now(UTC) + OFFSET)
    assert _close_to(sandbox.now(), datetime.now(UTC) + OFFSET)
    response = sandbox.requests_session().get(f"{sandbox.base_url}/")
    said = http_date(response.headers.get("Date"))
    assert said is not None and _close_to(said, datetime.now(UTC) + OFFSET)
    # Set again, it is the offset from our clock, not one more on top.
    harness.skew_clock(timedelta(minutes=5))
    assert _close_to(store.clock(), datetime.now(UTC) + timedelta(minutes=5))
    # A moment given by hand is the CRM's own, taken as it is.
    moment = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    with harness.clock_at(store, moment):
        assert store.clock() == moment
    assert _close_to(store.clock(), datetime.now(UTC) + timedelta(minutes=5))


def test_an_unskewed_sandbox_says_our_time(harness: Any) -> None:
    sandbox = harness.sandbox
    response = sandbox.requests_session().get(f"{sandbox.base_url}/")
    said = http_date(response.headers.get("Date"))
    assert said is not None and _close_to(said, datetime.now(UTC))
