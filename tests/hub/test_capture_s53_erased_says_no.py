"""A no captured for an erased address (session 53): an ESP's unsubscribe webhook, an opt-out
form or an objection sent after the person was erased.

Such a capture made a new person holding the erased address again, mailed that address a
receipt with a working preference link, and (an objection) opened a pending objection on the new
person for ops to review. The person has not come back: only a new sign-up (a grant) brings them
back. Now the no is read as a CRM's is: matched to the erased person by the address's keyed hash
(in any of its forms), the address is never written, nothing is mailed, and the answer is the
ledger's (suppressed, ``erasure_suppression``).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from consentsync.domain import email_forms, normalise_email
from consentsync.ledger.schema import objections, subject_identifiers, subjects
from tests.hub.conftest import HubWorld

# Erased in its one form (Unicode domain), sent again in punycode: the same mailbox.
ERASED = "jörg@bücher.example"
AS_AN_ESP_SENDS_IT = "jörg@xn--bcher-kva.example"
PLAIN = "bob@example.test"
GRANT = {"purpose": "newsletter", "status": "granted", "notice_version": "2026-05"}


def stored_forms(world: HubWorld, address: str) -> int:
    forms = set(email_forms(normalise_email(address))) | {address}
    with world.ledger.engine.connect() as conn:
        query = (
            select(func.count())
            .select_from(subject_identifiers)
            .where(subject_identifiers.c.value.in_(forms))
        )
        return int(conn.execute(query).scalar_one())


def people(world: HubWorld) -> int:
    with world.ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(subjects)).scalar_one())


def pending_objections(world: HubWorld) -> int:
    with world.ledger.engine.connect() as conn:
        query = select(func.count()).select_from(objections).where(objections.c.status == "pending")
        return int(conn.execute(query).scalar_one())


def mails_to(world: HubWorld, address: str) -> list[str]:
    forms = set(email_forms(normalise_email(address))) | {address}
    return [str(m["Subject"]) for m in world.inbox.messages if str(m["To"]) in forms]


def decision(world: HubWorld, address: str, purpose: str = "newsletter") -> dict[str, Any]:
    answer = world.post("/decisions", {"email": address, "purpose": purpose, "channel": "email"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def erased(world: HubWorld, address: str, *, known: bool = True) -> None:
    if known:
        assert world.post("/consents", {**GRANT, "email": address}).status_code == 201
        assert stored_forms(world, address) == 1
    world.clock.advance(days=1)
    answer = world.post("/erasure-requests", {"email": address, "reason": "Art. 17 request by mail"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["subject_known"] is known
    assert stored_forms(world, address) == 0
    world.inbox.messages.clear()
    world.clock.advance(days=1)


def assert_suppressed_answer(result: dict[str, Any]) -> None:
    assert result["subject"] is None and result["erased"] is True
    assert "record_id" not in result
    assert result["state"]["suppressed"] is True
    assert result["state"]["rule"] == "erasure_suppression"


@pytest.mark.parametrize(("address", "sent_as"), [(PLAIN, PLAIN), (ERASED, AS_AN_ESP_SENDS_IT)])
def test_an_unsubscribe_and_an_objection_after_erasure_store_and_mail_nothing(
    world: HubWorld, address: str, sent_as: str
) -> None:
    erased(world, address)
    before = people(world)

    unsubscribe = world.post("/consents", {"email": sent_as, "purpose": "newsletter", "status": "withdrawn"})
    assert unsubscribe.status_code == 201, unsubscribe.text
    assert_suppressed_answer(unsubscribe.json()["results"][0])
    refusal = world.post("/consents", {"email": sent_as, "purpose": "profiling", "status": "refused"})
    assert refusal.status_code == 201, refusal.text
    assert_suppressed_answer(refusal.json()["results"][0])
    # A browser's GPC signal beside an opt-out: a no too.
    with_gpc = world.post(
        "/consents", {"email": sent_as, "purpose": "newsletter", "status": "withdrawn"}, **{"Sec-GPC": "1"}
    )
    assert with_gpc.status_code == 201, with_gpc.text
    assert all(r["subject"] is None for r in with_gpc.json()["results"])

    objection = world.post("/objections", {"email": sent_as, "purpose": "profiling"})
    assert objection.status_code in (200, 201), objection.text
    body = objection.json()
    assert body["erased"] is True and body["recorded"] is False
    assert body["rule"] == "erasure_suppression" and body["subject"] is None and body["id"] is None

    assert stored_forms(world, address) == 0  # the address is not written back, in any form
    assert people(world) == before  # no new person for it
    assert pending_objections(world) == 0  # nothing for ops to review on someone new
    assert world.inbox.messages == []  # no receipt, no preference link to the erased address
    for asked in (address, sent_as):
        decided = decision(world, asked)
        assert (decided["contact"], decided["rule"]) == (False, "erasure_suppression")


def test_an_address_erased_before_anyone_held_it_is_not_stored_by_a_no(world: HubWorld) -> None:
    """``consentsync erase`` of an address the ledger never held leaves a suppression entry
    only: an opt-out for it still stores no address and mails nothing."""
    erased(world, PLAIN, known=False)
    answer = world.post("/consents", {"email": PLAIN, "purpose": "newsletter", "status": "withdrawn"})
    assert answer.status_code == 201, answer.text
    result = answer.json()["results"][0]
    assert (result["state"]["suppressed"], result["state"]["rule"]) == (True, "erasure_suppression")
    assert (result["subject"], result.get("erased"), "record_id" in result) == (None, True, False)
    objection = world.post("/objections", {"email": PLAIN, "purpose": "profiling"})
    assert objection.status_code in (200, 201) and objection.json()["erased"] is True
    assert stored_forms(world, PLAIN) == 0
    assert pending_objections(world) == 0
    assert world.inbox.messages == []
    assert decision(world, PLAIN)["contact"] is False


@pytest.mark.parametrize(("address", "sent_as"), [(PLAIN, PLAIN), (ERASED, AS_AN_ESP_SENDS_IT)])
def test_a_new_sign_up_after_erasure_still_brings_the_person_back(
    world: HubWorld, address: str, sent_as: str
) -> None:
    erased(world, address)
    before = people(world)
    answer = world.post("/consents", {**GRANT, "email": sent_as})
    assert answer.status_code == 201, answer.text
    result = answer.json()["results"][0]
    assert result["subject"] is not None and "erased" not in result
    assert people(world) == before + 1  # the person who came back, with their address
    assert stored_forms(world, address) == 1
    assert len(mails_to(world, address)) == 1  # their receipt
    assert decision(world, sent_as)["known"] is True
    # Their later no is theirs: recorded on them, its receipt mailed to the address they gave.
    world.clock.advance(hours=1)
    later = world.post("/consents", {"email": sent_as, "purpose": "newsletter", "status": "withdrawn"})
    assert later.json()["results"][0]["subject"] == result["subject"]
    assert len(mails_to(world, address)) == 2
    objection = world.post("/objections", {"email": sent_as, "purpose": "profiling"})
    assert objection.status_code == 201 and objection.json()["subject"] == result["subject"]
    assert pending_objections(world) == 1


def test_a_sign_up_and_an_opt_out_in_one_request_bring_the_person_back(world: HubWorld) -> None:
    """A grant beside the no (a sign-up form sending the browser's GPC signal): the person came
    back; the no is theirs, as it always was."""
    erased(world, PLAIN)
    answer = world.post("/consents", {**GRANT, "email": PLAIN}, **{"Sec-GPC": "1"})
    assert answer.status_code == 201, answer.text
    subjects_named = {r["subject"] for r in answer.json()["results"]}
    assert len(subjects_named) == 1 and None not in subjects_named
    assert stored_forms(world, PLAIN) == 1
