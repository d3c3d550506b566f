"""A double opt-in link that the person's own later acts voided confirms nothing: a withdrawal
of its purpose after the sign-up (Art. 7(3): the request was withdrawn; times with any UTC
offset, whole seconds tying as the no), or their erasure (Art. 17: nothing about an erased person
is recorded again, and an old link must not bring their consent back). Used, forged and expired
links change nothing either; a withdrawal from before a new sign-up does not void its link."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from consentsync.hub.links import LinkRefused
from consentsync.ledger.schema import consent_events
from tests.hub.conftest import HubWorld
from tests.hub.people_world import served_pages

EMAIL = "asha@example.test"
# The clock is 2026-06-01T12:00:00Z: the sign-up at 11:30Z, written in India's offset.
SIGN_UP = {
    "email": EMAIL,
    "purpose": "email_marketing",
    "status": "granted",
    "notice_version": "2026-05",
    "event_time": "2026-06-01T17:00:00+05:30",
}


@pytest.fixture
def people(world: HubWorld) -> Iterator[TestClient]:
    yield from served_pages(world, TestClient)


def _signed_up(world: HubWorld, body: dict[str, Any] = SIGN_UP) -> str:
    response = world.post("/consents", body)
    assert response.status_code == 201, response.text
    assert response.json()["results"][0]["confirmation"] == "queued"
    return world.inbox.link("/p/confirm/").rsplit("/", 1)[1]


def _withdraw(world: HubWorld, event_time: str) -> None:
    body = {"email": EMAIL, "purpose": "email_marketing", "status": "withdrawn", "event_time": event_time}
    assert world.post("/consents", body).status_code == 201


def _decision(world: HubWorld) -> dict[str, Any]:
    response = world.post("/decisions", {"email": EMAIL, "purpose": "email_marketing", "channel": "email"})
    assert response.status_code == 200
    return response.json()


def _statuses(world: HubWorld) -> list[tuple[str, str]]:
    return [(item["status"], item["source"]) for item in world.ledger.subject_view(EMAIL)["history"]]


def test_a_withdrawal_after_the_sign_up_voids_its_confirmation_link(
    world: HubWorld, people: TestClient
) -> None:
    token = _signed_up(world)
    world.clock.advance(minutes=10)
    _withdraw(world, "2026-06-01T03:45:00-08:00")  # 11:45Z, after the 11:30Z sign-up
    world.clock.advance(hours=1)
    with pytest.raises(LinkRefused, match="you said no"):
        world.hub.confirm(token)
    assert people.post(f"/p/confirm/{token}", data={"lang": "en"}).status_code == 410
    assert people.get(f"/p/confirm/{token}").status_code == 410
    assert _statuses(world) == [("requested", "web_form"), ("withdrawn", "web_form")]
    decided = _decision(world)
    assert (decided["contact"], decided["status"], decided["rule"]) == (
        False,
        "withdrawn",
        "sticky_withdrawal",
    )


def test_a_withdrawal_stamped_in_the_same_whole_second_as_the_sign_up_voids_it(world: HubWorld) -> None:
    token = _signed_up(world)
    _withdraw(world, "2026-06-01T11:30:00Z")  # the same instant, another offset: a tie is a no
    world.clock.advance(minutes=5)
    with pytest.raises(LinkRefused):
        world.hub.confirm(token)
    assert _decision(world)["status"] == "withdrawn"


def test_a_withdrawal_from_before_the_sign_up_leaves_its_link_working(world: HubWorld) -> None:
    _withdraw(world, "2026-05-01T09:00:00-08:00")
    world.clock.advance(minutes=1)
    token = _signed_up(world)
    world.clock.advance(minutes=5)
    assert world.hub.confirm(token)["already"] is False
    decided = _decision(world)
    assert (decided["contact"], decided["rule"]) == (True, "trusted_opt_in_reverses")
    assert world.hub.confirm(token)["already"] is True  # used: changes nothing
    assert [status for status, _ in _statuses(world)] == ["withdrawn", "requested", "granted"]


def test_an_erased_persons_confirmation_link_records_nothing(world: HubWorld, people: TestClient) -> None:
    token = _signed_up(world)
    world.clock.advance(minutes=5)
    world.ledger.erase(EMAIL, reason="asked to be forgotten")
    with world.ledger.engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(consent_events)).scalar_one()
    with pytest.raises(LinkRefused, match="erased"):
        world.hub.confirm(token)
    assert people.post(f"/p/confirm/{token}", data={"lang": "en"}).status_code == 410
    with world.ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(consent_events)).scalar_one() == before
    assert _decision(world)["contact"] is False


def test_forged_and_expired_links_change_nothing(world: HubWorld, people: TestClient) -> None:
    token = _signed_up(world)
    assert people.post(f"/p/confirm/{token[:-2]}xx", data={"lang": "en"}).status_code == 403
    world.clock.advance(days=8)
    assert people.post(f"/p/confirm/{token}", data={"lang": "en"}).status_code == 410
    assert [status for status, _ in _statuses(world)] == ["requested"]
    assert _decision(world)["contact"] is False


def test_a_sign_up_after_the_erasure_is_confirmed(world: HubWorld, people: TestClient) -> None:
    """Only an erasure after the link was made voids it: the person may come back and consent
    anew (docs/policy.md, `erasure_suppression`), and their new link must work."""
    _signed_up(world)
    world.clock.advance(minutes=5)
    world.ledger.erase(EMAIL, reason="asked to be forgotten")
    world.clock.advance(days=30)
    token = _signed_up(world, {**SIGN_UP, "event_time": "2026-07-01T17:00:00+05:30"})
    world.clock.advance(minutes=5)
    assert people.post(f"/p/confirm/{token}", data={"lang": "en"}).status_code in (200, 303)
    assert _decision(world)["contact"] is True
