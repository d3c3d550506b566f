"""The data subject's walk, session 51b: "No, I did not ask for this" disowns a sign-up; it does
not end a consent the person gave.

Anyone may type a subscriber's address into a sign-up form. The sign-up records nothing for a
person whose consent is in force (``Hub._consented``), but its mail asks "did you ask for this?",
and the answer "No" recorded a refusal: one click, on a mail the person never asked for, ended
their own subscription. Declining now voids the link and records nothing while the purpose does
not wait for confirmation; a genuinely pending sign-up is refused as before.
"""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.hub.conftest import HubWorld
from tests.hub.people_world import EMAIL, GRANT, mailed, mails_with, people_pages, sqlite_ledger_url

# The module's fixtures: `ledger_url` (SQLite only here) and `people` (the pages, in-process).
FIXTURES = (sqlite_ledger_url, people_pages)

SIGN_UP = {**GRANT, "purpose": "email_marketing"}


def words(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def statuses(world: HubWorld, email: str = EMAIL) -> list[str]:
    history = world.ledger.subject_view(email)["history"]
    return [str(event["status"]) for event in history if event["purpose"] == "email_marketing"]


def subscribed(world: HubWorld, people: TestClient) -> None:
    """Ada signs up for email marketing herself and confirms the mailed link."""
    assert world.post("/consents", SIGN_UP).status_code == 201
    world.clock.advance(minutes=1)
    assert people.post(mailed(world, "/p/confirm/"), data={"lang": "en"}).status_code == 200
    assert world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].status.value == "granted"


def test_disowning_a_sign_up_made_with_a_subscribers_address_keeps_her_consent(
    world: HubWorld, people: TestClient
) -> None:
    subscribed(world, people)
    world.clock.advance(days=2)
    # Someone else types Ada's address into the form: nothing is recorded, a link is mailed.
    answer = world.post("/consents", SIGN_UP).json()["results"][0]
    assert (answer["recorded"], answer["confirmation"]) == (None, "queued")
    confirm = mailed(world, "/p/confirm/")
    # Before she presses it, the page says what "No" does: it ends nothing.
    asked = words(people.get(confirm).text)
    assert "No, I did not ask for this" in asked
    assert "your choices about Email marketing stay as they are" in asked
    assert "we send you nothing" not in asked
    before = statuses(world)
    world.clock.advance(minutes=5)
    said = people.post(f"{confirm}/decline", data={"lang": "en"}, follow_redirects=False)
    assert said.status_code == 303
    assert said.headers["location"] == "/p/declined?lang=en&item=email_marketing%3Aemail&kept=1"
    # She said the sign-up was not hers: her consent stands, nothing is recorded.
    state = world.ledger.decision_for(EMAIL, "email_marketing", "email")[1]
    assert state.status.value == "granted" and not state.suppressed
    assert statuses(world) == before
    # The page says what happened, and where to end the subscription if she wants to.
    page = words(people.get(said.headers["location"]).text)
    assert "this sign-up changed nothing" in page and "you said no" not in page.lower()
    assert "privacy choices" in page and "withdraw there" in page
    # The link is void, with its own reason, and a second press records nothing either.
    again = people.get(confirm)
    assert again.status_code == 410 and "you said you did not ask for it" in again.text
    assert "sign up again" not in again.text
    assert people.post(f"{confirm}/decline", data={"lang": "en"}).status_code == 410
    assert people.post(confirm, data={"lang": "en"}).status_code == 410
    assert statuses(world) == before
    # In German too.
    german = words(people.get("/p/declined?lang=de&item=email_marketing%3Aemail&kept=1").text)
    assert "diese Anmeldung hat nichts geändert" in german


def test_a_pending_sign_up_declined_is_still_a_refusal(world: HubWorld, people: TestClient) -> None:
    assert world.post("/consents", SIGN_UP).status_code == 201
    confirm = mailed(world, "/p/confirm/")
    assert "we send you nothing, and this link stops working" in words(people.get(confirm).text)
    world.clock.advance(minutes=3)
    said = people.post(f"{confirm}/decline", data={"lang": "en"}, follow_redirects=False)
    assert said.headers["location"] == "/p/declined?lang=en&item=email_marketing%3Aemail"
    assert statuses(world) == ["requested", "refused"]
    assert "you said no after we sent it" in people.get(confirm).text


def test_a_link_confirmed_in_another_tab_then_declined_keeps_the_consent(
    world: HubWorld, people: TestClient
) -> None:
    """Two sign-ups' links open: the first confirmed, the second's "No" comes after: the purpose
    waits no more, so the second's "No" disowns it and ends nothing."""
    assert world.post("/consents", SIGN_UP).status_code == 201
    first = mailed(world, "/p/confirm/")
    world.clock.advance(minutes=11)  # past the resend interval: a second link goes
    assert world.post("/consents", SIGN_UP).json()["results"][0]["confirmation"] == "queued"
    second = mailed(world, "/p/confirm/")
    assert second != first
    world.clock.advance(minutes=1)
    assert people.post(first, data={"lang": "en"}).status_code == 200
    world.clock.advance(minutes=1)
    said = people.post(f"{second}/decline", data={"lang": "en"}, follow_redirects=False)
    assert said.headers["location"].endswith("&kept=1")
    assert world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].status.value == "granted"
    assert statuses(world)[-1] == "granted"


def test_disowned_links_still_count_toward_the_daily_cap(world: HubWorld, people: TestClient) -> None:
    """Whoever keeps submitting a subscriber's address is held to the daily cap, however often
    she disowns the mails: each went to her."""
    subscribed(world, people)
    world.clock.advance(days=2)
    world.inbox.messages.clear()
    for _round in range(3):
        assert world.post("/consents", SIGN_UP).json()["results"][0]["confirmation"] == "queued"
        confirm = mailed(world, "/p/confirm/")
        assert people.post(f"{confirm}/decline", data={"lang": "en"}).status_code == 200
        world.clock.advance(minutes=1)
    assert world.post("/consents", SIGN_UP).json()["results"][0]["confirmation"] == "recently"
    assert mails_with(world, "/p/confirm/") == 3
