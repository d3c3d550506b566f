"""An event time its offset takes off the calendar once in UTC (session 53): the API answered
500 (an OverflowError out of ``as_utc``). It is bad input: 422, one line naming the field."""

from __future__ import annotations

from datetime import datetime

import pytest

from consentsync.domain import InvalidInput, as_utc
from tests.hub.conftest import HubWorld

OFF_THE_CALENDAR = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00"]


@pytest.mark.parametrize("event_time", OFF_THE_CALENDAR)
def test_an_event_time_off_the_calendar_is_a_422_naming_the_field(world: HubWorld, event_time: str) -> None:
    # A grant's (a no is recorded as received: test_s60_no_time_set_aside.py).
    body = {
        "email": "cal@example.test",
        "purpose": "newsletter",
        "status": "granted",
        "notice_version": "2026-05",
        "event_time": event_time,
    }
    answer = world.post("/consents", body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error.startswith("consents[0].event_time: ") and "\n" not in error
    assert "accepted" in error
    batch = {"consents": [{**body, "event_time": "2026-06-01T11:00:00Z"}, body]}
    answer = world.post("/consents", batch)
    assert answer.status_code == 422 and answer.json()["error"].startswith("consents[1].event_time: ")
    # Nothing was recorded: the ledger does not know the address.
    assert (
        world.post("/decisions", {"email": "cal@example.test", "purpose": "newsletter"}).json()["known"]
        is False
    )


@pytest.mark.parametrize("event_time", OFF_THE_CALENDAR)
def test_as_utc_refuses_a_time_off_the_calendar_as_bad_input(event_time: str) -> None:
    with pytest.raises(InvalidInput, match=r"off the calendar.*accepted"):
        as_utc(datetime.fromisoformat(event_time))
    # Still what the callers reading it as the calendar's edge catch.
    with pytest.raises(OverflowError):
        as_utc(datetime.fromisoformat(event_time))
