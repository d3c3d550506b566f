"""A whole-second no in the sign-up's own second voids its double opt-in link (session 53).

docs/hub.md: a withdrawal dated at or after the sign-up voids the link, "a no in the same second
counts"; docs/policy.md: a no stamped to the whole second counts from the end of that second. The
link compared raw times, so an ESP's unsubscribe stamped 12:00:00Z did not void a link asked for
at 12:00:00.5Z, and confirming it reversed the withdrawal.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from consentsync.hub.links import LinkRefused
from tests.hub.conftest import HubWorld
from tests.hub.people_world import served_pages

EMAIL = "eve@example.test"
SIGN_UP = {"email": EMAIL, "purpose": "email_marketing", "status": "granted", "notice_version": "2026-05"}


def _decision(world: HubWorld) -> dict[str, object]:
    answer = world.post("/decisions", {"email": EMAIL, "purpose": "email_marketing", "channel": "email"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_whole_second_withdrawal_in_the_sign_ups_second_voids_its_link(world: HubWorld) -> None:
    # The ESP's unsubscribe, stamped to the whole second, reaches the hub after the mail went.
    path = _signed_up_then_no_at(world, "2026-06-01T12:00:00Z")
    token = path.rsplit("/", 1)[1]
    for pages in served_pages(world, TestClient):
        assert pages.get(path).status_code == 410
        assert pages.post(path, data={"lang": "en"}, follow_redirects=False).status_code == 410
    with pytest.raises(LinkRefused, match="you said no"):
        world.hub.confirm(token)
    decided = _decision(world)
    assert (decided["contact"], decided["status"], decided["rule"]) == (
        False,
        "withdrawn",
        "sticky_withdrawal",
    )


def test_a_whole_second_withdrawal_in_the_second_before_leaves_the_link_working(world: HubWorld) -> None:
    """The end-of-second reading goes no further: a no stamped 11:59:59 ended before 12:00:00.5."""
    token = _signed_up_then_no_at(world, "2026-06-01T11:59:59Z").rsplit("/", 1)[1]
    assert world.hub.confirm(token)["already"] is False
    assert _decision(world)["contact"] is True


def _signed_up_then_no_at(world: HubWorld, stamp: str) -> str:
    """A sign-up at 12:00:00.5 (its confirmation mail queued), then 30 s later a withdrawal
    stamped ``stamp``; five minutes on. The confirmation link's path."""
    world.clock.now = datetime(2026, 6, 1, 12, 0, 0, 500_000, tzinfo=UTC)
    signed_up = world.post("/consents", SIGN_UP)
    assert signed_up.status_code == 201, signed_up.text
    assert signed_up.json()["results"][0]["confirmation"] == "queued"
    path = world.inbox.link("/p/confirm/").split("prefs.example.test", 1)[1]
    world.clock.advance(seconds=30)
    body = {"email": EMAIL, "purpose": "email_marketing", "status": "withdrawn", "event_time": stamp}
    withdrawn = world.post("/consents", body)
    assert withdrawn.status_code == 201, withdrawn.text
    world.clock.advance(minutes=5)
    return path
