"""A double opt-in sign-up with an erased address (black-box finding F8, session 58).

After leo was erased, a sign-up for a double opt-in purpose through a trusted key made a new
person holding leo's address at once, before anyone followed the confirmation link; never
followed, the address stayed in the ledger for good (the lapse kept the sign-up "requested").
Anyone can type an erased address into a form. Now, until the person confirms, the ledger holds
no trace of the address but its keyed hash: the sign-up waits on a person made for it who holds
no address, the confirmation mail still goes to the address (its link carries it, sealed), and
the address enters the ledger only when that link is confirmed; lapsed, declined or erased again,
nothing of it is left. `audit verify` agrees throughout. Addresses never erased are unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from consentsync.domain import email_forms, normalise_email
from consentsync.hub.links import LinkRefused
from consentsync.ledger.schema import audit_entries, metadata, subject_identifiers, subjects
from consentsync.ledger.service import NotFound
from tests.conftest import Cli
from tests.hub.conftest import HubWorld
from tests.hub.people_world import served_pages
from tests.hub.test_capture_s53_erased_says_no import (
    AS_AN_ESP_SENDS_IT,
    ERASED,
    GRANT,
    decision,
    erased,
    mails_to,
    stored_forms,
)

LEO = "leo@example.org"
SIGN_UP = {**GRANT, "purpose": "email_marketing", "evidence_ref": "form:leo-back"}
AGREE = "identifiers agree with their bindings in the audit chain: "


@pytest.fixture
def people(world: HubWorld) -> Any:
    yield from served_pages(world, TestClient)


def held_anywhere(world: HubWorld, address: str) -> list[str]:
    """Every table and column of the ledger holding the address in clear, in any of its forms."""
    forms = {f.lower() for f in email_forms(normalise_email(address))} | {address.lower()}
    found: list[str] = []
    with world.ledger.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for column, value in row._mapping.items():
                    if isinstance(value, str) and any(form in value.lower() for form in forms):
                        found.append(f"{table.name}.{column}")
    return found


def audit_verified(world: HubWorld) -> str:
    """`consentsync audit verify` on the world's ledger: passes, and the identifiers agree."""
    result = Cli(world.hub.config.path, CliRunner())("audit", "verify")
    assert result.exit_code == 0, result.output + (result.stderr or "")
    assert AGREE in result.output, result.output
    return result.output


def count(world: HubWorld, table: Any) -> int:
    with world.ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def sign_up(world: HubWorld, address: str = LEO, **extra: Any) -> dict[str, Any]:
    answer = world.post("/consents", {**SIGN_UP, "email": address, **extra})
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()["results"][0]
    return result


def confirmation_token(world: HubWorld) -> str:
    """The token of the last confirmation link mailed (a receipt may have gone after it)."""
    last = max(i for i, _m in enumerate(world.inbox.messages) if "/p/confirm/" in world.inbox.text(i))
    return world.inbox.link("/p/confirm/", last).rsplit("/", 1)[1]


@pytest.mark.parametrize(("address", "sent_as"), [(LEO, LEO), (ERASED, AS_AN_ESP_SENDS_IT)])
def test_an_unconfirmed_sign_up_stores_no_erased_address_and_lapses_leaving_none(
    world: HubWorld, address: str, sent_as: str
) -> None:
    erased(world, address)
    result = sign_up(world, sent_as)
    assert result["recorded"] == "requested" and result["confirmation"] == "queued"
    assert result["subject"] is not None and "erased" not in result
    # The confirmation still goes to the mailbox: the person must be able to come back.
    assert len(mails_to(world, address)) == 1
    # ... but nothing of the address is in the ledger: not in subject_identifiers, not anywhere.
    assert stored_forms(world, address) == 0
    assert held_anywhere(world, address) == []
    assert world.ledger.email_of(result["subject"]) is None
    with pytest.raises(NotFound, match="it was erased"):  # searched, it is the erased address
        world.ledger.subject_view(address)
    assert decision(world, sent_as, "email_marketing")["contact"] is False
    audit_verified(world)

    # Sent again a moment later (a second click): no second mail, no second person.
    people_before = count(world, subjects)
    world.clock.advance(minutes=1)
    assert sign_up(world, sent_as)["confirmation"] == "recently"
    assert count(world, subjects) == people_before and len(mails_to(world, address)) == 1

    # Never confirmed: lapsed, the link opens nothing, and still nothing of the address is kept.
    token = confirmation_token(world)
    world.clock.advance(days=world.hub.settings.confirmation_days + 1)
    assert world.hub.lapse_unconfirmed() == 1
    with pytest.raises(LinkRefused, match="expired"):
        world.hub.confirm(token)
    assert stored_forms(world, address) == 0 and held_anywhere(world, address) == []
    assert decision(world, sent_as, "email_marketing")["contact"] is False
    audit_verified(world)


def test_confirmed_the_person_comes_back_with_their_address(world: HubWorld, people: TestClient) -> None:
    erased(world, LEO)
    waiting = sign_up(world)["subject"]
    path = world.inbox.link("/p/confirm/")
    assert people.get(path).status_code == 200  # the page opens the sealed link
    world.clock.advance(minutes=5)
    assert people.post(path, data={"lang": "en"}, follow_redirects=False).status_code == 303
    # The address is stored now, on the person the sign-up made, bound to them in the chain.
    assert stored_forms(world, LEO) == 1
    assert world.ledger.email_of(waiting) == LEO
    assert world.ledger.subject_uids_for_email(LEO)[0] == waiting
    granted = decision(world, LEO, "email_marketing")
    assert granted["contact"] is True and granted["status"] == "granted"
    with world.ledger.engine.connect() as conn:
        added = conn.execute(
            select(func.count())
            .select_from(audit_entries)
            .where(
                audit_entries.c.action == "subject.identifier_added",
                audit_entries.c.subject_uid == waiting,
            )
        ).scalar_one()
    assert added == 1
    assert "2 identifiers" not in audit_verified(world)  # leo's one address, bound once
    assert world.hub.confirm(path.rsplit("/", 1)[1])["already"] is True
    assert stored_forms(world, LEO) == 1


def test_a_declined_sign_up_leaves_no_address(world: HubWorld) -> None:
    erased(world, LEO)
    waiting = sign_up(world)["subject"]
    world.clock.advance(minutes=5)
    declined = world.hub.decline(confirmation_token(world))
    assert declined["recorded"] is True and declined["subject"] == waiting
    assert stored_forms(world, LEO) == 0 and held_anywhere(world, LEO) == []
    assert len(mails_to(world, LEO)) == 1  # the confirmation only: no receipt to an erased address
    audit_verified(world)


def test_erased_again_while_waiting_the_link_brings_nothing_back(world: HubWorld) -> None:
    erased(world, LEO)
    sign_up(world)
    token = confirmation_token(world)
    world.clock.advance(minutes=5)
    again = world.post("/erasure-requests", {"email": LEO, "reason": "asked again"})
    assert again.status_code == 200, again.text
    with pytest.raises(LinkRefused, match="erased"):
        world.hub.confirm(token)
    assert stored_forms(world, LEO) == 0 and held_anywhere(world, LEO) == []
    assert decision(world, LEO, "email_marketing")["contact"] is False
    audit_verified(world)


def test_a_grant_beside_the_sign_up_brings_the_person_back_at_once(world: HubWorld) -> None:
    """A trusted grant for a purpose without double opt-in is the person coming back now, as
    before: the sign-up beside it is theirs, address and all."""
    erased(world, LEO)
    both = world.post("/consents", {"consents": [{**SIGN_UP, "email": LEO}, {**GRANT, "email": LEO}]})
    assert both.status_code == 201, both.text
    first, second = both.json()["results"]
    assert first["subject"] == second["subject"] and stored_forms(world, LEO) == 1
    assert "." not in confirmation_token(world)  # an ordinary link: the address is on record
    audit_verified(world)


def test_a_sign_up_for_an_address_never_erased_is_unchanged(world: HubWorld) -> None:
    result = sign_up(world, "new@example.org")
    assert stored_forms(world, "new@example.org") == 1
    assert world.ledger.email_of(result["subject"]) == "new@example.org"
    token = confirmation_token(world)
    assert "." not in token
    world.clock.advance(minutes=5)
    assert world.hub.confirm(token)["already"] is False
    assert count(world, subject_identifiers) == 1
    audit_verified(world)
