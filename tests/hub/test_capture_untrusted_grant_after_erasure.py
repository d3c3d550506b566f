"""A grant for an erased address from a capture that cannot lift the erasure (black-box report).

A key of an untrusted source (``--source list_import``) granted for an address erased a day
before: the capture answered 201 with a new person holding the erased address again (still
suppressed, ``erasure_suppression``) and mailed that address a receipt with a preference link.
docs/policy.md says a person comes back only through a new sign-up, "with a newer evidenced
consent from a trusted source". Now such a grant is refused (409, one line, no address), in any
of the address's forms, alone or in a batch, and records and mails nothing; a trusted new
sign-up still brings the person back, and a grant for an address held by someone who came back
is theirs as before.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from consentsync.domain import email_forms, normalise_email
from consentsync.hub import keys
from consentsync.ledger.schema import audit_entries, confirmations, consent_events, subjects
from tests.hub.conftest import HubWorld
from tests.hub.test_capture_s53_erased_says_no import (
    AS_AN_ESP_SENDS_IT,
    ERASED,
    GRANT,
    PLAIN,
    decision,
    erased,
    mails_to,
    stored_forms,
)

OTHER = "carol@example.test"


def rows(world: HubWorld) -> tuple[int, ...]:
    """How many people, events, confirmation links and audit entries the ledger holds."""
    with world.ledger.engine.connect() as conn:
        return tuple(
            int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in (subjects, consent_events, confirmations, audit_entries)
        )


def list_import(world: HubWorld) -> str:
    _key, secret = keys.create(
        world.ledger, "shady", source="list_import", purposes=["*"], actions=["consents"]
    )
    return secret


def assert_refused(answer: Any, address: str, index: int = 0) -> None:
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error.startswith(f"consents[{index}].email: the address was erased"), error
    assert "\n" not in error
    forms = set(email_forms(normalise_email(address))) | {address, address.upper()}
    assert not any(form.lower() in error.lower() for form in forms)  # the address is not echoed
    assert "@" not in error


@pytest.mark.parametrize(
    ("address", "sent_as"),
    [(PLAIN, PLAIN), (PLAIN, "  BOB@Example.TEST "), (ERASED, AS_AN_ESP_SENDS_IT)],
)
def test_an_untrusted_grant_for_an_erased_address_stores_and_mails_nothing(
    world: HubWorld, address: str, sent_as: str
) -> None:
    erased(world, address)
    shady = list_import(world)
    before = rows(world)

    for purpose in ("newsletter", "email_marketing"):  # email_marketing asks for a double opt-in
        answer = world.post("/consents", {**GRANT, "purpose": purpose, "email": sent_as}, secret=shady)
        assert_refused(answer, address)
    # A grant and a no in one request (an opt-out beside, a GPC signal) refuse all the same.
    both = world.post(
        "/consents",
        {
            "consents": [
                {**GRANT, "email": sent_as},
                {"email": sent_as, "purpose": "profiling", "status": "refused"},
            ]
        },
        secret=shady,
        **{"Sec-GPC": "1"},
    )
    assert_refused(both, address)

    assert rows(world) == before  # no person, no event, no link, no audit entry
    assert stored_forms(world, address) == 0  # the address is not written back, in any form
    assert world.inbox.messages == []  # no receipt, no confirmation to the erased mailbox
    decided = decision(world, sent_as)
    assert (decided["contact"], decided["rule"], decided["known"]) == (False, "erasure_suppression", False)

    # A trusted new sign-up (docs/policy.md, "Erasure") still brings the person back ...
    world.clock.advance(minutes=1)
    sign_up = world.post("/consents", {**GRANT, "email": sent_as})
    assert sign_up.status_code == 201, sign_up.text
    came_back = sign_up.json()["results"][0]["subject"]
    assert came_back is not None and stored_forms(world, address) == 1
    assert decision(world, sent_as)["contact"] is True
    assert len(mails_to(world, address)) == 1  # their receipt
    # ... and the address is theirs from then on: the list's grant is recorded on them, as any
    # untrusted grant for a known person is (it lifts nothing, decides nothing new).
    world.clock.advance(minutes=1)
    listed = world.post("/consents", {**GRANT, "purpose": "profiling", "email": sent_as}, secret=shady)
    assert listed.status_code == 201, listed.text
    assert listed.json()["results"][0]["subject"] == came_back


def test_a_batch_with_one_erased_address_records_none_of_it(world: HubWorld) -> None:
    """The request is one transaction: refused, it records nothing for the others in it either,
    and the error names the item."""
    erased(world, PLAIN)
    shady = list_import(world)
    before = rows(world)
    batch = {
        "consents": [
            {**GRANT, "email": OTHER},
            {"email": OTHER, "purpose": "profiling", "status": "withdrawn"},
            {**GRANT, "email": PLAIN},
        ]
    }
    answer = world.post("/consents", batch, secret=shady, **{"Idempotency-Key": "list-1"})
    assert_refused(answer, PLAIN, index=2)
    assert rows(world) == before
    assert stored_forms(world, PLAIN) == 0 and stored_forms(world, OTHER) == 0
    assert world.inbox.messages == []
    # The refusal is not kept as the key's answer: the list fixed, the same key records it.
    fixed = world.post(
        "/consents", {"consents": batch["consents"][:2]}, secret=shady, **{"Idempotency-Key": "list-1"}
    )
    assert fixed.status_code == 201, fixed.text
    assert stored_forms(world, OTHER) == 1 and stored_forms(world, PLAIN) == 0


def test_a_trusted_grant_dated_before_the_erasure_does_not_bring_the_address_back(world: HubWorld) -> None:
    """A trusted source's grant that the erasure came after cannot lift it (a form's late
    delivery of a sign-up the person then asked to be erased from): refused as well."""
    erased(world, PLAIN)
    before = rows(world)
    stale = (world.ledger.clock() - timedelta(days=3)).isoformat()
    answer = world.post("/consents", {**GRANT, "email": PLAIN, "event_time": stale})
    assert_refused(answer, PLAIN)
    assert rows(world) == before and stored_forms(world, PLAIN) == 0
    assert world.inbox.messages == []


def test_a_trusted_double_opt_in_sign_up_after_erasure_is_confirmed_as_before(world: HubWorld) -> None:
    """The sign-up records "requested" (no lift yet); its confirmation does, so it is mailed."""
    erased(world, PLAIN)
    shady = list_import(world)
    refused = world.post("/consents", {**GRANT, "purpose": "email_marketing", "email": PLAIN}, secret=shady)
    assert_refused(refused, PLAIN)
    answer = world.post("/consents", {**GRANT, "purpose": "email_marketing", "email": PLAIN})
    assert answer.status_code == 201, answer.text
    assert answer.json()["results"][0]["confirmation"] == "queued"
    assert len(mails_to(world, PLAIN)) == 1
    link = world.inbox.link("/p/confirm/")
    world.clock.advance(minutes=5)  # the person opens the mail a little later
    assert world.hub.confirm(link.rsplit("/", 1)[-1])["already"] is False
    assert decision(world, PLAIN, "email_marketing")["contact"] is True
