"""Receipts, as an attacker would use them (session 50, second pass):

- ``GET /v1/receipts/...?language=`` put whatever it was given into the receipt's ``language``:
  a receipt stating a language nobody configured (or any text a caller chose).
- Whoever holds a person's preference link (or types their address into a form) could toggle a
  choice again and again, and each toggle mailed the person a receipt: a mail flood.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from consentsync.domain import ConsentStatus
from consentsync.hub.capture import CONFIRMATION_MAILS, RECEIPT_MAILS, RECEIPT_WINDOW
from tests.hub.conftest import HubWorld, in_german
from tests.hub.people_world import EMAIL, GRANT, mails_with, people_pages, seed, sqlite_ledger_url, token_of

# The module's fixtures: `ledger_url` (SQLite only here) and `people` (the pages, in-process).
FIXTURES = (sqlite_ledger_url, people_pages)


def receipts_to(world: HubWorld, address: str = EMAIL) -> int:
    return sum(
        "receipt" in str(message["Subject"]).lower() and str(message["To"]) == address
        for message in world.inbox.messages
    )


# -- the receipt's language --------------------------------------------------------------------


def test_a_receipt_is_given_only_in_a_configured_language(world: HubWorld) -> None:
    granted = world.post("/consents", GRANT).json()["results"][0]
    path = f"/receipts/{granted['subject']}/{granted['record_id']}"
    for asked in ("xx", "<script>", "en-evil", "EN"):
        answer = world.client.get(path, params={"language": asked}, headers=world.auth())
        assert answer.status_code == 422, asked
        error = answer.json()["error"]
        assert error.startswith("language: ") and "\n" not in error
        assert "is not one of en, de" in error
    answer = world.client.get(path, params={"language": "de"}, headers=world.auth())
    assert answer.status_code == 200 and answer.json()["language"] == "de"
    # Without one: the first configured language.
    assert world.client.get(path, headers=world.auth()).json()["language"] == "en"


def test_a_receipt_without_a_language_is_in_the_first_configured_one(world: HubWorld) -> None:
    world.hub.settings = world.hub.settings.model_copy(update={"languages": ["de", "en"]})
    in_german(world.ledger, "newsletter")
    granted = world.post("/consents", {**GRANT, "language": "de"}).json()["results"][0]
    path = f"/receipts/{granted['subject']}/{granted['record_id']}"
    assert world.client.get(path, headers=world.auth()).json()["language"] == "de"


# -- a toggle flood ------------------------------------------------------------------------------


def toggle(people: TestClient, token: str, action: str) -> None:
    answer = people.post(
        f"/p/preferences/{token}/choose",
        data={"purpose": "newsletter", "channel": "email", "action": action, "notice_version": "2026-05"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text


def test_toggling_a_choice_on_the_page_mails_a_bounded_number_of_receipts(
    world: HubWorld, people: TestClient
) -> None:
    uid = seed(world)
    token = token_of(world, uid)
    before = receipts_to(world)
    confirmations = mails_with(world, "/p/confirm/")
    world.clock.advance(minutes=RECEIPT_WINDOW.total_seconds() / 60 + 1)  # the seed's receipt is old
    for index in range(12):  # whoever holds the link, grant and withdraw, again and again
        world.clock.advance(seconds=2)
        toggle(people, token, "withdraw" if index % 2 == 0 else "grant")
    assert receipts_to(world) - before == RECEIPT_MAILS
    # A grant over the withdrawal waits for the confirmation mailed to the person (docs/hub.md);
    # the next withdrawal voids its link, and the double opt-in's day's cap holds those mails.
    assert mails_with(world, "/p/confirm/") - confirmations == CONFIRMATION_MAILS
    # Every withdrawal is recorded all the same: only the mails are held back.
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "withdrawn"
    history = [e for e in world.ledger.subject_view(EMAIL)["history"] if e["purpose"] == "newsletter"]
    assert [e["status"] for e in history].count("withdrawn") == 6
    # A withdrawal after the flood still shows its receipt on the page, to download.
    world.clock.advance(seconds=2)
    toggle(people, token, "withdraw")
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "withdrawn"
    page = people.get(f"/p/preferences/{token}", params={"done": "withdrawn", "item": "newsletter"})
    assert page.status_code == 200
    # Once the window has passed, receipts are mailed again.
    world.clock.advance(minutes=RECEIPT_WINDOW.total_seconds() / 60 + 1)
    toggle(people, token, "withdraw")
    assert receipts_to(world) - before == RECEIPT_MAILS + 1


def test_a_form_sent_again_and_again_for_someone_mails_a_bounded_number_of_receipts(
    world: HubWorld,
) -> None:
    victim = "victim@example.test"
    for index in range(10):
        world.clock.advance(seconds=5)
        status = "withdrawn" if index % 2 else "granted"
        assert world.post("/consents", {**GRANT, "email": victim, "status": status}).status_code == 201
    assert receipts_to(world, victim) == RECEIPT_MAILS
    # Another person's receipts are not held back by it.
    assert world.post("/consents", GRANT).status_code == 201
    assert receipts_to(world, EMAIL) == 1


def test_a_receipt_goes_to_the_address_the_person_is_known_by_now(world: HubWorld) -> None:
    """A CRM record of Ada's took her new address (she holds both): a form given her old one (a
    mailbox she left, maybe another's now) mails its receipt, and the link to her page in it, to
    the address she is known by now."""
    from consentsync.ledger.identity import CrmLink, Identity
    from tests.integration.helpers import consent_value

    old, new = "ada@oldjob.example", "ada.private@home.example"
    record = CrmLink("sf", "Contact", "003000000000001")
    for address in (old, new):  # the CRM record showed the one, then the other
        world.clock.advance(minutes=1)
        value = consent_value(ConsentStatus.GRANTED, world.clock.now, world.clock.now, purpose="newsletter")
        world.ledger.record(Identity(email=address, link=record), value)
    world.clock.advance(minutes=1)
    assert world.post("/consents", {**GRANT, "email": old, "status": "withdrawn"}).status_code == 201
    assert (receipts_to(world, old), receipts_to(world, new)) == (0, 1)


def test_a_double_opt_in_mail_goes_to_the_address_the_person_is_known_by_now(world: HubWorld) -> None:
    """A sign-up typed with Ada's old address (her CRM record has taken a new one): the link that
    would grant consent for her goes to where she is now, not to a mailbox she left."""
    from consentsync.ledger.identity import CrmLink, Identity
    from tests.integration.helpers import consent_value

    old, new = "ada@oldjob.example", "ada.private@home.example"
    record = CrmLink("sf", "Contact", "003000000000001")
    for address in (old, new):
        world.clock.advance(minutes=1)
        value = consent_value(ConsentStatus.GRANTED, world.clock.now, world.clock.now, purpose="newsletter")
        world.ledger.record(Identity(email=address, link=record), value)
    world.clock.advance(minutes=1)
    sign_up = {"email": old, "purpose": "email_marketing", "status": "granted", "notice_version": "2026-05"}
    answer = world.post("/consents", sign_up)
    assert answer.status_code == 201 and answer.json()["results"][0]["confirmation"] == "queued"
    sent_to = [str(message["To"]) for message in world.inbox.messages]
    assert sent_to == [new], sent_to
