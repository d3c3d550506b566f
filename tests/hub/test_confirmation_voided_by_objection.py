"""An objection is a no like a withdrawal (Art. 21): raised after a sign-up, to its purpose or
to direct marketing when the purpose is direct marketing (absolute, Art. 21(2)), it voids the
double opt-in link mailed before it. Confirming the old link would record a trusted consent,
which lifts the objection for that purpose: the objection would be got around by a click on a
mail sent before it. An objection raised before a new sign-up leaves its link alone, and an
objection to another purpose that is not direct marketing voids nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from consentsync.hub.links import LinkRefused
from tests.hub.conftest import HubWorld
from tests.hub.people_world import served_pages
from tests.hub.test_confirmation_voided import EMAIL, SIGN_UP, _decision, _signed_up


@pytest.fixture
def people(world: HubWorld) -> Iterator[TestClient]:
    yield from served_pages(world, TestClient)


def _object(world: HubWorld, purpose: str, *, direct_marketing: bool) -> None:
    body = {"email": EMAIL, "purpose": purpose, "direct_marketing": direct_marketing}
    response = world.post("/objections", body)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("purpose", "direct_marketing"), [("email_marketing", True), ("email_marketing", False)]
)
def test_an_objection_after_the_sign_up_voids_its_confirmation_link(
    world: HubWorld, people: TestClient, purpose: str, direct_marketing: bool
) -> None:
    token = _signed_up(world)
    world.clock.advance(minutes=10)
    _object(world, purpose, direct_marketing=direct_marketing)
    assert _decision(world)["contact"] is False
    world.clock.advance(days=2)
    with pytest.raises(LinkRefused, match="you said no"):
        world.hub.confirm(token)
    assert people.post(f"/p/confirm/{token}", data={"lang": "en"}).status_code == 410
    decided = _decision(world)
    assert decided["contact"] is False and decided["rule"].startswith("objection"), decided


def test_an_objection_before_a_new_sign_up_leaves_its_link_to_confirm(world: HubWorld) -> None:
    _object(world, "email_marketing", direct_marketing=True)
    world.clock.advance(minutes=10)
    token = _signed_up(world, {**SIGN_UP, "event_time": "2026-06-01T12:05:00Z"})
    world.clock.advance(minutes=5)
    world.hub.confirm(token)
    decided = _decision(world)
    assert decided["contact"] is True and decided["status"] == "granted", decided


def test_an_objection_to_a_purpose_that_is_not_direct_marketing_voids_no_other_link(world: HubWorld) -> None:
    token = _signed_up(world)
    world.clock.advance(minutes=10)
    _object(world, "profiling", direct_marketing=False)  # not direct marketing: its own purpose only
    world.clock.advance(minutes=5)
    world.hub.confirm(token)
    assert _decision(world)["contact"] is True
