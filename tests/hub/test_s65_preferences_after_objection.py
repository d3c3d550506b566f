"""Session 65 regulatory finding: after an Art. 21(2) objection, a person whose consent to email
marketing was granted saw "Stopped for you" styled as a yes (``class="value yes"``) with only
"Withdraw consent", and no way to give the new consent that alone lifts such an objection (Art.
21(3), docs/policy.md rule `objection_direct_marketing`), though the same consent withdrawn offered
"I agree". Now a consent an objection stops is shown as a no and offers "I agree" (confirmed by
mail first, as every grant over the person's no: docs/hub.md), beside "Withdraw consent"; the mailed
link's confirmation lifts the objection for that purpose and channel. A consent a restriction
stops is a no too, and offers no "I agree" (a new consent does not lift a restriction: ops do,
Art. 18(3)); withdrawing stays offered. Through the pages in-process."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from tests.hub.conftest import HubWorld
from tests.hub.people_world import EMAIL, GRANT, mailed, mails_with, people_pages, token_of
from tests.hub.test_people_pages import act, page, text_of
from tests.integration.helpers import consent_value

FIXTURES = (people_pages,)
FORM = {"channel": "email", "lang": "en", "notice_version": "2026-05"}


def _subscriber(world: HubWorld) -> str:
    """Ada with a newsletter grant and a consent to email marketing in force; her link's token."""
    assert world.post("/consents", GRANT).status_code == 201
    now = world.clock()
    granted = consent_value(
        ConsentStatus.GRANTED, now, now, notice_version="2026-05", evidence_ref="form:signup"
    )
    outcome = world.ledger.record(Identity(email=EMAIL), granted)
    assert outcome.after is not None and not outcome.after.suppressed
    return token_of(world, outcome.subject_uid)


def row(html: str, purpose: str) -> dict[str, object]:
    """What one purpose's (single-channel) row shows: its state's words and class, and the
    actions its form offers."""
    found = re.search(
        rf'<section class="purpose" aria-labelledby="purpose-{purpose}">(.*?)</section>', html, re.S
    )
    assert found, f"no section for {purpose}"
    part = found.group(1)
    (value,) = re.findall(r'<span class="value (\w+)">([^<]*)</span>', part)
    return {
        "class": value[0],
        "state": value[1],
        "actions": re.findall(r'name="action" value="(\w+)"', part),
        "words": text_of(part),
    }


def test_a_consent_an_objection_stopped_is_a_no_and_a_new_consent_lifts_it(
    world: HubWorld, people: TestClient
) -> None:
    token = _subscriber(world)
    assert row(page(people, token).text, "email_marketing")["class"] == "yes"
    world.clock.advance(minutes=5)
    objected = act(people, token, "object", {"purpose": "email_marketing", "lang": "en"})
    assert (
        world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].rule == "objection_direct_marketing"
    )
    shown = row(objected.text, "email_marketing")
    assert (shown["class"], shown["state"]) == ("no", "Stopped for you")
    assert shown["actions"] == ["grant", "withdraw"]  # the consent that lifts it, and the way out
    assert "You objected, and we stopped." in str(shown["words"])

    # "I agree": over the person's objection, a link mailed to their address confirms it first.
    world.clock.advance(minutes=5)
    before = mails_with(world, "/p/confirm/")
    answer = act(people, token, "choose", {**FORM, "purpose": "email_marketing", "action": "grant"})
    assert "We sent you a mail" in text_of(answer.text)
    assert mails_with(world, "/p/confirm/") == before + 1
    assert world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].suppressed  # nothing yet
    link = mailed(world, "/p/confirm/")
    assert "Please confirm that it was you" in text_of(people.get(link).text)
    world.clock.advance(minutes=5)
    assert people.post(link, data={"lang": "en"}, follow_redirects=False).status_code == 303

    _uid, state = world.ledger.decision_for(EMAIL, "email_marketing", "email")
    assert (state.status, state.suppressed) == (ConsentStatus.GRANTED, False)  # the objection lifted
    assert world.ledger.subject_view(EMAIL)["history"][-1]["source"] == "double_opt_in"
    lifted = row(page(people, token).text, "email_marketing")
    assert (lifted["class"], lifted["state"], lifted["actions"]) == ("yes", "Yes: you agreed", ["withdraw"])
    assert "You objected, and we stopped." not in str(lifted["words"])


def test_withdrawing_a_consent_an_objection_stopped_stays_offered(
    world: HubWorld, people: TestClient
) -> None:
    token = _subscriber(world)
    world.clock.advance(minutes=5)
    act(people, token, "object", {"purpose": "email_marketing", "lang": "en"})
    world.clock.advance(minutes=5)
    done = act(people, token, "choose", {**FORM, "purpose": "email_marketing", "action": "withdraw"})
    assert "Done: you withdrew your consent to Email marketing (Email)." in text_of(done.text)
    shown = row(done.text, "email_marketing")
    assert (shown["class"], shown["state"], shown["actions"]) == (
        "no",
        "No: you withdrew your consent",
        ["grant"],
    )


def test_a_consent_a_restriction_stops_is_a_no_without_i_agree(world: HubWorld, people: TestClient) -> None:
    token = _subscriber(world)
    world.ledger.restrict(EMAIL, restricted=True, reason="accuracy contested")
    html = page(people, token).text
    for purpose in ("newsletter", "email_marketing"):
        shown = row(html, purpose)
        # Only ops lift a restriction: "I agree" would change nothing the person could see.
        assert (shown["class"], shown["state"], shown["actions"]) == ("no", "Stopped for you", ["withdraw"])
    world.ledger.restrict(EMAIL, restricted=False, reason="accuracy confirmed")
    for purpose in ("newsletter", "email_marketing"):
        shown = row(page(people, token).text, purpose)
        assert (shown["class"], shown["state"], shown["actions"]) == ("yes", "Yes: you agreed", ["withdraw"])
