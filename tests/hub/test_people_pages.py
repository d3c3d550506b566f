"""The preference centre's pages through FastAPI's test client, on SQLite (the service calls behind
them run on both databases in test_preferences.py and test_capture_api.py): the
page shows each purpose with state, basis and notice; every action is a form that records
evidence and redirects back with a message; links from mails confirm only on POST; a changed
or old link is refused with a page; the headers keep the token private; German is shipped."""

from __future__ import annotations

import json
import re
import secrets
from datetime import timedelta
from io import BytesIO
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlalchemy import select
from structlog.testing import capture_logs

from consentsync import audit
from consentsync.config import BrandingSettings
from consentsync.hub import confirmation_terms, i18n
from consentsync.hub.capture import Hub, token_digest
from consentsync.hub.links import make_token
from consentsync.hub.people import brand_css, content_security_policy, mask_email
from consentsync.hub.preferences import PreferenceCentre
from consentsync.ledger.schema import subjects
from tests.hub.conftest import HubWorld
from tests.hub.people_world import (
    EMAIL,
    mailed,
    mails_with,
    mounted,
    page_texts,
    people_pages,
    seed,
    sqlite_ledger_url,
    token_of,
)

# The module's fixtures: `ledger_url` (SQLite only here) and `people` (the pages, in-process).
FIXTURES = (sqlite_ledger_url, people_pages)


@pytest.fixture
def token(world: HubWorld) -> str:
    return token_of(world, seed(world))


def page(people: TestClient, token: str, **query: str) -> Any:
    response = people.get(f"/p/preferences/{token}", params=query)
    assert response.status_code == 200, response.text
    return response


def act(people: TestClient, token: str, action: str, data: dict[str, str]) -> Any:
    """Sends a page's form; answers the page it redirects to (Post/Redirect/Get)."""
    response = people.post(f"/p/preferences/{token}/{action}", data=data, follow_redirects=False)
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(f"/p/preferences/{token}?"), location
    return people.get(location)


def text_of(html: str) -> str:
    """The page's words, without tags (what a person reads)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


BOB = "bob@example.test"
GRANT_OF_BOB = {"email": BOB, "purpose": "newsletter", "notice_version": "2026-05"}


def newest_event(world: HubWorld, purpose: str, channel: str = "email") -> dict[str, Any]:
    history = world.ledger.subject_view(EMAIL)["history"]
    return [e for e in history if e["purpose"] == purpose and e["channel"] == channel][-1]


def test_the_page_shows_each_purpose_with_state_basis_and_notice(
    world: HubWorld, people: TestClient, token: str
) -> None:
    response = page(people, token)
    words = text_of(response.text)
    assert "Globex privacy" in words and "a•••@example.test" in words
    assert EMAIL not in response.text  # the address is not spelled out to whoever has the link
    assert "Newsletter" in words and "Our monthly newsletter." in words
    assert "We send our newsletter about once a month." in words and "Notice version 2026-05" in words
    assert "Yes: you agreed" in words and "Basis: your consent" in words
    assert "Waiting for your confirmation" in words  # email marketing: the double opt-in pending
    # Not consent: no switch, and why; legitimate interests: an objection instead.
    assert "we rely on our contract with you, so it cannot be switched on or off here" in words
    assert "Email, Phone, Text message (SMS), Post We do this" in words  # one line, and true: we do
    assert "we rely on our legitimate interests" in words and "Art. 21 GDPR" in words
    assert words.count("Withdraw consent") == 1 and words.count("I agree") == 1
    assert "Art. 15 GDPR" in words and "Art. 17 GDPR" in words
    # Plain forms, no script at all.
    assert "<script" not in response.text
    assert set(re.findall(r'<form method="(\w+)"', response.text)) == {"post"}


@pytest.mark.parametrize("shown", [None, "2026-01"], ids=["no-version", "older-version"])
def test_a_grant_that_does_not_name_the_current_notice_records_nothing(
    world: HubWorld, people: TestClient, token: str, shown: str | None
) -> None:
    """The proof of a consent names the text the person read: a form that names another version
    (registered while the page was open) or none at all (a page of an older release, a hand-made
    client) records nothing and shows the text now current to choose on (black-box finding F7:
    the current version was stamped on a grant that named none)."""
    form = {"purpose": "newsletter", "channel": "email", "lang": "en"}
    act(people, token, "choose", {**form, "action": "withdraw"})
    world.clock.advance(minutes=5)
    grant = {**form, "action": "grant"} | ({"notice_version": shown} if shown else {})
    words = text_of(act(people, token, "choose", grant).text)
    assert "changed while your page was open, so nothing was recorded" in words
    assert newest_event(world, "newsletter")["status"] == "withdrawn"
    act(people, token, "choose", {**form, "action": "grant", "notice_version": "2026-05"})
    # A grant over the withdrawal is confirmed through the mailed link first (docs/hub.md).
    people.post(mailed(world, "/p/confirm/"), data={"lang": "en"})
    granted = newest_event(world, "newsletter")
    assert (granted["status"], granted["notice_version"]) == ("granted", "2026-05")


def test_a_consent_a_restriction_stops_says_stopped_not_agreed(
    world: HubWorld, people: TestClient, token: str
) -> None:
    """The newsletter was agreed to; restricted (Art. 18), it is not sent: the page says
    "Stopped for you", as for every other purpose the restriction stops, not "Yes: you agreed"
    (black-box finding F4). Lifted, the person's own words come back."""
    world.ledger.restrict(EMAIL, restricted=True, reason="accuracy contested, ticket 58")
    words = text_of(page(people, token).text)
    assert "Yes: you agreed" not in words
    assert "Newsletter" in words and "Stopped for you" in words
    world.ledger.restrict(EMAIL, restricted=False, reason="accuracy confirmed")
    assert "Yes: you agreed" in text_of(page(people, token).text)


def test_the_headers_keep_the_token_private(people: TestClient, token: str) -> None:
    for response in (page(people, token), people.get("/p/preferences/not-a-token")):
        headers = response.headers
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
        assert headers["x-robots-tag"].startswith("noindex")
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "'unsafe-inline'" not in csp
        assert "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert '<meta name="referrer" content="no-referrer">' in page(people, token).text


def test_withdraw_and_grant_are_evidence_and_redirect_back_with_a_message(
    world: HubWorld, people: TestClient, token: str
) -> None:
    form = {"purpose": "newsletter", "channel": "email", "lang": "en"}
    world.clock.advance(minutes=5)
    shown = act(people, token, "choose", {**form, "action": "withdraw"})
    assert "Done: you withdrew your consent to Newsletter (Email)." in text_of(shown.text)
    assert "No: you withdrew your consent" in text_of(shown.text)
    event = newest_event(world, "newsletter")
    assert (event["status"], event["source"], event["notice_version"]) == (
        "withdrawn",
        "preference_center",
        "2026-05",
    )
    # The visitor as keyed hashes of the socket's peer and the user agent, never themselves.
    visitor = PreferenceCentre(world.hub).visitor("testclient", "testclient")
    assert event["evidence_ref"] == visitor.evidence_ref
    world.clock.advance(minutes=5)
    shown = act(people, token, "choose", {**form, "action": "grant", "notice_version": "2026-05"})
    # Over the withdrawal: confirmed through the mailed link first (docs/hub.md).
    assert "You had said no to Newsletter (Email). We sent you a mail" in text_of(shown.text)
    assert newest_event(world, "newsletter")["status"] == "withdrawn"
    people.post(mailed(world, "/p/confirm/"), data={"lang": "en"})
    granted = newest_event(world, "newsletter")
    assert (granted["status"], granted["notice_version"]) == ("granted", "2026-05")
    decision = world.hub.ledger.decision_for(EMAIL, "newsletter", "email")[1]
    assert not decision.suppressed


def test_a_choice_offers_its_receipt(world: HubWorld, people: TestClient, token: str) -> None:
    form = {"purpose": "newsletter", "channel": "email", "action": "withdraw", "lang": "en"}
    world.clock.advance(minutes=5)
    shown = act(people, token, "choose", form)
    found = re.search(r'<a href="(/p/preferences/[^"]+/receipt/([0-9a-f]{64}))" download>', shown.text)
    assert found and "Download your receipt (JSON)" in shown.text
    receipt = people.get(found.group(1))
    assert receipt.status_code == 200 and receipt.headers["cache-control"] == "no-store"
    assert receipt.headers["content-disposition"].startswith('attachment; filename="consent-receipt-')
    document = receipt.json()
    assert document["events"][0]["event_state"] and EMAIL not in receipt.text
    assert world.hub.receipt(uid_of(token), found.group(2)) == document
    # Only this person's records, by their id: anything else is no page.
    bob = world.post("/consents", {**GRANT_OF_BOB, "status": "withdrawn"}).json()["results"][0]
    assert bob["subject"] != uid_of(token) and re.fullmatch("[0-9a-f]{64}", bob["record_id"])
    assert world.hub.receipt(bob["subject"], bob["record_id"])  # Bob's, through Bob's link only
    for record in (bob["record_id"], "f" * 64, "not-a-record"):
        assert people.get(f"/p/preferences/{token}/receipt/{record}").status_code == 404
    assert people.get(f"/p/preferences/{tampered(token)}/receipt/{found.group(2)}").status_code == 403


def test_what_cannot_be_chosen_is_refused(world: HubWorld, people: TestClient, token: str) -> None:
    before = len(world.ledger.subject_view(EMAIL)["history"])
    for data in (
        {"purpose": "service", "channel": "email", "action": "grant"},  # contract: not consent
        {"purpose": "newsletter", "channel": "post", "action": "grant"},  # not its channel
        {"purpose": "nothing", "channel": "email", "action": "grant"},
        {"purpose": "newsletter", "channel": "email", "action": "delete"},
        {"purpose": "newsletter"},
    ):
        response = people.post(f"/p/preferences/{token}/choose", data=data)
        assert response.status_code == 400, data
        assert "This form cannot be sent like this." in response.text
    assert people.post(f"/p/preferences/{token}/object", data={"purpose": "newsletter"}).status_code == 400
    assert len(world.ledger.subject_view(EMAIL)["history"]) == before


def test_an_objection_is_recorded_and_shown(world: HubWorld, people: TestClient, token: str) -> None:
    shown = act(people, token, "object", {"purpose": "profiling", "lang": "en"})
    words = text_of(shown.text)
    assert "We received your objection to Profiling and segmentation and will answer you." in words
    assert "We are looking at your objection" in words
    assert 'name="purpose" value="profiling"' not in shown.text  # no second objection meanwhile
    (objection,) = world.ledger.subject_view(EMAIL)["objections"]
    assert (objection["purpose"], objection["status"], objection["source"]) == (
        "profiling",
        "pending",
        "preference_center",
    )


@pytest.mark.parametrize("fmt", ["json", "csv", "xlsx"])
def test_the_record_downloads_as_the_console_exports_it(
    world: HubWorld, people: TestClient, token: str, fmt: str
) -> None:
    # The page mails a download link (docs/hub.md); the copy comes from that link.
    people.post(f"/p/preferences/{token}/export", data={})
    link = mailed(world, "/p/export/")
    response = people.post(link, data={"format": fmt})
    assert response.status_code == 200
    assert response.headers["content-disposition"] == f'attachment; filename="my-data-2026-06-01.{fmt}"'
    assert response.headers["cache-control"] == "no-store"
    if fmt == "json":
        view = json.loads(response.content)
        assert view["email"] == EMAIL and {p["purpose"] for p in view["purposes"]} >= {"newsletter"}
    elif fmt == "csv":
        assert response.headers["content-type"].startswith("text/csv")
        assert "newsletter" in response.text and uid_of(token) in response.text
    else:
        sheets = load_workbook(BytesIO(response.content)).sheetnames
        assert len(sheets) > 1
    uid = world.ledger.subject_uids_for_email(EMAIL)[0]
    with world.ledger.engine.connect() as conn:
        reads = list(audit.entries(conn, subject_uids=[uid], action="subject.exported"))
    assert [(e["actor"], e["source"]) for e in reads] == [("data subject", "preference_center")]
    assert people.post(link, data={"format": "pdf"}).status_code == 400


def test_erasure_is_asked_on_the_page_and_done_through_the_mailed_link(
    world: HubWorld, people: TestClient, token: str
) -> None:
    shown = act(people, token, "erase", {"lang": "en"})
    assert "We sent you a mail." in text_of(shown.text)
    path = mailed(world, "/p/erase/")
    # Opening the link (as a mail scanner does) erases nothing: it asks.
    for _ in range(2):
        asked = people.get(path)
        assert asked.status_code == 200 and "Yes, erase my data" in asked.text
    assert world.ledger.email_of(uid_of(token)) == EMAIL
    done = people.post(path, data={"lang": "en"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/p/erased?lang=en"
    assert "We erased your data." in people.get(done.headers["location"]).text
    assert world.ledger.email_of(uid_of(token)) is None
    again = people.get(path)
    assert again.status_code == 410 and "already" in again.text
    assert people.post(path).status_code == 410
    gone = people.get(f"/p/preferences/{token}")
    assert gone.status_code == 410 and "the record was erased" in gone.text.lower()


def uid_of(token: str) -> str:
    """Whom a preference link names (read without checking it: the test made it)."""
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


def test_a_double_opt_in_is_confirmed_on_post_only(world: HubWorld, people: TestClient, token: str) -> None:
    path = mailed(world, "/p/confirm/")
    asked = people.get(path)
    assert asked.status_code == 200
    words = text_of(asked.text)
    assert "You asked to receive Email marketing (Email). Please confirm that it was you." in words
    assert world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].status.value == "requested"
    world.clock.advance(minutes=10)
    done = people.post(path, data={"lang": "en"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == path + "?lang=en"
    shown = people.get(done.headers["location"])
    assert "Thank you: you confirmed" in shown.text and "Yes, I confirm" not in shown.text
    assert world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].status.value == "granted"
    assert (
        people.post(path, follow_redirects=False).status_code == 303
    )  # a second confirmation changes nothing


def test_an_erasure_link_confirms_no_double_opt_in(world: HubWorld, people: TestClient, token: str) -> None:
    act(people, token, "erase", {})
    erasure = mailed(world, "/p/erase/").rsplit("/", 1)[1]
    before = world.ledger.subject_view(EMAIL)["history"]
    assert people.get(f"/p/confirm/{erasure}").status_code == 403
    assert people.post(f"/p/confirm/{erasure}").status_code == 403
    assert world.ledger.subject_view(EMAIL)["history"] == before
    # And a double opt-in's link erases no one.
    confirm = mailed(world, "/p/confirm/").rsplit("/", 1)[1]
    assert people.post(f"/p/erase/{confirm}").status_code == 403
    assert world.ledger.email_of(uid_of(token)) == EMAIL


def open_confirmation(world: HubWorld, kind: str, purpose: str = "newsletter") -> str:
    """A consent request or renewal link as the hub mails one: its token (the row by hand,
    so that the page is tested whatever sends them)."""
    raw = secrets.token_urlsafe(32)
    now = world.clock()
    with world.ledger.engine.begin() as conn:
        subject_id = conn.execute(select(subjects.c.id)).scalars().first()
        # Opened as the hub opens one: its terms bound in the chain (an unbound row is refused).
        confirmation_terms.open_confirmation(
            conn, now, token_hash=token_digest(raw), kind=kind, subject_id=subject_id, purpose=purpose,
            channel="email", notice_version="2026-05", source="test", expires_at=now + timedelta(days=7),
            actor="test",
        )  # fmt: skip
    return raw


@pytest.mark.parametrize(
    ("kind", "asked", "done"),
    [
        (
            "request",
            "We would like to send you Newsletter (Email). Do you agree?",
            "you agreed to Newsletter",
        ),
        ("renewal", "Your consent to Newsletter (Email) runs out soon.", "is renewed"),
    ],
)
def test_a_consent_request_and_a_renewal_are_confirmed_on_post(
    world: HubWorld, people: TestClient, token: str, kind: str, asked: str, done: str
) -> None:
    link = f"/p/confirm/{open_confirmation(world, kind)}"
    assert asked in text_of(people.get(link).text)
    world.clock.advance(minutes=1)
    shown = people.post(link, data={"lang": "en"})
    assert shown.status_code == 200 and done in shown.text
    assert newest_event(world, "newsletter")["double_opt_in_at"] is not None


def tampered(token: str) -> str:
    return token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")


def test_a_changed_or_old_link_is_refused_with_a_page(
    world: HubWorld, people: TestClient, token: str
) -> None:
    confirm = mailed(world, "/p/confirm/")
    with capture_logs() as logs:
        for path in (
            f"/p/preferences/{tampered(token)}",
            f"/p/preferences/{token[:40]}",
            f"/p/preferences/{'x' * 5000}",
            tampered(confirm),
            "/p/erase/not-a-link",
        ):
            response = people.get(path)
            assert response.status_code == 403, path
            assert "does not work" in response.text and "Traceback" not in response.text
        grant = {"purpose": "newsletter", "channel": "email", "action": "grant", "notice_version": "2026-05"}
        for action, data in (("choose", grant),
                             ("object", {"purpose": "profiling"}), ("export", {"format": "json"}),
                             ("erase", {})):  # fmt: skip
            assert people.post(f"/p/preferences/{tampered(token)}/{action}", data=data).status_code == 403
        assert people.post(tampered(confirm)).status_code == 403
    assert mails_with(world, "/p/erase/") == 0  # no erasure mail for a bad link
    assert token not in repr(logs) and tampered(token) not in repr(logs)

    world.clock.advance(days=world.hub.settings.link_days + 1)
    old = people.get(f"/p/preferences/{token}")
    assert old.status_code == 410
    assert "This link has expired" in old.text and "This link has expired: ask for a new one." in old.text
    assert people.get(confirm).status_code == 410  # past confirmation_days too
    assert people.post(confirm).status_code == 410
    assert world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].status.value == "requested"


def test_the_page_speaks_german(world: HubWorld, people: TestClient, token: str) -> None:
    by_browser = people.get(f"/p/preferences/{token}", headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"})
    assert '<html lang="de">' in by_browser.text
    words = text_of(by_browser.text)
    assert "Ihre Datenschutzeinstellungen" in words and "Rechtsgrundlage: Ihre Einwilligung" in words
    assert "Einwilligung widerrufen" in words and "Servicenachrichten" in words
    assert f'href="/p/preferences/{token}?lang=en"' in by_browser.text  # the switch back
    chosen = page(people, token, lang="en")
    assert '<html lang="en">' in chosen.text and 'hreflang="de"' in chosen.text
    # The language goes through the form and comes back in the redirect.
    form = {"purpose": "newsletter", "channel": "email", "action": "withdraw", "lang": "de"}
    shown = act(people, token, "choose", form)
    assert "Erledigt: Sie haben Ihre Einwilligung in Newsletter (E-Mail) widerrufen." in text_of(shown.text)
    refused = people.get(f"/p/preferences/{tampered(token)}?lang=de")
    assert "Dieser Link ist ungültig" in refused.text
    # The erasure mail goes out in the page's language.
    act(people, token, "erase", {"lang": "de"})
    index = next(i for i in range(len(world.inbox.messages)) if "/p/erase/" in world.inbox.text(i))
    assert world.inbox.messages[index]["Subject"] == "Bitte bestätigen Sie die Löschung Ihrer Daten"
    assert "Sie haben uns gebeten, Ihre Daten zu löschen." in world.inbox.text(index)


@pytest.mark.usefixtures("info_logs")
def test_logs_name_the_subject_never_the_token(world: HubWorld, people: TestClient, token: str) -> None:
    uid = uid_of(token)
    with capture_logs() as logs:
        page(people, token)
        act(people, token, "choose", {"purpose": "newsletter", "channel": "email", "action": "withdraw"})
        act(people, token, "erase", {})
        erase = mailed(world, "/p/erase/")
        people.get(erase)
        people.post(erase)
    text = repr(logs)
    assert uid in text
    assert token not in text and erase.rsplit("/", 1)[1] not in text and EMAIL not in text
    assert {"/preferences/{token}", "/erase/{token}"} <= {e.get("path") for e in logs}


def test_a_failure_is_a_page_without_details(
    world: HubWorld, people: TestClient, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_self: Any, person: Any) -> Any:
        raise RuntimeError(f"the database fell over while reading {person.email}")

    monkeypatch.setattr(PreferenceCentre, "export", broken)
    people.post(f"/p/preferences/{token}/export", data={})
    link = mailed(world, "/p/export/")
    with capture_logs() as logs:
        response = people.post(link, data={"format": "json"})
    assert response.status_code == 500
    assert "Please try again later." in response.text and EMAIL not in response.text
    assert EMAIL not in repr(logs) and token not in repr(logs)
    assert link.rsplit("/", 1)[1] not in repr(logs)
    assert response.headers["referrer-policy"] == "no-referrer"
    assert people.get("/p/nothing-here").status_code == 404


def test_branding_comes_from_the_config(world: HubWorld, token: str) -> None:
    branding = BrandingSettings(
        name="Globex privacy",
        logo_url="https://cdn.example.test/logo.svg",
        privacy_policy_url="https://example.test/privacy",
        contact_email="privacy@example.test",
        primary_colour="#ffd500",  # light: the text on it must be dark, and links darker
    )
    hub = Hub(world.hub.config, world.ledger, world.hub.mailer)
    hub.settings = hub.settings.model_copy(update={"branding": branding})
    with TestClient(mounted(hub)) as client:
        html = page(client, token).text
        css = client.get("/p/brand.css")
        csp = css.headers["content-security-policy"]
    assert '<img src="https://cdn.example.test/logo.svg" alt="" class="logo">' in html
    assert 'href="https://example.test/privacy"' in html and "mailto:privacy@example.test" in html
    assert css.headers["content-type"].startswith("text/css")
    assert "--brand: #ffd500" in css.text and "--on-brand: #000000" in css.text
    assert "--brand-ink: #1b1f24" in css.text
    assert "img-src 'self' data: https://cdn.example.test;" in csp


def test_the_brand_colour_reaches_css_only_as_a_colour() -> None:
    dark = brand_css(BrandingSettings())
    assert dark == ":root { --brand: #1f4e79; --on-brand: #ffffff; --brand-ink: #1f4e79; }\n"
    sneaky = BrandingSettings.model_construct(primary_colour="red; } body { display: none")
    assert "display" not in brand_css(sneaky) and "#1f4e79" in brand_css(sneaky)
    odd_logo = BrandingSettings(logo_url="javascript:alert(1)")
    assert "javascript" not in content_security_policy(odd_logo)
    assert mask_email("ada@example.test") == "a•••@example.test"


def test_the_german_catalogue_has_every_page_and_mail_text() -> None:
    german = i18n.catalogue("de")
    missing = sorted(page_texts() - set(german))
    assert not missing, f"de.json lacks: {missing}"
    for english, translated in german.items():
        placeholders = set(re.findall(r"\{(\w+)\}", english))
        assert set(re.findall(r"\{(\w+)\}", translated)) == placeholders, english
    assert i18n.catalogue("en") == {}  # English is the key


def test_a_link_for_someone_else_opens_nothing_of_theirs(world: HubWorld, people: TestClient) -> None:
    foreign = make_token(world.ledger, "no-such-subject", days=1)
    response = people.get(f"/p/preferences/{foreign}")
    assert response.status_code == 410 and "the record was erased" in response.text.lower()
