"""Consent requests and renewals record the language of the notice text their mail shows
(migration 0021): the ``requested`` event and the link's confirmation row name it, as a sign-up's
do, and the grant made by following the link names the same text.

Before, outreach recorded no language: a version whose first text is German, its English text
registered after, had the request mailed (and its page shown) in English, and the request's
proof named the German text. A purpose whose version has no text in the mail's language names
the version's first text, as the confirmation page shows and records it
(``notices.text_shown_on_page``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from consentsync.config import write_starter
from consentsync.domain import ConsentStatus, LawfulBasis
from consentsync.hub import notices
from consentsync.hub.outreach import Outreacher
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import confirmations, consent_events
from tests.conftest import SQLITE_ONLY, Cli
from tests.hub.conftest import NOTICE_IN_EFFECT, HubWorld
from tests.hub.people_world import GRANT, people_pages
from tests.integration.helpers import consent_value

FIXTURES = (people_pages,)  # `people`: the preference centre's pages, in-process

EMAIL = "ada@example.test"
GERMAN = "Einmal im Monat: unser Newsletter. Abbestellen jederzeit."
ENGLISH = "Once a month: our newsletter. Unsubscribe at any time."
FRENCH = "Nos mises à jour, une fois par mois. Désabonnement à tout moment."
FRENCH_SHA = hashlib.sha256(FRENCH.encode()).hexdigest()
ENGLISH_SHA = hashlib.sha256(ENGLISH.encode()).hexdigest()
# A consent purpose (not marketing: asked of customers) whose texts are in French and German only.
UPDATES = {"key": "updates", "name": "Updates", "default_basis": "consent", "channels": ["email"]}


@pytest.fixture
def config_path(tmp_path: Path, ledger_url: str) -> Path:
    """The starter config with ``UPDATES`` beside its purposes (the world adds the rest)."""
    path = tmp_path / "consentsync.yaml"
    write_starter(path, ledger_url)
    data = yaml.safe_load(path.read_text())
    data["purposes"].append(UPDATES)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def customer(world: HubWorld, email: str = EMAIL) -> None:
    """A person known through a contract, with nothing on record for the asked purposes."""
    now = world.ledger.clock()
    value = consent_value(
        ConsentStatus.NOT_APPLICABLE, now, now, purpose="service", basis=LawfulBasis.CONTRACT, source="ops"
    )
    world.ledger.record(Identity(email=email), value)


def german_first(world: HubWorld, purpose: str, version: str) -> None:
    """``version`` of ``purpose`` with a German text registered first, its English one after."""
    for language, text in (("de", GERMAN), ("en", ENGLISH)):
        notices.add(world.ledger, purpose, version, text, language=language, in_effect_from=NOTICE_IN_EFFECT)


def opened_language(world: HubWorld, kind: str) -> str | None:
    with world.ledger.engine.connect() as conn:
        return conn.execute(
            select(confirmations.c.notice_language).where(confirmations.c.kind == kind)
        ).scalar_one()


def event_language(world: HubWorld, status: str) -> tuple[str | None, str | None]:
    """The notice version and language recorded on the person's one event of ``status``."""
    with world.ledger.engine.connect() as conn:
        row = conn.execute(
            select(consent_events.c.notice_version, consent_events.c.notice_language).where(
                consent_events.c.status == status, consent_events.c.purpose != "service"
            )
        ).one()
    return row.notice_version, row.notice_language


def exported(world: HubWorld, status: str) -> dict[str, object]:
    """The person's DSAR export entry of their one event of ``status`` on an asked purpose."""
    history = world.ledger.subject_view(EMAIL)["history"]
    (entry,) = [e for e in history if e["status"] == status and e["purpose"] != "service"]
    return entry


def confirm_by_mail(world: HubWorld, people: TestClient, page_text: str) -> None:
    """Follows the mailed link as it was sent (its ``?lang=``): the page shows ``page_text``."""
    link = urlsplit(world.inbox.full_link("/p/confirm/"))
    (lang,) = parse_qs(link.query)["lang"]
    page = people.get(link.path, params={"lang": lang})
    assert page.status_code == 200 and page_text in page.text
    world.clock.advance(minutes=5)
    assert people.post(link.path, data={"lang": lang}, follow_redirects=False).status_code == 303


@SQLITE_ONLY
def test_a_request_names_the_text_in_the_mails_language(
    world: HubWorld, people: TestClient, cli: Cli
) -> None:
    german_first(world, "newsletter", "2026-09")
    customer(world)
    world.inbox.messages.clear()
    done = Outreacher(world.hub, sleep=lambda _seconds: None).request_consent("newsletter")
    assert done.sent == 1
    # The mail is written in English and its link opens the page in English.
    assert parse_qs(urlsplit(world.inbox.full_link("/p/confirm/")).query)["lang"] == ["en"]
    assert opened_language(world, "request") == "en"
    assert event_language(world, "requested") == ("2026-09", "en")
    assert (
        exported(world, "requested")["notice_sha256"],
        exported(world, "requested")["notice_language"],
    ) == (
        ENGLISH_SHA,
        "en",
    )
    confirm_by_mail(world, people, ENGLISH)
    # The grant names the text the request named: the one the page showed.
    assert event_language(world, "granted") == ("2026-09", "en")
    granted = exported(world, "granted")
    assert (granted["notice_sha256"], granted["notice_language"]) == (ENGLISH_SHA, "en")
    # Each event's audit entry carries the language it recorded (docs/tamper-evidence.md).
    assert cli("audit", "verify").exit_code == 0


@SQLITE_ONLY
def test_a_version_without_a_text_in_the_mails_language_names_its_first_text(
    world: HubWorld, people: TestClient
) -> None:
    # French first, German after: no English text. The page shows the version's first text.
    for language, text in (("fr", FRENCH), ("de", GERMAN)):
        notices.add(world.ledger, "updates", "v1", text, language=language, in_effect_from=NOTICE_IN_EFFECT)
    customer(world)
    world.inbox.messages.clear()
    assert Outreacher(world.hub, sleep=lambda _seconds: None).request_consent("updates").sent == 1
    assert opened_language(world, "request") == "fr"
    assert event_language(world, "requested") == ("v1", "fr")
    confirm_by_mail(world, people, "Désabonnement à tout moment")
    assert event_language(world, "granted") == ("v1", "fr")
    for status in ("requested", "granted"):
        entry = exported(world, status)
        assert (entry["notice_sha256"], entry["notice_language"]) == (FRENCH_SHA, "fr"), status


@SQLITE_ONLY
def test_a_renewal_link_names_the_text_in_the_mails_language(world: HubWorld, people: TestClient) -> None:
    assert world.post("/consents", GRANT).status_code == 201
    world.clock.advance(days=340)
    german_first(world, "newsletter", "2027-05")  # a newer version, as a renewal may name
    world.inbox.messages.clear()
    assert Outreacher(world.hub, sleep=lambda _seconds: None).renew().sent == 1
    assert parse_qs(urlsplit(world.inbox.full_link("/p/confirm/")).query)["lang"] == ["en"]
    assert opened_language(world, "renewal") == "en"
    # A renewal records no event until it is confirmed: the consent stays granted meanwhile.
    confirm_by_mail(world, people, ENGLISH)
    with world.ledger.engine.connect() as conn:
        renewed = conn.execute(
            select(consent_events.c.notice_version, consent_events.c.notice_language)
            .where(consent_events.c.status == "granted")
            .order_by(consent_events.c.id.desc())
        ).first()
    assert renewed is not None and tuple(renewed) == ("2027-05", "en")


@SQLITE_ONLY
def test_a_hub_offering_german_first_mails_and_records_german(world: HubWorld, people: TestClient) -> None:
    """Nobody asked for a language: the hub's default, the first of hub.languages, as the capture
    API's, not English whatever the hub offers (a page opened in a language it does not offer
    would fall back to the browser's, and the grant name another text than the request)."""
    world.hub.settings = world.hub.settings.model_copy(update={"languages": ["de", "en"]})
    german_first(world, "newsletter", "2026-09")
    customer(world)
    world.inbox.messages.clear()
    assert Outreacher(world.hub, sleep=lambda _seconds: None).request_consent("newsletter").sent == 1
    assert parse_qs(urlsplit(world.inbox.full_link("/p/confirm/")).query)["lang"] == ["de"]
    assert opened_language(world, "request") == "de"
    assert event_language(world, "requested") == ("2026-09", "de")
    confirm_by_mail(world, people, GERMAN)
    assert event_language(world, "granted") == ("2026-09", "de")
