"""A consent event records the language of the notice text the person was shown (migration
0021), and every proof of it names that text: the receipt fetched in any language, the receipt
mailed and the DSAR export (Art. 7(1): the controller must show what the person was shown).

Before, a version with texts in effect in two languages (en and de) had its events name the
version's first-registered text (English), also for a person who was shown, and consented on,
the German one: through the capture API (``language``), on the preference page in German and on
a confirmation page in German. An event recorded without a language keeps that rule."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import DBAPIError

from consentsync import exit_codes
from consentsync.domain import ConsentStatus, Evidence, InvalidInput, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.migrate import alembic_config, upgrade
from consentsync.ledger.schema import confirmations, consent_events
from tests.conftest import Cli
from tests.hub.conftest import NEWSLETTER_NOTICE, HubWorld, in_german
from tests.hub.people_world import mailed, people_pages, token_of
from tests.integration.helpers import consent_value
from tests.integration.test_tamper_evidence import _as_owner_unprotected

FIXTURES = (people_pages,)  # `people`: the preference centre's pages, in-process

EMAIL = "ada@example.test"
GRANT = {"email": EMAIL, "purpose": "newsletter", "status": "granted", "notice_version": "2026-05"}
# in_german's text: in effect as long as the English one.
GERMAN = "Wir senden unseren Newsletter etwa einmal im Monat. Abbestellen jederzeit."
ENGLISH_SHA = hashlib.sha256(NEWSLETTER_NOTICE.encode()).hexdigest()
GERMAN_SHA = hashlib.sha256(GERMAN.encode()).hexdigest()


def receipt(world: HubWorld, uid: str, record_id: str, language: str) -> dict[str, Any]:
    path = f"/receipts/{uid}/{record_id}"
    answer = world.client.get(path, params={"language": language}, headers=world.auth())
    assert answer.status_code == 200, answer.text
    return answer.json()


def exported(world: HubWorld, record_id: str) -> dict[str, Any]:
    """The event's entry in the DSAR export (``subject_view``), found by its fingerprint."""
    with world.ledger.engine.connect() as conn:
        event_id = conn.execute(
            select(consent_events.c.id).where(consent_events.c.fingerprint == record_id)
        ).scalar_one()
        ordered = list(conn.execute(select(consent_events.c.id).order_by(consent_events.c.id)).scalars())
    history = world.ledger.subject_view(EMAIL)["history"]
    return history[ordered.index(event_id)]


def assert_names(world: HubWorld, uid: str, record_id: str, sha: str, language: str) -> None:
    """The receipt asked in English and in German, and the export, name the one text."""
    for asked in ("en", "de"):
        notice = receipt(world, uid, record_id, asked)["notice"]
        assert (notice["content_sha256"], notice["language"]) == (sha, language), asked
    entry = exported(world, record_id)
    assert (entry["notice_sha256"], entry["notice_language"]) == (sha, language)


def mailed_receipt(world: HubWorld, record_id: str) -> dict[str, Any]:
    for message in world.inbox.messages:
        for part in message.iter_attachments():
            if str(part.get_filename()).startswith("consent-receipt-"):
                document = json.loads(part.get_content())
                if document["record_id"] == record_id:
                    return document
    raise AssertionError(f"no receipt of {record_id} was mailed")


def stored_language(world: HubWorld, record_id: str) -> str | None:
    with world.ledger.engine.connect() as conn:
        return conn.execute(
            select(consent_events.c.notice_language).where(consent_events.c.fingerprint == record_id)
        ).scalar_one()


def test_a_capture_names_the_text_in_the_language_it_was_shown_in(world: HubWorld) -> None:
    in_german(world.ledger, "newsletter")
    german = world.post("/consents", {**GRANT, "language": "de"}).json()["results"][0]
    uid = german["subject"]
    assert stored_language(world, german["record_id"]) == "de"
    assert_names(world, uid, german["record_id"], GERMAN_SHA, "de")
    assert mailed_receipt(world, german["record_id"])["notice"]["content_sha256"] == GERMAN_SHA
    world.clock.advance(minutes=1)
    english = world.post("/consents", {**GRANT, "language": "en"}).json()["results"][0]
    assert_names(world, uid, english["record_id"], ENGLISH_SHA, "en")
    assert mailed_receipt(world, english["record_id"])["notice"]["content_sha256"] == ENGLISH_SHA
    # A withdrawal naming the version, in German: its text too (a no is never refused for it).
    world.clock.advance(minutes=1)
    withdrawn = world.post("/consents", {**GRANT, "status": "withdrawn", "language": "de"}).json()
    assert_names(world, uid, withdrawn["results"][0]["record_id"], GERMAN_SHA, "de")


def test_the_preference_centre_in_german_names_the_german_text(world: HubWorld, people: TestClient) -> None:
    in_german(world.ledger, "newsletter")
    uid = world.post("/consents", GRANT).json()["results"][0]["subject"]  # shown in English
    token = token_of(world, uid)
    page = people.get(f"/p/preferences/{token}", params={"lang": "de"})
    assert page.status_code == 200 and "Abbestellen jederzeit" in page.text  # the German text shown
    record_ids = []
    for action in ("withdraw", "grant"):
        world.clock.advance(minutes=1)
        answer = people.post(
            f"/p/preferences/{token}/choose",
            data={
                "purpose": "newsletter",
                "channel": "email",
                "action": action,
                "notice_version": "2026-05",
                "lang": "de",
            },
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
        if action == "grant":  # over the withdrawal: recorded once the mailed link is confirmed
            confirmed = people.post(mailed(world, "/p/confirm/"), data={"lang": "de"}, follow_redirects=False)
            assert confirmed.status_code == 303, confirmed.text
            with world.ledger.engine.connect() as conn:
                record_id = conn.execute(
                    select(consent_events.c.fingerprint).order_by(consent_events.c.id.desc()).limit(1)
                ).scalar_one()
        else:
            (record_id,) = parse_qs(urlsplit(answer.headers["location"]).query)["receipt"]
        record_ids.append(record_id)
    for record_id in record_ids:
        assert stored_language(world, record_id) == "de"
        assert_names(world, uid, record_id, GERMAN_SHA, "de")
    # The same page in English: the English text.
    world.clock.advance(minutes=1)
    answer = people.post(
        f"/p/preferences/{token}/choose",
        data={"purpose": "newsletter", "channel": "email", "action": "withdraw", "notice_version": "2026-05"},
        headers={"Accept-Language": "en"},
        follow_redirects=False,
    )
    (record_id,) = parse_qs(urlsplit(answer.headers["location"]).query)["receipt"]
    assert_names(world, uid, record_id, ENGLISH_SHA, "en")


def test_a_double_opt_in_confirmed_on_the_german_page_names_the_german_text(
    world: HubWorld, people: TestClient
) -> None:
    in_german(world.ledger, "email_marketing")
    sign_up = {**GRANT, "purpose": "email_marketing", "language": "de"}
    answer = world.post("/consents", sign_up).json()["results"][0]
    assert answer["confirmation"] == "queued"
    with world.ledger.engine.connect() as conn:  # kept with the link until it is confirmed
        assert conn.execute(select(confirmations.c.notice_language)).scalar_one() == "de"
    link = urlsplit(world.inbox.full_link("/confirm/"))
    assert parse_qs(link.query)["lang"] == ["de"]
    page = people.get(link.path, params={"lang": "de"})
    assert page.status_code == 200 and "Abbestellen jederzeit" in page.text
    world.clock.advance(minutes=1)
    assert people.post(link.path, data={"lang": "de"}, follow_redirects=False).status_code == 303
    with world.ledger.engine.connect() as conn:
        granted = conn.execute(
            select(consent_events.c.fingerprint).where(consent_events.c.status == "granted")
        ).scalar_one()
    assert stored_language(world, granted) == "de"
    assert_names(world, answer["subject"], granted, GERMAN_SHA, "de")


def test_an_event_without_a_language_keeps_the_first_text_and_its_fingerprint(world: HubWorld) -> None:
    """Recorded without a language (before 0021, a CRM's value, ``ledger record`` without
    --notice-language): the version's first text in effect then, as before, and the same
    fingerprint the code before 0021 computed (existing ledgers replay identically)."""
    in_german(world.ledger, "newsletter")
    at = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    value = Evidence(
        purpose="newsletter",
        channel="email",
        status=ConsentStatus.GRANTED,
        basis=LawfulBasis.CONSENT,
        event_time=at,
        observed_at=at,
        source="web_form",
        origin=Origin.CAPTURE,
        actor="apikey:website",
        notice_version="2026-05",
        evidence_ref="form:7",
    )
    # Computed by the code at deaee2f (before the language was recorded).
    assert value.fingerprint() == "b24b056815a0b59f02f8b7e38f36118842e44226d6abfe411323333b958231b3"
    assert dataclasses.replace(value, notice_language="de").fingerprint() != value.fingerprint()
    uid = world.ledger.record(Identity(email=EMAIL), value).subject_uid
    assert stored_language(world, value.fingerprint()) is None
    assert_names(world, uid, value.fingerprint(), ENGLISH_SHA, "en")


def test_a_language_is_recorded_only_beside_the_version_it_is_a_text_of(world: HubWorld) -> None:
    at = world.clock()
    for language, field in (("de", "without the notice version"), ("deutsch!", "expected a language tag")):
        value = consent_value(ConsentStatus.GRANTED, at, at, purpose="newsletter", evidence_ref="form:1")
        value = dataclasses.replace(value, notice_language=language)
        with pytest.raises(InvalidInput, match=f"notice language.*{field}"):
            world.ledger.record(Identity(email=EMAIL), value)


def test_a_stored_language_edited_is_found_by_audit_verify(world: HubWorld, cli: Cli) -> None:
    in_german(world.ledger, "newsletter")
    german = world.post("/consents", {**GRANT, "language": "de"}).json()["results"][0]["record_id"]
    world.clock.advance(minutes=1)
    at = world.clock()
    older = consent_value(ConsentStatus.GRANTED, at, at, purpose="newsletter", notice_version="2026-05")
    world.ledger.record(Identity(email=EMAIL), older)  # no language, as before 0021
    assert cli("audit", "verify").exit_code == 0
    _as_owner_unprotected(world.ledger.engine)
    for record_id, forged in ((german, "en"), (older.fingerprint(), "de")):
        with world.ledger.engine.begin() as conn:
            edited = update(consent_events).where(consent_events.c.fingerprint == record_id)
            before = conn.execute(
                select(consent_events.c.notice_language).where(consent_events.c.fingerprint == record_id)
            ).scalar_one()
            conn.execute(edited.values(notice_language=forged))
        result = cli("audit", "verify")
        assert result.exit_code == exit_codes.AUDIT_BROKEN, result.output
        (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("consent events and audit")]
        assert "DISAGREE" in line and "another notice_language" in line, line
        with world.ledger.engine.begin() as conn:
            conn.execute(edited.values(notice_language=before))
        assert cli("audit", "verify").exit_code == 0


def test_0021_keeps_every_event_and_consent_events_stays_append_only(world: HubWorld) -> None:
    """Down to 0020 and up again: the events stay (their language lost, as documented), the
    column is back, and the append-only guard still refuses an edit, on either database."""
    in_german(world.ledger, "newsletter")
    world.post("/consents", {**GRANT, "language": "de"})
    engine: Engine = world.ledger.engine
    columns = "id, subject_id, fingerprint, notice_version, event_time"

    def rows() -> list[tuple[Any, ...]]:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(f"SELECT {columns} FROM consent_events ORDER BY id"))]

    before = rows()
    command.downgrade(alembic_config(engine), "0020")
    assert rows() == before
    upgrade(engine)
    assert rows() == before
    with engine.connect() as conn:
        assert conn.execute(text("SELECT notice_language FROM consent_events")).scalars().all() == [None]
    with pytest.raises(DBAPIError), engine.begin() as conn:
        conn.execute(text("UPDATE consent_events SET notice_language = 'de'"))


def test_ledger_record_takes_the_language_of_the_text_shown(world: HubWorld, cli: Cli) -> None:
    in_german(world.ledger, "newsletter")
    at = world.clock().isoformat()
    words = ("ledger", "record", "--email", EMAIL, "--purpose", "newsletter", "--status", "granted")
    proof = ("--source", "web_form", "--at", at, "--notice-version", "2026-05")
    recorded = cli(*words, *proof, "--notice-language", "de", "--json")
    assert recorded.exit_code == 0, recorded.output
    uid = json.loads(recorded.stdout)["subject"]
    with world.ledger.engine.connect() as conn:
        record_id = conn.execute(select(consent_events.c.fingerprint)).scalar_one()
    assert_names(world, uid, record_id, GERMAN_SHA, "de")
    refused = cli(*words, *proof, "--notice-language", "deutsch!")
    assert refused.exit_code == exit_codes.CONFIG, refused.output  # bad input: 2
    message = refused.stderr.strip()
    assert "\n" not in message and "--notice-language: 'deutsch!'" in message, message
