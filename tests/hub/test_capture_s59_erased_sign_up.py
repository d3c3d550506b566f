"""A double opt-in sign-up with an erased address, held back until confirmed (session 58,
a29eb9f): two defects found after it (session 59).

1. Someone came back with the address while the sign-up waited (a trusted grant of a purpose
   without double opt-in made a new person holding it: the holder). Confirming the link gave the
   grant to the holder, as it should, but the person made for the sign-up stayed addressless
   with its "requested" for ever: the lapse never closes a confirmed link. Now that sign-up is
   closed ("applicable" from ``consentsync:sign_up_closed``, its audit entry naming the
   confirmation and the holder by uid, never the address).
2. The confirmation mail offered "All your choices", a link to the page of a person who holds no
   address until the sign-up is confirmed (and never, in 1.): it opened "the record was
   erased". That mail offers no such link now; the receipt of the confirmation does, and it opens.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from structlog.testing import capture_logs

from consentsync.hub.capture import SEAL_MARK, SIGN_UP_CLOSED_SOURCE
from consentsync.ledger.schema import audit_entries, consent_states, subjects
from tests.hub.conftest import HubWorld, in_german
from tests.hub.people_world import served_pages
from tests.hub.test_capture_s53_erased_says_no import GRANT, decision, erased, stored_forms
from tests.hub.test_s58_erased_doi import LEO, audit_verified, confirmation_token, held_anywhere, sign_up

MARKETING = ("email_marketing", "email")


@pytest.fixture
def people(world: HubWorld) -> Any:
    yield from served_pages(world, TestClient)


def states_of(world: HubWorld, uid: str) -> dict[tuple[str, str], str]:
    with world.ledger.engine.connect() as conn:
        rows = conn.execute(
            select(consent_states.c.purpose, consent_states.c.channel, consent_states.c.status)
            .join(subjects, subjects.c.id == consent_states.c.subject_id)
            .where(subjects.c.uid == uid)
        ).all()
    return {(row.purpose, row.channel): row.status for row in rows}


def recorded_entries(world: HubWorld, uid: str) -> list[dict[str, Any]]:
    """The ``consent.recorded`` entries of person ``uid``, as the chain holds them."""
    with world.ledger.engine.connect() as conn:
        payloads = conn.execute(
            select(audit_entries.c.payload)
            .where(audit_entries.c.action == "consent.recorded", audit_entries.c.subject_uid == uid)
            .order_by(audit_entries.c.seq)
        ).scalars()
        return [orjson.loads(payload) for payload in payloads]


def came_back(world: HubWorld) -> str:
    """Leo comes back otherwise while his sign-up waits: a trusted grant of the newsletter (no
    double opt-in) makes a new person holding his address. Their uid."""
    answer = world.post("/consents", {**GRANT, "email": LEO})
    assert answer.status_code == 201, answer.text
    assert stored_forms(world, LEO) == 1
    return str(answer.json()["results"][0]["subject"])


@pytest.mark.usefixtures("info_logs")
def test_confirmed_after_someone_came_back_the_waiting_sign_up_is_closed(world: HubWorld) -> None:
    erased(world, LEO)
    waiting = sign_up(world)["subject"]
    token = confirmation_token(world)
    assert SEAL_MARK in token and states_of(world, waiting) == {MARKETING: "requested"}
    world.clock.advance(minutes=1)
    holder = came_back(world)
    assert holder != waiting
    world.clock.advance(minutes=5)

    with capture_logs() as logs:
        confirmed = world.hub.confirm(token)
    # The holder takes the grant, as before: the address is theirs, one holder.
    assert confirmed["already"] is False and confirmed["subject"] == holder
    assert states_of(world, holder)[MARKETING] == "granted"
    assert decision(world, LEO, "email_marketing")["contact"] is True
    assert world.ledger.email_of(waiting) is None and stored_forms(world, LEO) == 1
    # ... and the sign-up that waited for it on the addressless person is closed: no "requested"
    # is left there for ever.
    assert states_of(world, waiting) == {MARKETING: "applicable"}
    closing = recorded_entries(world, waiting)[-1]
    assert closing["source"] == SIGN_UP_CLOSED_SOURCE and closing["actor"] == "consentsync"
    assert closing["what"]["status"] == "applicable" and closing["what"]["origin"] == "system"
    assert closing["what"]["evidence_ref"].startswith("confirmation:")
    assert closing["what"]["evidence_ref"].endswith(f"granted to subject {holder}")
    assert closing["old"]["status"] == "requested" and closing["new"]["status"] == "applicable"
    closed = [line for line in logs if line["event"] == "hub.sign_up_closed"]
    assert closed == [
        {
            "event": "hub.sign_up_closed",
            "log_level": "info",
            "subject": waiting,
            "holder": holder,
            "purpose": "email_marketing",
            "channel": "email",
        }
    ]
    # Nothing of the address reached the waiting person, the log or the chain.
    assert not [place for place in held_anywhere(world, LEO) if place != "subject_identifiers.value"]
    assert LEO not in repr(logs)
    audit_verified(world)

    # The same link followed again: already confirmed, nothing more recorded or closed.
    before = len(recorded_entries(world, waiting)), len(recorded_entries(world, holder))
    assert world.hub.confirm(token)["already"] is True
    assert (len(recorded_entries(world, waiting)), len(recorded_entries(world, holder))) == before
    # The lapse has nothing left to do there either.
    world.clock.advance(days=world.hub.settings.confirmation_days + 1)
    assert world.hub.lapse_unconfirmed() == 0
    assert states_of(world, waiting) == {MARKETING: "applicable"}


def test_a_second_link_of_the_waiting_person_closes_nothing_twice(world: HubWorld) -> None:
    """The form sent twice, RESEND_INTERVAL apart: two links of one waiting person. The first
    confirmed closes the sign-up; the second gives the holder the grant again, closes nothing
    more, and saying no on it ends nothing of the holder's."""
    erased(world, LEO)
    waiting = sign_up(world)["subject"]
    first = confirmation_token(world)
    world.clock.advance(minutes=11)
    assert sign_up(world)["subject"] == waiting
    second = confirmation_token(world)
    assert second != first
    holder = came_back(world)
    world.clock.advance(minutes=1)
    assert world.hub.confirm(first)["subject"] == holder
    entries = len(recorded_entries(world, waiting))
    world.clock.advance(minutes=1)
    assert world.hub.confirm(second)["subject"] == holder
    assert len(recorded_entries(world, waiting)) == entries
    assert states_of(world, waiting) == {MARKETING: "applicable"}
    assert states_of(world, holder)[MARKETING] == "granted"
    audit_verified(world)


def test_confirmed_by_the_waiting_person_themselves_nothing_is_closed(world: HubWorld) -> None:
    """Nobody came back meanwhile: the address goes to the person the sign-up made (a29eb9f),
    whose "requested" becomes the grant; no closing entry."""
    erased(world, LEO)
    waiting = sign_up(world)["subject"]
    world.clock.advance(minutes=5)
    assert world.hub.confirm(confirmation_token(world))["subject"] == waiting
    assert states_of(world, waiting) == {MARKETING: "granted"}
    assert all(entry["source"] != SIGN_UP_CLOSED_SOURCE for entry in recorded_entries(world, waiting))


def test_the_held_back_sign_ups_mail_offers_no_page_that_says_erased(
    world: HubWorld, people: TestClient
) -> None:
    erased(world, LEO)
    sign_up(world)
    mail = world.inbox.text(-1)
    assert "/p/confirm/" in mail
    # No link to a page of a person holding no address: it would say "the record was erased".
    assert "/p/preferences/" not in mail and "All your choices" not in mail
    assert "nothing changes until the link is followed" in mail

    # Confirmed, the receipt carries the person's page, and it opens as theirs.
    world.clock.advance(minutes=5)
    path = world.inbox.link("/p/confirm/")
    assert people.post(path, data={"lang": "en"}, follow_redirects=False).status_code == 303
    page = people.get(world.inbox.link("/p/preferences/"))
    assert page.status_code == 200 and "no record any more" not in page.text


def test_in_german_too(world: HubWorld) -> None:
    erased(world, LEO)
    in_german(world.ledger, "email_marketing")
    sign_up(world, language="de")
    mail = world.inbox.text(-1)
    assert "/p/confirm/" in mail and "/p/preferences/" not in mail
    assert "solange der Link nicht geöffnet wird." in mail
    assert "Alle Ihre Einstellungen" not in mail and "You asked" not in mail


def test_an_ordinary_sign_ups_mail_keeps_its_link(world: HubWorld, people: TestClient) -> None:
    sign_up(world, "new@example.org")
    mail = world.inbox.text(-1)
    assert "All your choices, at any time: " in mail
    assert people.get(world.inbox.link("/p/preferences/")).status_code == 200
