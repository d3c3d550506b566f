"""A consent request goes to a person once, at the address they were last known by: a person
holding two addresses (a CRM record that took a new one) was a candidate twice, and mailed at
whichever address the database listed first, possibly the old one, which may be someone else's
now (session 61 review of e8ce3ac)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from consentsync.hub.outreach import Outreacher
from consentsync.ledger.schema import subject_identifiers
from tests.conftest import SQLITE_ONLY
from tests.hub.test_outreach import someone


@SQLITE_ONLY
def test_a_request_goes_once_to_the_latest_address(world: Any) -> None:
    someone(world, "ada@example.test")
    with world.ledger.engine.begin() as conn:  # the address a CRM record took later
        person = conn.execute(select(subject_identifiers.c.subject_id)).scalar()
        conn.execute(
            insert(subject_identifiers).values(subject_id=person, kind="email", value="new.ada@example.test")
        )
    world.inbox.messages.clear()
    Outreacher(world.hub, sleep=lambda _seconds: None).request_consent("newsletter")
    assert [message["To"] for message in world.inbox.messages] == ["new.ada@example.test"]
