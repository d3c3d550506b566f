"""Receipts mailed to one address are capped a day (session 53), as double opt-in links are.

"Fewer than 5 in 10 minutes" alone let whoever types a stranger's address into an opt-out form
every 2 minutes mail them 720 receipts a day, each with a link to their preference page. The cap
counts across API keys (and the preference page): it is the mailbox that is protected.
"""

from __future__ import annotations

from consentsync.hub import keys
from consentsync.hub.capture import RECEIPT_MAILS, RECEIPT_MAILS_PER_DAY, RECEIPT_WINDOW
from tests.conftest import SQLITE_ONLY
from tests.hub.conftest import HubWorld

VICTIM = "victim@example.test"


def receipts_to(world: HubWorld, address: str = VICTIM) -> int:
    return sum(
        "receipt" in str(message["Subject"]).lower() and str(message["To"]) == address
        for message in world.inbox.messages
    )


def test_an_opt_out_form_sent_every_two_minutes_mails_a_days_cap_of_receipts(world: HubWorld) -> None:
    assert RECEIPT_MAILS_PER_DAY > RECEIPT_MAILS  # a person setting several choices gets each
    _key, shop = keys.create(world.ledger, "shop", source="shop_form", purposes=["*"], actions=["consents"])
    sent = RECEIPT_MAILS_PER_DAY * 3
    for index in range(sent):  # every 2 minutes: never 5 within 10 minutes, so each passed before
        body = {"email": VICTIM, "purpose": "newsletter", "status": ("withdrawn", "refused")[index % 2]}
        secret = (world.secret, shop)[(index // 2) % 2]  # through two keys: counted together
        answer = world.post("/consents", body, secret=secret)
        assert answer.status_code == 201, answer.text
        world.clock.advance(minutes=2)
    assert receipts_to(world) == RECEIPT_MAILS_PER_DAY
    # Every choice is recorded all the same: only the mails are held back.
    history = world.ledger.subject_view(VICTIM)["history"]
    assert len([e for e in history if e["purpose"] == "newsletter"]) == sent
    # Another person's receipts are not held back by it.
    other = {"email": "ada@example.test", "purpose": "newsletter", "status": "withdrawn"}
    assert world.post("/consents", other).status_code == 201
    assert receipts_to(world, "ada@example.test") == 1
    # A day after the flood stopped, a choice's receipt is mailed again.
    world.clock.advance(hours=24, minutes=RECEIPT_WINDOW.total_seconds() / 60)
    body = {"email": VICTIM, "purpose": "newsletter", "status": "withdrawn"}
    assert world.post("/consents", body).status_code == 201
    assert receipts_to(world) == RECEIPT_MAILS_PER_DAY + 1


@SQLITE_ONLY  # the mail cap, not SQL: its counting runs on PostgreSQL in the test above (CI time)
def test_a_flood_that_goes_on_stays_held_back(world: HubWorld) -> None:
    """Choices held back by the daily cap still count: a flood that goes on past its first day
    mails nothing more, rather than the cap again each time the first receipts are a day old."""
    # A public form's key, its rate raised only because the test sends 26 hours in seconds.
    _key, form = keys.create(
        world.ledger,
        "form",
        source="web_form",
        purposes=["newsletter"],
        actions=["consents"],
        rate_per_minute=100_000,
    )
    for index in range(26 * 30):  # every 2 minutes for 26 hours
        body = {"email": VICTIM, "purpose": "newsletter", "status": ("withdrawn", "refused")[index % 2]}
        assert world.post("/consents", body, secret=form).status_code == 201
        world.clock.advance(minutes=2)
    assert receipts_to(world) == RECEIPT_MAILS_PER_DAY
