"""A data subject's walk through the preference centre and the capture API (session 49): what
failed on the walk, each fixed in the hub.

- A pending double opt-in could not be declined on the preference page: a person who never
  signed up had only "close this page" (Art. 7: a no must be as easy to give as a yes).
- The confirmation and receipt mails named the purpose and channel in English inside a German
  mail (Art. 12(1)), the links in them opened in the browser's language, not the mail's, and
  the receipt of a confirmed double opt-in was always in English.
- The preference page offered no restriction of processing (Art. 18), though the ledger keeps
  it: it is now asked for on the page and confirmed through a mailed link, as erasure is.
- The capture API answered that a confirmation was "mailed" before it was sent (and when the
  mail server was down).
"""

from __future__ import annotations

import re
import socket
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from consentsync import audit
from consentsync.config import SmtpSettings
from consentsync.hub.links import LinkRefused
from consentsync.hub.mail import Mailer
from consentsync.hub.preferences import PreferenceCentre
from tests.hub.conftest import HubWorld, in_german
from tests.hub.people_world import (
    EMAIL,
    GRANT,
    mailed,
    mails_with,
    people_pages,
    seed,
    sqlite_ledger_url,
    token_of,
)

# The module's fixtures: `ledger_url` (SQLite only here) and `people` (the pages, in-process).
FIXTURES = (sqlite_ledger_url, people_pages)


def words(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def act(people: TestClient, token: str, action: str, data: dict[str, str]) -> str:
    """Sends a page's form; the words of the page it redirects to (Post/Redirect/Get)."""
    response = people.post(f"/p/preferences/{token}/{action}", data=data, follow_redirects=False)
    assert response.status_code == 303, response.text
    return words(people.get(response.headers["location"]).text)


def dead_port() -> int:
    """A port in our range with nothing listening: the mail server is down."""
    for port in range(22990, 22999):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise AssertionError("no free port in 22990-22998")


def smtp_down(world: HubWorld) -> None:
    world.hub.mailer = Mailer(SmtpSettings(host="127.0.0.1", port=dead_port(), sender="p@example.test"))


def history(world: HubWorld, email: str = EMAIL) -> list[dict[str, object]]:
    return list(world.ledger.subject_view(email)["history"])


def audit_of(world: HubWorld, uid: str, action: str) -> list[dict[str, object]]:
    with world.ledger.engine.connect() as conn:
        return list(audit.entries(conn, subject_uids=[uid], action=action))


# -- 1. declining a pending double opt-in -----------------------------------------------------


def test_a_pending_double_opt_in_is_declined_on_the_preference_page(
    world: HubWorld, people: TestClient
) -> None:
    token = token_of(world, seed(world))  # newsletter granted, email marketing waiting
    confirm = mailed(world, "/p/confirm/")
    page = people.get(f"/p/preferences/{token}")
    forms = re.findall(r'name="purpose" value="(\w+)">((?:(?!</form>).)*)</form>', page.text, re.S)
    declines = [purpose for purpose, form in forms if 'value="decline"' in form]
    assert declines == ["email_marketing"], "only what waits for confirmation can be declined"
    world.clock.advance(minutes=3)
    shown = act(
        people, token, "choose", {"purpose": "email_marketing", "channel": "email", "action": "decline"}
    )
    assert "you said no to Email marketing (Email)" in shown
    assert "The confirmation link we mailed you no longer works." in shown
    event = history(world)[-1]
    assert (event["purpose"], event["status"], event["source"]) == (
        "email_marketing",
        "refused",
        "preference_center",
    )
    state = world.ledger.decision_for(EMAIL, "email_marketing", "email")[1]
    assert state.status.value == "refused" and state.suppressed
    # The mailed link is void: it neither opens nor grants.
    assert people.get(confirm).status_code == 410
    before = len(history(world))
    assert people.post(confirm, data={"lang": "en"}).status_code == 410
    assert len(history(world)) == before
    assert world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].status.value == "refused"
    # Nothing waits any more: no second "no", and a consent given is withdrawn, not declined.
    for purpose in ("email_marketing", "newsletter"):
        refused = people.post(
            f"/p/preferences/{token}/choose",
            data={"purpose": purpose, "channel": "email", "action": "decline"},
        )
        assert refused.status_code == 400 and "Traceback" not in refused.text
    assert len(history(world)) == before
    assert 'value="decline"' not in people.get(f"/p/preferences/{token}").text


def test_the_mailed_link_itself_says_no_and_a_reload_asks_nothing(
    world: HubWorld, people: TestClient
) -> None:
    seed(world)
    confirm = mailed(world, "/p/confirm/")
    page = people.get(confirm)
    assert page.status_code == 200 and "No, I did not ask for this" in page.text
    assert f'action="{confirm}/decline"' in page.text
    world.clock.advance(minutes=3)
    said = people.post(f"{confirm}/decline", data={"lang": "en"}, follow_redirects=False)
    assert said.status_code == 303
    assert said.headers["location"] == "/p/declined?lang=en&item=email_marketing%3Aemail"
    done = people.get(said.headers["location"])
    assert done.status_code == 200 and "you said no to Email marketing (Email)" in words(done.text)
    event = history(world)[-1]
    assert (event["purpose"], event["status"], event["source"]) == (
        "email_marketing",
        "refused",
        "double_opt_in",
    )
    # The link is void: not "expired, sign up again" to someone who said no.
    again = people.get(confirm)
    assert again.status_code == 410 and "This link is no longer in use" in again.text
    assert "you said no after we sent it" in again.text and "sign up again" not in again.text
    before = len(history(world))
    assert people.post(f"{confirm}/decline", data={"lang": "en"}).status_code == 410
    assert people.post(confirm, data={"lang": "en"}).status_code == 410
    assert len(history(world)) == before
    # The declined page names only a configured purpose, from a fixed text.
    assert people.get("/p/declined?item=%3Cscript%3E:email").status_code == 404


def test_a_confirmed_link_is_not_declined(world: HubWorld, people: TestClient) -> None:
    seed(world)
    confirm = mailed(world, "/p/confirm/")
    world.clock.advance(minutes=1)
    assert people.post(confirm, data={"lang": "en"}).status_code == 200
    before = len(history(world))
    said = people.post(f"{confirm}/decline", data={"lang": "en"}, follow_redirects=False)
    assert said.status_code == 303 and said.headers["location"].startswith(confirm)
    assert len(history(world)) == before
    assert world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].status.value == "granted"
    assert "/decline" not in people.get(confirm).text


def test_declining_speaks_german(world: HubWorld, people: TestClient) -> None:
    token = token_of(world, seed(world))
    page = words(people.get(f"/p/preferences/{token}?lang=de").text)
    assert "Nein, das habe ich nicht angefordert" in page
    shown = act(
        people,
        token,
        "choose",
        {"purpose": "email_marketing", "channel": "email", "action": "decline", "lang": "de"},
    )
    assert "Sie haben E-Mail-Werbung (E-Mail) abgelehnt." in shown
    voided = people.get(mailed(world, "/p/confirm/"), headers={"Accept-Language": "de"})
    assert (
        voided.status_code == 410 and "Sie haben abgelehnt, nachdem wir ihn geschickt haben." in voided.text
    )


# -- 2. the mails in the person's language ----------------------------------------------------

JORG = "jörg@example.test"


def test_the_confirmation_mail_names_purpose_and_channel_in_the_persons_language(world: HubWorld) -> None:
    in_german(world.ledger, "email_marketing")
    signup = {**GRANT, "purpose": "email_marketing", "email": JORG, "language": "de"}
    assert world.post("/consents", signup).status_code == 201
    mail = world.inbox.messages[-1]
    assert str(mail["Subject"]) == "Bitte bestätigen Sie: E-Mail-Werbung"
    text = world.inbox.text()
    assert "Sie möchten E-Mail-Werbung per E-Mail erhalten." in text, text
    assert "Email marketing" not in text and " email " not in text


def test_the_links_of_a_mail_open_in_its_language_and_its_receipt_follows(
    world: HubWorld, people: TestClient
) -> None:
    in_german(world.ledger, "email_marketing")
    signup = {**GRANT, "purpose": "email_marketing", "email": JORG, "language": "de"}
    assert world.post("/consents", signup).status_code == 201
    confirm = urlsplit(world.inbox.full_link("/p/confirm/"))
    preferences = urlsplit(world.inbox.full_link("/p/preferences/"))
    assert parse_qs(confirm.query) == {"lang": ["de"]} == parse_qs(preferences.query)
    # A browser that prefers English still gets the page in the mail's language.
    english = {"Accept-Language": "en"}
    page = people.get(f"{confirm.path}?{confirm.query}", headers=english)
    assert '<html lang="de">' in page.text and "Bitte bestätigen Sie" in page.text
    assert "E-Mail-Werbung (E-Mail)" in words(page.text)
    assert '<html lang="de">' in people.get(f"{preferences.path}?{preferences.query}", headers=english).text
    # Confirmed in German: the receipt mail is German too, its purpose and channel included.
    world.clock.advance(minutes=2)
    done = people.post(confirm.path, data={"lang": "de"}, headers=english)
    assert done.status_code == 200 and "Vielen Dank" in done.text
    receipt = world.inbox.messages[-1]
    assert str(receipt["Subject"]) == "Ihre Einwilligungsquittung: E-Mail-Werbung"
    assert "E-Mail-Werbung per E-Mail, erteilt am" in world.inbox.text()


def test_a_receipt_from_the_page_names_purpose_and_channel_in_german(
    world: HubWorld, people: TestClient
) -> None:
    token = token_of(world, seed(world))
    act(
        people,
        token,
        "choose",
        {"purpose": "newsletter", "channel": "email", "action": "withdraw", "lang": "de"},
    )
    assert "Newsletter per E-Mail, widerrufen am" in world.inbox.text()
    assert parse_qs(urlsplit(world.inbox.full_link("/p/preferences/")).query) == {"lang": ["de"]}


# -- 3. restriction of processing (Art. 18) ---------------------------------------------------


def test_restriction_is_asked_on_the_page_and_confirmed_through_the_mailed_link(
    world: HubWorld, people: TestClient
) -> None:
    uid = seed(world)
    token = token_of(world, uid)
    page = people.get(f"/p/preferences/{token}")
    grounds = re.findall(r'name="ground" value="(\w+)"', page.text)
    assert grounds == ["accuracy", "unlawful", "legal_claims", "objection"]
    # A form our page never sends is refused, and asks nothing.
    for data in ({}, {"ground": "because"}):
        refused = people.post(f"/p/preferences/{token}/restrict", data=data)
        assert refused.status_code == 400 and "Traceback" not in refused.text
    assert mails_with(world, "/p/restrict/") == 0 and not audit_of(
        world, uid, "subject.restriction_requested"
    )

    shown = act(people, token, "restrict", {"ground": "accuracy", "lang": "en"})
    assert "We sent you a mail. The processing of your data is restricted once you open the link" in shown
    assert mails_with(world, "/p/restrict/") == 1
    assert (
        str(world.inbox.messages[-1]["Subject"])
        == "Please confirm the restriction of the processing of your data"
    )
    # On record from the moment it is asked, by the person, with its ground.
    (asked,) = audit_of(world, uid, "subject.restriction_requested")
    assert (asked["actor"], asked["source"]) == ("data subject", "preference_center")
    assert asked["what"]["ground"] == "accuracy"
    assert not world.ledger.subject_view(EMAIL)["restricted"]  # nothing restricted yet
    # Pressed again at once: the mail just sent answers, no second one, no second entry.
    act(people, token, "restrict", {"ground": "accuracy", "lang": "en"})
    assert (
        mails_with(world, "/p/restrict/") == 1
        and len(audit_of(world, uid, "subject.restriction_requested")) == 1
    )

    link = mailed(world, "/p/restrict/")
    for _ in range(2):  # opening it (as a mail scanner does) restricts nothing
        opened = people.get(link)
        assert opened.status_code == 200 and "Yes, restrict the processing" in opened.text
        assert "Your data is wrong" in opened.text
    assert not world.ledger.subject_view(EMAIL)["restricted"]
    done = people.post(link, data={"lang": "en"}, follow_redirects=False)
    assert done.status_code == 303
    after = people.get(done.headers["location"])
    assert after.status_code == 200 and "The processing of your data is restricted" in words(after.text)
    assert world.ledger.subject_view(EMAIL)["restricted"]
    state = world.ledger.decision_for(EMAIL, "newsletter", "email")[1]
    assert state.suppressed and state.rule == "restriction_art18"
    (placed,) = audit_of(world, uid, "subject.restricted")
    assert (placed["actor"], placed["source"]) == ("data subject", "preference_center")
    # The person's copy of their record says when, by whom and why.
    from consentsync.export import with_restrictions

    view = with_restrictions(world.ledger, world.ledger.subject_view(EMAIL))
    assert view["restricted_by"] == "data subject" and "Art. 18(1)(a)" in view["restriction_reason"]
    # Confirmed again: nothing changes; the page says so instead of offering the form.
    assert people.post(link, data={"lang": "en"}).status_code == 200
    assert len(audit_of(world, uid, "subject.restricted")) == 1
    page = people.get(f"/p/preferences/{token}")
    assert 'name="ground"' not in page.text and "The processing of your data is restricted" in words(
        page.text
    )
    stale = act(people, token, "restrict", {"ground": "unlawful", "lang": "en"})
    assert "restricted already" in stale and mails_with(world, "/p/restrict/") == 1
    # Lifted by ops later: the used link no longer shows a restriction that does not hold.
    world.ledger.restrict(EMAIL, restricted=False, reason="checked: the data is right", actor="ops")
    lifted = people.get(link)
    assert lifted.status_code == 410 and "was lifted since" in lifted.text
    assert not world.ledger.subject_view(EMAIL)["restricted"]
    assert people.post(link).status_code == 410 and not world.ledger.subject_view(EMAIL)["restricted"]
    # The service itself says so too, never "restricted already".
    with pytest.raises(LinkRefused, match="was lifted since"):
        PreferenceCentre(world.hub).confirm_restriction(link.rsplit("/", 1)[1].split("?", 1)[0])


def test_a_restriction_link_that_expired_or_outlived_the_record_restricts_nothing(
    world: HubWorld, people: TestClient
) -> None:
    uid = seed(world)
    token = token_of(world, uid)
    act(people, token, "restrict", {"ground": "objection"})
    link = mailed(world, "/p/restrict/")
    changed = link[:-2] + ("AA" if not link.endswith("AA") else "BB")
    assert people.get(changed).status_code == 403
    assert people.post(changed).status_code == 403
    world.clock.advance(days=world.hub.settings.confirmation_days + 1)
    assert people.get(link).status_code == 410
    assert people.post(link).status_code == 410
    assert not world.ledger.subject_view(EMAIL)["restricted"]
    # A new request after erasure: its link opens nothing of the erased record.
    act(people, token_of(world, uid), "restrict", {"ground": "objection"})
    fresh = mailed(world, "/p/restrict/")
    world.ledger.erase(EMAIL, reason="asked by mail", actor="ops")
    gone = people.post(fresh)
    assert gone.status_code == 410 and "the record was erased" in gone.text.lower()


def test_a_restriction_whose_mail_could_not_go_says_so_and_stays_on_record(
    world: HubWorld, people: TestClient
) -> None:
    uid = seed(world)
    token = token_of(world, uid)
    smtp_down(world)
    shown = act(people, token, "restrict", {"ground": "legal_claims"})
    assert "We could not send the confirmation mail just now." in shown
    assert len(audit_of(world, uid, "subject.restriction_requested")) == 1  # the request came


def test_asking_again_after_a_mail_that_did_not_go_sends_one(world: HubWorld, people: TestClient) -> None:
    """The request whose mail failed does not answer the next press with "we sent you a mail"."""
    token = token_of(world, seed(world))
    working = world.hub.mailer
    for action, data, link in (
        ("erase", {"lang": "en"}, "/p/erase/"),
        ("restrict", {"ground": "accuracy", "lang": "en"}, "/p/restrict/"),
    ):
        smtp_down(world)
        assert "We could not send the confirmation mail just now." in act(people, token, action, data)
        world.hub.mailer = working
        world.clock.advance(minutes=1)
        shown = act(people, token, action, data)
        assert "We sent you a mail." in shown
        assert mails_with(world, link) == 1, f"{action}: the page said a mail went that did not"


def test_the_restriction_speaks_german(world: HubWorld, people: TestClient) -> None:
    token = token_of(world, seed(world))
    page = words(people.get(f"/p/preferences/{token}", headers={"Accept-Language": "de"}).text)
    assert "Die Verarbeitung Ihrer Daten einschränken (Art. 18 DSGVO)" in page
    shown = act(people, token, "restrict", {"ground": "unlawful", "lang": "de"})
    assert "Wir haben Ihnen eine E-Mail geschickt." in shown
    assert "einzuschränken" in world.inbox.text()
    link = urlsplit(world.inbox.full_link("/p/restrict/"))
    opened = people.get(f"{link.path}?{link.query}", headers={"Accept-Language": "en"})
    assert "Ja, die Verarbeitung einschränken" in opened.text


@pytest.mark.usefixtures("info_logs")
def test_the_restriction_link_is_never_logged(world: HubWorld, people: TestClient) -> None:
    token = token_of(world, seed(world))
    with capture_logs() as logs:
        act(people, token, "restrict", {"ground": "accuracy"})
        link = mailed(world, "/p/restrict/")
        people.get(link)
        people.post(link)
        people.get(link + "x")
    secret = link.rsplit("/", 1)[1]
    assert logs and secret not in repr(logs) and token not in repr(logs) and EMAIL not in repr(logs)


# -- 4. the capture API says what it did ------------------------------------------------------


@pytest.mark.usefixtures("info_logs")
def test_the_capture_api_never_says_a_confirmation_was_mailed_that_was_not(world: HubWorld) -> None:
    smtp_down(world)
    signup = {**GRANT, "purpose": "email_marketing", "email": "eve@example.test"}
    with capture_logs() as logs:
        answer = world.post("/consents", signup)
    assert answer.status_code == 201
    result = answer.json()["results"][0]
    assert result["recorded"] == "requested"
    assert result["confirmation"] == "queued", "the answer went before the mail: it cannot say mailed"
    assert not world.inbox.messages
    failed = [entry for entry in logs if entry.get("event") == "hub.mail_failed"]
    assert [entry["kind"] for entry in failed] == ["double_opt_in"]
    assert "eve@" not in repr(logs)
    # The sign-up stands (the person did sign up): nobody may be contacted on it yet.
    assert world.ledger.decision_for("eve@example.test", "email_marketing", "email")[1].suppressed


def test_the_centre_declines_only_what_waits(world: HubWorld) -> None:
    """The service refuses a decline the page would never send (a script may)."""
    from consentsync.domain import InvalidInput

    token = token_of(world, seed(world))
    centre = PreferenceCentre(world.hub)
    person = centre.person(token)
    visitor = centre.visitor("192.0.2.1", "ua")
    with pytest.raises(InvalidInput, match="nothing to decline"):
        centre.decline(person, "newsletter", "email", visitor=visitor)
    assert centre.decline(person, "email_marketing", "email", visitor=visitor)["recorded"] == "refused"
