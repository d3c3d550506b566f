"""The public endpoints' limits, as an attacker meets them (session 51): a limit kept in the
serving process is no limit where several web processes serve the pages (each has its own count),
nor where the same form is sent many times at once (each request passes the check before any of
them has mailed). Each process here is a second Hub over the same ledger file, as a second web
process would have; the presses at once are threads behind a mail server that takes its time."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from consentsync.app import open_ledger
from consentsync.hub.capture import Hub
from consentsync.hub.mail import Mail
from consentsync.hub.preferences import NEW_LINK_INTERVAL, PreferenceCentre
from tests.hub.conftest import HubWorld
from tests.hub.people_world import (
    EMAIL,
    mails_with,
    mounted,
    people_pages,
    seed,
    token_of,
)

# The module's fixture: `people` (the pages, in-process). On both databases: the limits are
# kept in the ledger, each database's transactions order the requests.
FIXTURES = (people_pages,)


def words(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.fixture
def other_process(world: HubWorld) -> Iterator[Hub]:
    """The hub as a second web process has it: its own ledger connection and its own state."""
    ledger = open_ledger(world.hub.config)
    ledger.clock = world.clock
    yield Hub(world.hub.config, ledger)
    ledger.engine.dispose()


def expired_link(world: HubWorld) -> str:
    token = token_of(world, seed(world))
    world.clock.advance(days=world.hub.settings.link_days + 1)
    return token


def new_links_mailed(world: HubWorld) -> int:
    return sum("You asked for a new link" in world.inbox.text(i) for i in range(len(world.inbox.messages)))


# -- "Mail me a new link" ------------------------------------------------------------------------


def test_an_old_link_sent_to_each_web_process_mails_one_new_link(
    world: HubWorld, people: TestClient, other_process: Hub
) -> None:
    token = expired_link(world)
    first = people.post(f"/p/preferences/{token}/new-link", data={"lang": "en"})
    assert "We sent you a mail with a new link." in words(first.text)
    with TestClient(mounted(other_process)) as elsewhere:
        again = elsewhere.post(f"/p/preferences/{token}/new-link", data={"lang": "en"})
    assert again.status_code == 200 and "a few minutes ago" in words(again.text)
    assert new_links_mailed(world) == 1
    # Once the interval has passed, another process mails the next one.
    world.clock.advance(minutes=NEW_LINK_INTERVAL.total_seconds() / 60 + 1)
    with TestClient(mounted(other_process)) as elsewhere:
        later = elsewhere.post(f"/p/preferences/{token}/new-link", data={"lang": "en"})
    assert "We sent you a mail with a new link." in words(later.text)
    assert new_links_mailed(world) == 2


def test_an_old_link_pressed_many_times_at_once_mails_one_new_link(world: HubWorld) -> None:
    token = expired_link(world)
    centre = PreferenceCentre(world.hub)
    send = world.hub.mailer.send

    def slow_send(mail: Mail) -> str:  # a mail server that takes its time, as real ones do
        time.sleep(0.3)
        return send(mail)

    world.hub.mailer.send = slow_send  # type: ignore[method-assign]
    start = threading.Barrier(8)
    answers: list[str] = []

    def press() -> None:
        start.wait()
        answers.append(centre.mail_new_link(token))

    threads = [threading.Thread(target=press) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(answers) == ["mailed"] + ["recently"] * 7
    assert new_links_mailed(world) == 1


def test_a_new_link_that_could_not_go_can_be_asked_for_again_at_once(world: HubWorld) -> None:
    from consentsync.hub.mail import MailFailed

    token = expired_link(world)
    centre = PreferenceCentre(world.hub)
    send = world.hub.mailer.send

    def refused(_mail: Mail) -> Any:
        raise MailFailed("SMTP 127.0.0.1: refused")

    world.hub.mailer.send = refused  # type: ignore[method-assign]
    assert centre.mail_new_link(token) == "failed"
    world.hub.mailer.send = send  # type: ignore[method-assign]
    # Nobody got the first: the second goes at once, not "a few minutes ago".
    assert centre.mail_new_link(token) == "mailed"
    assert new_links_mailed(world) == 1
    assert mails_with(world, "/p/preferences/") >= 1 and world.inbox.messages[-1]["To"] == EMAIL


def test_a_new_link_mailed_is_not_counted_as_a_lapsed_double_opt_in(world: HubWorld) -> None:
    token = expired_link(world)
    world.hub.lapse_unconfirmed()  # the seed's sign-up, whose link expired with the old one
    assert PreferenceCentre(world.hub).mail_new_link(token) == "mailed"
    world.clock.advance(days=world.hub.settings.confirmation_days + 1)
    # `consentsync hub lapse` says how many double opt-ins lapsed: the mark of a mail is none.
    assert world.hub.lapse_unconfirmed() == 0


# -- receipts --------------------------------------------------------------------------------------


def receipts_to(world: HubWorld, address: str = EMAIL) -> int:
    return sum(
        "receipt" in str(message["Subject"]).lower() and str(message["To"]) == address
        for message in world.inbox.messages
    )


def test_toggles_sent_to_several_web_processes_mail_no_more_receipts_than_one_would(
    world: HubWorld, people: TestClient, other_process: Hub
) -> None:
    from consentsync.hub.capture import RECEIPT_MAILS, RECEIPT_WINDOW

    token = token_of(world, seed(world))
    world.clock.advance(minutes=RECEIPT_WINDOW.total_seconds() / 60 + 1)  # the seed's receipt is old
    before = receipts_to(world)
    with TestClient(mounted(other_process)) as elsewhere:
        for index in range(12):  # whoever holds the link, toggling through each process in turn
            world.clock.advance(seconds=2)
            client = people if index % 2 == 0 else elsewhere
            # Withdrawals through both processes: a grant over the withdrawal records nothing
            # until its mailed link is confirmed (docs/hub.md), so it mails no receipt.
            action = "withdraw" if index % 4 < 2 else "grant"
            form = {
                "purpose": "newsletter",
                "channel": "email",
                "action": action,
                "notice_version": "2026-05",
            }
            answer = client.post(f"/p/preferences/{token}/choose", data=form, follow_redirects=False)
            assert answer.status_code == 303
    assert receipts_to(world) - before == RECEIPT_MAILS
    # Every withdrawal is recorded all the same; the grants wait for their mailed confirmation.
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "withdrawn"
    history = [e for e in world.ledger.subject_view(EMAIL)["history"] if e["purpose"] == "newsletter"]
    assert [e["status"] for e in history].count("withdrawn") == 6
    # A form's captures count with the page's: the same person, the same mailbox.
    assert world.post("/consents", {**GRANT_VICTIM, "status": "withdrawn"}).status_code == 201
    assert receipts_to(world) - before == RECEIPT_MAILS
    # Once the window has passed, the next choice's receipt is mailed again, by either process.
    world.clock.advance(minutes=RECEIPT_WINDOW.total_seconds() / 60 + 1)
    with TestClient(mounted(other_process)) as elsewhere:
        form = {"purpose": "newsletter", "channel": "email", "action": "withdraw"}
        assert elsewhere.post(f"/p/preferences/{token}/choose", data=form).status_code == 200
    assert receipts_to(world) - before == RECEIPT_MAILS + 1


def test_a_receipt_of_a_record_erased_before_it_went_is_not_mailed(world: HubWorld) -> None:
    from consentsync.hub.capture import PendingReceipt

    answer = world.post("/consents", GRANT_VICTIM)
    granted = answer.json()["results"][0]
    world.ledger.erase(EMAIL, reason="asked", actor="ops")
    before = len(world.inbox.messages)
    pending = PendingReceipt(EMAIL, granted["subject"], granted["record_id"])
    assert world.hub.mail_receipt(pending) is False  # not a NotFound raised in a background task
    assert len(world.inbox.messages) == before


GRANT_VICTIM = {"email": EMAIL, "purpose": "newsletter", "status": "granted", "notice_version": "2026-05"}
