"""A data subject's walk through the preference centre and the capture API, as a regulator
would take it (session 48): what failed on the walk, each fixed in the hub.

- An expired preference link left the person no way to withdraw but writing in (Art. 7(3):
  withdrawing must be as easy as consenting; Art. 12(2): facilitate the exercise of rights): it
  now offers a new link, mailed to the address on record and never shown.
- A mail the server refused logged the recipient's address (``hub.mail_failed``).
- A capture retried with the same Idempotency-Key but now with ``Sec-GPC: 1`` was replayed,
  and the person's opt-out signal was dropped.
- A body of any size was read and parsed before the API key was checked.
- A key limited to some purposes read the receipts of others.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from consentsync.config import SmtpSettings
from consentsync.hub import keys
from consentsync.hub.mail import Mailer
from consentsync.hub.preferences import PreferenceCentre
from tests.hub.conftest import Controller, HubWorld, in_german
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


# -- an expired link --------------------------------------------------------------------------


def test_an_expired_link_offers_a_new_one_by_mail_so_that_withdrawing_needs_no_letter(
    world: HubWorld, people: TestClient
) -> None:
    token = token_of(world, seed(world))
    world.clock.advance(days=world.hub.settings.link_days + 1)
    old = people.get(f"/p/preferences/{token}")
    assert old.status_code == 410 and "This link has expired" in old.text
    form = re.search(r'<form method="post" action="([^"]+)">', old.text)
    assert form, "the expired link's page offers no way to get a new link"
    assert form.group(1) == f"/p/preferences/{token}/new-link"
    assert EMAIL not in old.text  # the address is never shown to whoever holds the old link
    before = mails_with(world, "/p/preferences/")
    sent = people.post(form.group(1), data={"lang": "en"})
    assert sent.status_code == 200 and "We sent you a mail with a new link." in words(sent.text)
    assert EMAIL not in sent.text
    assert mails_with(world, "/p/preferences/") == before + 1
    assert world.inbox.messages[-1]["To"] == EMAIL
    fresh = mailed(world, "/p/preferences/")
    assert fresh != f"/p/preferences/{token}"
    # The new link works: one click withdraws.
    assert people.get(fresh).status_code == 200
    done = people.post(
        f"{fresh}/choose", data={"purpose": "newsletter", "channel": "email", "action": "withdraw"}
    )
    assert done.status_code == 200 and "Done: you withdrew your consent to Newsletter" in words(done.text)
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "withdrawn"
    # Asked again at once: no second mail (an old link cannot flood the mailbox).
    again = people.post(form.group(1), data={"lang": "en"})
    assert again.status_code == 200 and "a few minutes ago" in again.text
    assert mails_with(world, "/p/preferences/") == before + 1 + 1  # the new link + the receipt's


def test_only_an_expired_link_of_ours_gets_a_new_one(world: HubWorld, people: TestClient) -> None:
    token = token_of(world, seed(world))
    before = len(world.inbox.messages)
    # A working link is just sent to its page; a changed one is refused; nothing is mailed.
    working = people.post(f"/p/preferences/{token}/new-link", follow_redirects=False)
    assert working.status_code == 303 and working.headers["location"].startswith(f"/p/preferences/{token}")
    changed = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert people.post(f"/p/preferences/{changed}/new-link").status_code == 403
    world.clock.advance(days=world.hub.settings.link_days + 1)
    refused = people.get(f"/p/preferences/{changed}")
    assert refused.status_code == 403 and "new-link" not in refused.text
    assert len(world.inbox.messages) == before
    # Erased meanwhile: the old link opens nothing, and asks for nothing.
    world.ledger.erase(EMAIL, reason="test", actor="ops")
    gone = people.get(f"/p/preferences/{token}")
    assert gone.status_code == 410 and "new-link" not in gone.text
    assert people.post(f"/p/preferences/{token}/new-link").status_code == 410
    assert len(world.inbox.messages) == before


def test_the_new_link_page_speaks_german(world: HubWorld, people: TestClient) -> None:
    token = token_of(world, seed(world))
    world.clock.advance(days=world.hub.settings.link_days + 1)
    old = people.get(f"/p/preferences/{token}", headers={"Accept-Language": "de"})
    assert "Neuen Link per Mail schicken" in old.text and '<html lang="de">' in old.text
    sent = people.post(f"/p/preferences/{token}/new-link", data={"lang": "de"})
    assert "Wir haben Ihnen eine Mail mit einem neuen Link geschickt." in sent.text
    assert "Ihr Link zu Ihren Datenschutzeinstellungen" in str(world.inbox.messages[-1]["Subject"])


# -- a refused recipient ----------------------------------------------------------------------


class Refusing:
    """An SMTP server that refuses every recipient, quoting the address as servers do."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"


@pytest.fixture
def refusing_port() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Refusing(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port
    controller.stop()


@pytest.mark.usefixtures("info_logs")
def test_a_refused_recipient_is_not_logged(world: HubWorld, refusing_port: int) -> None:
    token = token_of(world, seed(world))
    world.hub.mailer = Mailer(
        SmtpSettings(host="127.0.0.1", port=refusing_port, sender="privacy@example.test")
    )
    centre = PreferenceCentre(world.hub)
    person = centre.person(token)
    with capture_logs() as logs:
        assert centre.request_erasure(person, centre.visitor("198.51.100.7", "ua")) is False
        centre.choose(person, "newsletter", "email", grant=False, visitor=centre.visitor("x", "y"))
    failed = [entry for entry in logs if entry.get("event") == "hub.mail_failed"]
    assert len(failed) == 2 and all("refused" in entry["error"] for entry in failed)
    assert EMAIL not in repr(logs) and "ada@" not in repr(logs)


# -- the capture API --------------------------------------------------------------------------


def test_a_retry_that_now_carries_a_gpc_signal_does_not_drop_it(world: HubWorld) -> None:
    body = {**GRANT, "email": "gpc@example.test"}
    first = world.post("/consents", body, **{"Idempotency-Key": "signup-1"})
    assert first.status_code == 201
    retried = world.post("/consents", body, **{"Idempotency-Key": "signup-1", "Sec-GPC": "1"})
    # Not a replay of the first answer, which would leave the opt-out unrecorded.
    assert retried.headers.get("Idempotent-Replayed") != "true"
    assert retried.status_code == 409
    # The same request with its signal, retried as it was, is a replay.
    fresh = world.post("/consents", body, **{"Idempotency-Key": "signup-2", "Sec-GPC": "1"})
    assert fresh.status_code == 201
    assert world.ledger.decision_for("gpc@example.test", "profiling", "email")[1].status.value == "withdrawn"
    replay = world.post("/consents", body, **{"Idempotency-Key": "signup-2", "Sec-GPC": "1"})
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    # Without the header the digest is the body's, as before: an old key still replays.
    assert (
        world.post("/consents", body, **{"Idempotency-Key": "signup-1"}).headers["Idempotent-Replayed"]
        == "true"
    )


def test_an_oversized_body_is_refused_before_it_is_read_or_the_key_checked(world: HubWorld) -> None:
    from consentsync.hub.api import BODY_MAX

    huge = b'{"email": "a@example.test", "evidence_ref": "' + b"x" * (BODY_MAX + 1) + b'"}'
    for headers in ({}, world.auth()):
        response = world.client.post(
            "/consents", content=huge, headers={**headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 413, response.text[:200]
        assert "larger than" in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield huge[: BODY_MAX // 2]
        yield huge[BODY_MAX // 2 :]

    chunked = world.client.post(
        "/consents", content=chunks(), headers={**world.auth(), "Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    # A full batch at the largest the fields allow still fits, and is read as before.
    batch = {"consents": [{**GRANT, "evidence_ref": "ü" * 500}] * 500}
    assert world.post("/consents", batch).status_code == 201


def test_a_form_of_the_pages_is_refused_when_oversized(world: HubWorld, people: TestClient) -> None:
    token = token_of(world, seed(world))
    before = len(world.ledger.subject_view(EMAIL)["history"])
    big = {"purpose": "newsletter", "channel": "email", "action": "withdraw", "pad": "x" * 100_000}
    assert people.post(f"/p/preferences/{token}/choose", data=big).status_code == 413
    assert len(world.ledger.subject_view(EMAIL)["history"]) == before


def test_a_key_reads_only_the_receipts_of_its_purposes(world: HubWorld) -> None:
    _key, limited = keys.create(
        world.ledger, "newsletter-only", source="shop", purposes=["newsletter"], actions=["consents"]
    )
    other = world.post("/consents", {**GRANT, "purpose": "email_marketing", "status": "withdrawn"})
    mine = world.post("/consents", {**GRANT, "status": "withdrawn"}, secret=limited)
    for result, expected in ((other, 403), (mine, 200)):
        entry = result.json()["results"][0]
        response = world.client.get(
            f"/receipts/{entry['subject']}/{entry['record_id']}", headers=world.auth(limited)
        )
        assert response.status_code == expected, response.text


def test_the_mails_of_a_capture_speak_the_language_of_the_form(world: HubWorld) -> None:
    """Art. 12(1): the confirmation a German sign-up form starts is written in German."""
    in_german(world.ledger, "email_marketing")
    signup = {**GRANT, "purpose": "email_marketing", "email": "jorg@example.test", "language": "de"}
    assert world.post("/consents", signup).status_code == 201
    assert "Bitte bestätigen" in str(world.inbox.messages[-1]["Subject"])
    refused = world.post("/consents", {**signup, "language": "xx"})
    assert refused.status_code == 422 and refused.json()["error"].startswith("consents[0].language:")
    # Without one, the first configured language, and the digest of a retried request as before.
    first = world.post("/consents", {**GRANT, "email": "eve@example.test"}, **{"Idempotency-Key": "e-1"})
    assert first.status_code == 201
    again = world.post(
        "/consents", {**GRANT, "email": "eve@example.test", "language": None}, **{"Idempotency-Key": "e-1"}
    )
    assert again.headers["Idempotent-Replayed"] == "true"


@pytest.mark.usefixtures("info_logs")
def test_a_mangled_link_does_not_put_its_token_in_the_log(world: HubWorld, people: TestClient) -> None:
    token = token_of(world, seed(world))
    for path in (f"/p//preferences/{token}", f"/p/preferences//{token}", f"/p/PREFERENCES/{token}"):
        with capture_logs() as logs:
            assert people.get(path).status_code == 404
        people_lines = [entry for entry in logs if entry.get("event") == "people.request"]
        assert people_lines and all("{token}" in entry["path"] for entry in people_lines)
        assert token not in repr(people_lines), path
