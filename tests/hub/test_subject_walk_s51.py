"""The data subject's walk, session 51: what a grant records as "shown" was shown.

- A consent request's (or a renewal's) confirmation page never showed the notice text, yet
  following it recorded ``granted`` naming that notice version as the one the person was shown
  (the receipt says so too, with the text's SHA-256). A renewal names the notice current when it
  was mailed, possibly a newer text than the one the person first agreed to.
- "I agree" on the preference page recorded the notice current when the form arrived, not the
  one the page showed: a version registered while the page was open was recorded as agreed to,
  unseen.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from fastapi.testclient import TestClient

from consentsync.hub import notices
from consentsync.hub.outreach import Outreacher
from tests.hub.conftest import NEWSLETTER_NOTICE, HubWorld
from tests.hub.people_world import EMAIL, GRANT, mailed, people_pages, seed, sqlite_ledger_url, token_of
from tests.hub.test_outreach import someone

# The module's fixtures: `ledger_url` (SQLite only here) and `people` (the pages, in-process).
FIXTURES = (sqlite_ledger_url, people_pages)

NEW_NOTICE = "From June we also share your address with our delivery partner, Acme Post Ltd."
GERMAN_NOTICE = "Wir senden Ihnen etwa einmal im Monat unseren Newsletter. Abmelden jederzeit."


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def newest(world: HubWorld, purpose: str, email: str = EMAIL) -> dict[str, object]:
    return [e for e in world.ledger.subject_view(email)["history"] if e["purpose"] == purpose][-1]


# -- the confirmation page shows the notice it grants under ---------------------------------------


def test_a_consent_request_shows_the_notice_its_confirmation_records(
    world: HubWorld, people: TestClient
) -> None:
    notices.add(world.ledger, "newsletter", "2026-05", GERMAN_NOTICE, language="de")
    someone(world, "cy@example.test")
    world.inbox.messages.clear()
    assert Outreacher(world.hub, sleep=lambda _s: None).request_consent("newsletter").sent == 1
    path = urlsplit(world.inbox.link("/p/confirm/")).path
    page = people.get(path)
    assert page.status_code == 200
    words = text_of(page.text)
    # What "Yes, I agree" will record as shown, shown: the text and its version.
    assert NEWSLETTER_NOTICE in words and "Notice version 2026-05" in words
    # In the page's language, where that version has a text in it.
    german = text_of(people.get(path, params={"lang": "de"}).text)
    assert GERMAN_NOTICE in german and NEWSLETTER_NOTICE not in german
    assert people.post(path, data={"lang": "en"}, follow_redirects=False).status_code == 303
    event = newest(world, "newsletter", "cy@example.test")
    assert (event["status"], event["notice_version"]) == ("granted", "2026-05")
    # Once confirmed, the page says so and asks nothing.
    assert "Yes, I agree" not in text_of(people.get(path).text)


def test_a_renewal_shows_the_newer_notice_it_would_record(world: HubWorld, people: TestClient) -> None:
    assert world.post("/consents", GRANT).status_code == 201
    world.clock.advance(days=300)
    notices.add(world.ledger, "newsletter", "2027-03", NEW_NOTICE)
    world.clock.advance(days=40)
    world.inbox.messages.clear()
    assert Outreacher(world.hub, sleep=lambda _s: None).renew().sent == 1
    path = urlsplit(world.inbox.link("/p/confirm/")).path
    words = text_of(people.get(path).text)
    # "Yes, keep it" records the 2027 text: the person reads it before they keep it.
    assert NEW_NOTICE in words and "Notice version 2027-03" in words
    assert NEWSLETTER_NOTICE not in words
    people.post(path, data={"lang": "en"})
    assert newest(world, "newsletter")["notice_version"] == "2027-03"


def test_a_double_opt_in_page_shows_the_notice_of_the_sign_up(world: HubWorld, people: TestClient) -> None:
    assert world.post("/consents", {**GRANT, "purpose": "email_marketing"}).status_code == 201
    notices.add(world.ledger, "email_marketing", "2026-06", NEW_NOTICE)  # newer than the form's
    path = urlsplit(world.inbox.link("/p/confirm/")).path
    words = text_of(people.get(path).text)
    assert NEWSLETTER_NOTICE in words and "Notice version 2026-05" in words
    assert NEW_NOTICE not in words


# -- "I agree" on the preference page records the notice the page showed ---------------------------


def choice_form(html: str, purpose: str, channel: str = "email") -> dict[str, str]:
    """The hidden fields of the page's choice form for ``purpose`` on ``channel``, as a browser
    sends them."""
    for form in re.findall(r"<form method=\"post\" action=\"[^\"]*/choose\">(.*?)</form>", html, re.S):
        fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form))
        if fields.get("purpose") == purpose and fields.get("channel") == channel:
            return fields
    raise AssertionError(f"no choice form for {purpose} {channel}")


def test_a_grant_names_the_notice_the_page_showed_not_one_registered_since(
    world: HubWorld, people: TestClient
) -> None:
    token = token_of(world, seed(world))
    world.clock.advance(minutes=1)
    form = {"purpose": "newsletter", "channel": "email", "lang": "en", "action": "withdraw"}
    assert people.post(f"/p/preferences/{token}/choose", data=form).status_code == 200
    opened = people.get(f"/p/preferences/{token}")
    fields = choice_form(opened.text, "newsletter")
    assert fields["notice_version"] == "2026-05" and NEWSLETTER_NOTICE in text_of(opened.text)
    # While the page is open, ops register a new text; the person, who read the old one, agrees.
    world.clock.advance(minutes=1)
    notices.add(world.ledger, "newsletter", "2026-06", NEW_NOTICE)
    world.clock.advance(minutes=1)
    before = len(world.ledger.subject_view(EMAIL)["history"])
    answer = people.post(f"/p/preferences/{token}/choose", data={**fields, "action": "grant"})
    assert answer.status_code == 200
    # Nothing recorded: a grant naming 2026-06 would claim a text the person never saw.
    assert len(world.ledger.subject_view(EMAIL)["history"]) == before
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "withdrawn"
    words = text_of(answer.text)
    assert "The text about Newsletter changed while your page was open" in words
    assert NEW_NOTICE in words and "Notice version 2026-06" in words
    # The page now shows the new text; agreeing to it records it.
    fields = choice_form(answer.text, "newsletter")
    assert fields["notice_version"] == "2026-06"
    world.clock.advance(minutes=1)
    assert "We sent you a mail" in text_of(
        people.post(f"/p/preferences/{token}/choose", data={**fields, "action": "grant"}).text
    )
    # Over the withdrawal: recorded once the mailed link is confirmed (docs/hub.md).
    assert people.post(mailed(world, "/p/confirm/"), data={"lang": "en"}).status_code == 200
    assert newest(world, "newsletter")["notice_version"] == "2026-06"
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "granted"


def test_a_withdrawal_from_a_page_with_an_older_notice_is_recorded(
    world: HubWorld, people: TestClient
) -> None:
    token = token_of(world, seed(world))
    fields = choice_form(people.get(f"/p/preferences/{token}").text, "newsletter")
    notices.add(world.ledger, "newsletter", "2026-06", NEW_NOTICE)
    world.clock.advance(minutes=1)
    # Saying no never waits for a text to be read (Art. 7(3)).
    answer = people.post(f"/p/preferences/{token}/choose", data={**fields, "action": "withdraw"})
    assert "Done: you withdrew your consent" in text_of(answer.text)
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "withdrawn"


# -- a sign-up sent with a GPC signal that opts out of its own purpose --------------------------


def test_a_sign_up_its_own_gpc_signal_voids_mails_no_dead_link(world: HubWorld, people: TestClient) -> None:
    world.hub.settings = world.hub.settings.model_copy(update={"gpc_purposes": ["email_marketing"]})
    signup = {**GRANT, "purpose": "email_marketing"}
    for gpc in ({"Sec-GPC": "1"}, {}):  # the header, then the body's flag
        body = signup if gpc else {"consents": [{**signup, "email": "bo@example.test"}], "gpc": True}
        answer = world.post("/consents", body, **gpc).json()["results"]
        asked = next(r for r in answer if r["recorded"] == "requested")
        # The signal is recorded at the same instant, and a tie is read as the no: the link
        # could only ever say "you said no after we sent it". The answer says so; nothing goes.
        assert asked["confirmation"] == "void"
        assert any(r.get("gpc") for r in answer)
    assert not any("/p/confirm/" in world.inbox.text(i) for i in range(len(world.inbox.messages)))
    assert world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].status.value == "withdrawn"
    # Signed up again later, without the signal: a link that works is mailed at once (the void
    # one went to nobody, and counts against no cap).
    world.clock.advance(minutes=1)
    again = world.post("/consents", signup).json()["results"][0]
    assert again["confirmation"] == "queued"
    path = urlsplit(world.inbox.link("/p/confirm/")).path
    assert people.get(path).status_code == 200
    world.clock.advance(minutes=1)
    assert people.post(path, data={"lang": "en"}, follow_redirects=False).status_code == 303
    assert world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].status.value == "granted"
