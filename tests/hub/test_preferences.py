"""The preference centre's actions as service calls: a signed link opens one person's record,
each choice is evidence (time, notice version, keyed hashes of client and agent), objection,
export, and erasure only once the mailed link is followed."""

from __future__ import annotations

from pathlib import Path

import pytest

from consentsync import audit
from consentsync.export import write_export
from consentsync.hub.links import LinkRefused, make_token
from consentsync.hub.notices import text_digest
from consentsync.hub.preferences import PreferenceCentre
from tests.hub.conftest import NEWSLETTER_NOTICE, HubWorld
from tests.hub.people_world import mailed

GRANT = {
    "email": "ada@example.test",
    "purpose": "newsletter",
    "status": "granted",
    "notice_version": "2026-05",
}


@pytest.fixture
def centre(world: HubWorld) -> PreferenceCentre:
    world.post("/consents", GRANT)
    return PreferenceCentre(world.hub)


def token_of(world: HubWorld) -> str:
    (uid,) = world.ledger.subject_uids_for_email("ada@example.test")
    return world.hub.preference_link(uid).rsplit("/", 1)[1]


def test_a_link_opens_one_record_and_a_changed_or_old_link_none(
    world: HubWorld, centre: PreferenceCentre
) -> None:
    token = token_of(world)
    assert centre.person(token).email == "ada@example.test"
    with pytest.raises(LinkRefused, match="not valid"):
        centre.person(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    with pytest.raises(LinkRefused, match="not valid"):  # signed by another ledger's key
        other = make_token(world.ledger, "someone", days=1)
        centre.person(other.replace(other.split(".")[2], "x" * 43))
    world.clock.advance(days=31)
    with pytest.raises(LinkRefused, match="expired"):
        centre.person(token)


def test_a_choice_is_evidence_with_notice_and_keyed_hashes(world: HubWorld, centre: PreferenceCentre) -> None:
    person = centre.person(token_of(world))
    visitor = centre.visitor("203.0.113.9", "Mozilla/5.0 test")
    shown = {(p["purpose"], p["channel"]): p for p in centre.purposes(person)}
    assert shown[("newsletter", "email")]["status"] == "granted"
    assert shown[("newsletter", "email")]["notice_version"] == "2026-05"
    world.clock.advance(minutes=5)
    result = centre.choose(person, "newsletter", "email", grant=False, visitor=visitor)
    assert result["status"] == "withdrawn" and result["suppressed"] is True
    event = world.ledger.subject_view("ada@example.test")["history"][-1]
    assert event["source"] == "preference_center" and event["notice_version"] == "2026-05"
    assert visitor.client_hash in event["evidence_ref"] and "203.0.113.9" not in event["evidence_ref"]
    assert "Mozilla" not in event["evidence_ref"]
    world.clock.advance(minutes=5)
    # The person's own new grant reverses their withdrawal (a trusted source, evidenced), once
    # confirmed through the link mailed to them (the page's link may have been forwarded).
    asked = centre.choose(person, "newsletter", "email", grant=True, visitor=visitor, shown="2026-05")
    assert asked == {"purpose": "newsletter", "channel": "email", "recorded": None, "confirmation": "mailed"}
    world.hub.confirm(mailed(world, "/p/confirm/").rsplit("/", 1)[1])
    event = world.ledger.subject_view("ada@example.test")["history"][-1]
    assert (event["status"], event["notice_version"]) == ("granted", "2026-05")
    assert world.ledger.decision_for("ada@example.test", "newsletter", "email")[1].status.value == "granted"


def test_objection_and_export(world: HubWorld, centre: PreferenceCentre, tmp_path: Path) -> None:
    person = centre.person(token_of(world))
    objection = centre.object(person, "profiling", centre.visitor("198.51.100.1", "ua"))
    assert objection["status"] in ("upheld", "pending")
    view = centre.export(person)
    assert view["email"] == "ada@example.test" and view["objections"]
    # The export names the notice text shown by its content hash, in every format.
    grant = next(e for e in view["history"] if e["status"] == "granted")
    assert grant["notice_version"] == "2026-05" and grant["notice_sha256"] == text_digest(NEWSLETTER_NOTICE)
    write_export(view, "csv", tmp_path / "record.csv")
    assert text_digest(NEWSLETTER_NOTICE) in (tmp_path / "record.csv").read_text()
    with world.ledger.engine.connect() as conn:
        reads = list(audit.entries(conn, subject_uids=[person.uid], action="subject.exported"))
    assert [(e["actor"], e["source"]) for e in reads] == [("data subject", "preference_center")]


def test_erasure_waits_for_the_mailed_link(world: HubWorld, centre: PreferenceCentre) -> None:
    person = centre.person(token_of(world))
    assert centre.request_erasure(person, centre.visitor("192.0.2.1", "ua")) is True
    assert world.ledger.email_of(person.uid) == "ada@example.test"  # nothing erased yet
    # The request is on record from the moment it is made (Art. 12(3): answered within a month).
    with world.ledger.engine.connect() as conn:
        asked = list(audit.entries(conn, subject_uids=[person.uid], action="subject.erasure_requested"))
    assert [(e["actor"], e["source"]) for e in asked] == [("data subject", "preference_center")]
    # Pressed again a moment later: the mail just sent answers it, no second one.
    mails = len(world.inbox.messages)
    assert centre.request_erasure(person, centre.visitor("192.0.2.1", "ua")) is True
    assert len(world.inbox.messages) == mails
    token = world.inbox.link("/p/erase/").rsplit("/", 1)[1]
    centre.erasure_pending(token)
    assert centre.confirm_erasure(token)["already"] is False
    assert world.ledger.email_of(person.uid) is None
    with pytest.raises(LinkRefused, match="confirmed already"):
        centre.confirm_erasure(token)
    with pytest.raises(LinkRefused, match="erased"):
        centre.person(token_of_uid(world, person.uid))


def token_of_uid(world: HubWorld, uid: str) -> str:
    return world.hub.preference_link(uid).rsplit("/", 1)[1]


def test_only_a_consent_purpose_can_be_granted(world: HubWorld, centre: PreferenceCentre) -> None:
    from consentsync.domain import InvalidInput

    person = centre.person(token_of(world))
    with pytest.raises(InvalidInput, match="not based on consent"):
        centre.choose(person, "service", "email", grant=True, visitor=centre.visitor("192.0.2.1", "ua"))
