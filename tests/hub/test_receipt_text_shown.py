"""The notice text a receipt names is the one shown at the event's time, whatever language the
receipt is asked in and whenever it is asked (Art. 7(1)), and the DSAR export names the same.

Black-box finding: the capture API took ``"language": "de"`` for a notice version with only an
English text; the receipt, asked in German after a German text of that version was registered,
then named that later text and its SHA-256, while the export still named the English one."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from consentsync.domain import ConsentStatus
from consentsync.hub import notices
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import consent_events
from tests.hub.conftest import NEWSLETTER_NOTICE, NOTICE_IN_EFFECT, HubWorld
from tests.integration.helpers import consent_value

EMAIL = "ada@example.test"
GRANT = {"email": EMAIL, "purpose": "newsletter", "status": "granted", "notice_version": "2026-05"}
GERMAN = "Unser Newsletter, etwa einmal im Monat, mit Weitergabe an Partner."
ENGLISH_SHA = hashlib.sha256(NEWSLETTER_NOTICE.encode()).hexdigest()


def receipt(world: HubWorld, entry: dict[str, Any], language: str) -> dict[str, Any]:
    path = f"/receipts/{entry['subject']}/{entry['record_id']}"
    answer = world.client.get(path, params={"language": language}, headers=world.auth())
    assert answer.status_code == 200, answer.text
    return answer.json()


def exported(world: HubWorld, email: str = EMAIL) -> dict[tuple[str, str], str | None]:
    """Each event's notice text in the DSAR export, by its notice version and time."""
    history = world.ledger.subject_view(email)["history"]
    return {(e["notice_version"], e["event_time"] or e["recorded_at"]): e["notice_sha256"] for e in history}


def key(document: dict[str, Any]) -> tuple[str, str]:
    """A receipt's event as the export names it."""
    return document["notice"]["version"], document["events"][0]["event_time"]


def named(document: dict[str, Any]) -> str | None:
    return document["notice"].get("content_sha256")


def mailed_receipts(world: HubWorld) -> list[dict[str, Any]]:
    return [
        json.loads(part.get_content())
        for message in world.inbox.messages
        for part in message.iter_attachments()
        if str(part.get_filename()).startswith("consent-receipt-")
    ]


def test_a_grant_in_a_language_its_notice_has_no_text_in_is_refused(world: HubWorld) -> None:
    answer = world.post("/consents", {**GRANT, "language": "de"})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error.startswith("consents[0].language: ") and "\n" not in error
    assert "has no text in 'de'" in error and "it has en" in error
    assert world.ledger.subject_uids_for_email(EMAIL) == [] and world.inbox.messages == []
    # A German text registered now was not shown at a time before it: still refused then.
    world.clock.advance(minutes=1)
    notices.add(world.ledger, "newsletter", "2026-05", GERMAN, language="de")
    earlier = (world.clock() - timedelta(minutes=1)).isoformat()
    answer = world.post("/consents", {**GRANT, "language": "de", "event_time": earlier})
    assert answer.status_code == 422 and answer.json()["error"].startswith("consents[0].language: ")
    # From then on it is, and so is the English text, in effect all along.
    assert world.post("/consents", {**GRANT, "language": "de"}).status_code == 201
    assert world.post("/consents", {**GRANT, "language": "en", "event_time": earlier}).status_code == 201


def test_a_text_registered_after_the_grant_does_not_become_its_text(world: HubWorld) -> None:
    """The tester's scenario: a grant, then a German text of its version registered; the receipt
    asked in German names the English text it was given under, as the export does."""
    granted = world.post("/consents", GRANT).json()["results"][0]
    before_receipt = receipt(world, granted, "de")
    before = before_receipt["notice"]
    assert before["content_sha256"] == ENGLISH_SHA and before["language"] == "en"
    world.clock.advance(minutes=5)
    notices.add(world.ledger, "newsletter", "2026-05", GERMAN, language="de")
    for language in ("de", "en"):
        assert receipt(world, granted, language)["notice"] == before, language
        assert receipt(world, granted, language)["language"] == language  # its own wording only
    assert exported(world)[key(before_receipt)] == ENGLISH_SHA


def test_a_grant_recorded_before_any_text_of_its_version_names_none(world: HubWorld) -> None:
    """A version whose first text was registered after the grant: no text is named for it, not
    the later one (as `subject show` and the export have since session 61)."""
    at = world.clock()
    value = consent_value(ConsentStatus.GRANTED, at, at, purpose="newsletter", notice_version="2026-09")
    outcome = world.ledger.record(Identity(email=EMAIL), value)
    entry = {"subject": outcome.subject_uid, "record_id": value.fingerprint()}
    world.clock.advance(minutes=5)
    notices.add(world.ledger, "newsletter", "2026-09", "The September newsletter notice.")
    for language in ("en", "de"):
        assert receipt(world, entry, language)["notice"] == {
            "notice_id": "newsletter/2026-09",
            "version": "2026-09",
        }
    assert exported(world)[key(receipt(world, entry, "en"))] is None


def test_receipts_mailed_and_fetched_in_any_language_name_the_exports_text(world: HubWorld) -> None:
    """For every event, whichever texts came before or after it: the receipt mailed, the receipts
    fetched in each configured language and the DSAR export name one text (or none)."""
    world.post("/consents", GRANT)  # under the English text only
    world.clock.advance(minutes=1)
    notices.add(world.ledger, "newsletter", "2026-05", GERMAN, language="de")
    world.clock.advance(minutes=1)
    world.post("/consents", {**GRANT, "status": "withdrawn", "language": "de"})
    world.clock.advance(minutes=1)
    world.post("/consents", {**GRANT, "language": "de"})  # the version has two texts now
    # A version with no text at its grant, one registered later; a grant dated before a text
    # registered as in effect since earlier still.
    at = world.clock()
    late = consent_value(ConsentStatus.GRANTED, at, at, purpose="newsletter", notice_version="2026-09")
    world.ledger.record(Identity(email=EMAIL), late)
    world.clock.advance(minutes=1)
    notices.add(world.ledger, "newsletter", "2026-09", "September.", in_effect_from=at - timedelta(days=1))
    notices.add(world.ledger, "newsletter", "2026-12", "December.", in_effect_from=NOTICE_IN_EFFECT)
    world.post("/consents", {**GRANT, "notice_version": "2026-12", "event_time": at.isoformat()})
    texts = exported(world)
    assert len(texts) == 5
    (uid,) = world.ledger.subject_uids_for_email(EMAIL)
    with world.ledger.engine.connect() as conn:
        record_ids = list(conn.execute(select(consent_events.c.fingerprint)).scalars())
    for record_id in record_ids:
        entry = {"subject": uid, "record_id": record_id}
        for language in ("en", "de"):
            document = receipt(world, entry, language)
            assert named(document) == texts[key(document)], (key(document), language)
    mailed = mailed_receipts(world)
    assert len(mailed) == 4 and {m["language"] for m in mailed} == {"en", "de"}
    for document in mailed:
        assert named(document) == texts[key(document)], key(document)
    # The withdrawal and the grant made in German name the German text they recorded as shown
    # (migration 0021); the rest the text in effect then in the language they were made in.
    digests = [notices.text_digest(shown) for shown in (GERMAN, GERMAN, "September.", "December.")]
    assert sorted(texts.values(), key=str) == sorted([ENGLISH_SHA, *digests])
