"""A no sent to the capture API is never turned away for its time (black-box finding, session
60): an unsubscribe webhook from a sender whose clock is wrong, or that writes times without an
offset, answered 422 and recorded nothing, and the person stayed contactable (webhooks seldom
retry a 4xx). docs/policy.md: a no can only protect the person. Such a no is recorded as
received (a no counts as late as it can); a grant's time is still held to the rule."""

from __future__ import annotations

from datetime import timedelta

import pytest

from consentsync.domain import iso
from tests.hub.conftest import HubWorld
from tests.hub.test_capture_api import GRANT, decision


def _unusable_times(world: HubWorld) -> dict[str, object]:
    return {
        "in the future": iso(world.clock.now + timedelta(hours=2)),
        "without an offset": "2026-05-01T11:00:00",
        "off the calendar": "0001-01-01T00:00:00+14:00",
        "before 1970": "1969-07-20T20:17:40Z",
        # Forms Python's fromisoformat reads and the field refuses (black-box finding, session
        # 63): the no kept them, and the field answered 422.
        "in ISO 8601's basic form": "20261207T110000Z",
        "as a week date": "2026-W49-1T11:00:00Z",
        "with another separator": "2026-12-07X11:00:00Z",
        "with an empty fraction": "2026-12-07T11:00:00.Z",
        "as a number": 1796554800,
    }


UNUSABLE = [
    "in the future",
    "without an offset",
    "off the calendar",
    "before 1970",
    "in ISO 8601's basic form",
    "as a week date",
    "with another separator",
    "with an empty fraction",
    "as a number",
]


@pytest.mark.parametrize("which", UNUSABLE)
@pytest.mark.parametrize("status", ["withdrawn", "refused"])
def test_a_no_with_an_unusable_time_is_recorded_as_received(world: HubWorld, which: str, status: str) -> None:
    granted = world.post("/consents", {**GRANT, "event_time": iso(world.clock.now - timedelta(days=1))})
    assert granted.status_code == 201, granted.text
    assert decision(world, GRANT["email"])["contact"] is True
    world.clock.advance(minutes=1)
    no = {"email": GRANT["email"], "purpose": GRANT["purpose"], "status": status}
    answer = world.post("/consents", {**no, "event_time": _unusable_times(world)[which]})
    assert answer.status_code == 201, answer.text
    after = decision(world, GRANT["email"])
    assert after["contact"] is False, after


@pytest.mark.parametrize("which", ["in the future", "without an offset"])
def test_a_grant_with_an_unusable_time_is_still_refused(world: HubWorld, which: str) -> None:
    answer = world.post("/consents", {**GRANT, "event_time": _unusable_times(world)[which]})
    error = answer.json()["error"]
    assert answer.status_code == 422 and ("event_time" in error or "event time" in error), error
    assert decision(world, GRANT["email"])["known"] is False  # nothing recorded


@pytest.mark.parametrize("which", ["in ISO 8601's basic form", "as a week date"])
def test_a_no_with_an_unusable_time_keeps_the_other_nos_of_its_batch(world: HubWorld, which: str) -> None:
    for email in (GRANT["email"], "carl@example.org"):
        assert world.post("/consents", {**GRANT, "email": email}).status_code == 201
    world.clock.advance(minutes=1)
    no = {"purpose": GRANT["purpose"], "status": "withdrawn"}
    batch = {
        "consents": [
            {**no, "email": "carl@example.org"},
            {**no, "email": GRANT["email"], "event_time": _unusable_times(world)[which]},
        ]
    }
    answer = world.post("/consents", batch)
    assert answer.status_code == 201, answer.text
    for email in (GRANT["email"], "carl@example.org"):
        assert decision(world, email)["contact"] is False, email
