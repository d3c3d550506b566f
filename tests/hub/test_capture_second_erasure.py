"""A grant for an address erased twice is weighed against the second erasure (review report).

Erasing an address erased before keeps its suppression entry, so the entry's date stays the first
erasure's. A person erased (T1) who came back through a trusted sign-up (T2) and was erased again
(T3) was brought back by a trusted grant dated between T2 and T3 (a late delivery): it was
compared with T1, answered 201 and created a person with the address, granted. docs/hub.md says a
trusted grant dated before the erasure is refused with 409: it is now, and records nothing; one
dated after the second erasure still brings the person back. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from consentsync.domain import iso
from tests.hub.conftest import HubWorld
from tests.hub.test_capture_s53_erased_says_no import GRANT, PLAIN, decision, mails_to, stored_forms
from tests.hub.test_capture_untrusted_grant_after_erasure import assert_refused, rows


def _erase(world: HubWorld, reason: str) -> datetime:
    answer = world.post("/erasure-requests", {"email": PLAIN, "reason": reason})
    assert answer.status_code == 200, answer.text
    assert stored_forms(world, PLAIN) == 0
    return world.clock()


def _erased_came_back_erased_again(world: HubWorld) -> tuple[datetime, datetime]:
    """The person signs up, is erased, signs up again and is erased again: when they came back
    and when they were erased the second time."""
    grant = {**GRANT, "email": PLAIN}
    assert world.post("/consents", grant).status_code == 201
    world.clock.advance(days=1)
    _erase(world, "Art. 17 request")
    world.clock.advance(days=1)
    came_back = world.clock()
    assert world.post("/consents", grant).status_code == 201  # a trusted new sign-up
    assert decision(world, PLAIN)["contact"] is True
    world.clock.advance(days=1)
    second = _erase(world, "asked again")
    world.clock.advance(days=1)
    world.inbox.messages.clear()
    return came_back, second


def test_a_trusted_grant_dated_before_the_second_erasure_is_refused(world: HubWorld) -> None:
    came_back, second = _erased_came_back_erased_again(world)
    before = rows(world)
    between = {**GRANT, "email": PLAIN, "event_time": (came_back + timedelta(hours=12)).isoformat()}
    assert_refused(world.post("/consents", between), PLAIN)
    assert rows(world) == before  # no person, no event, no link, no audit entry
    assert stored_forms(world, PLAIN) == 0
    assert mails_to(world, PLAIN) == []
    answer = decision(world, PLAIN)
    assert answer["contact"] is False
    assert answer["rule"] == "erasure_suppression"
    assert iso(second) in answer["detail"], answer  # suppressed since the second erasure


def test_a_trusted_grant_dated_after_the_second_erasure_brings_the_person_back(world: HubWorld) -> None:
    _came_back, second = _erased_came_back_erased_again(world)
    after = {**GRANT, "email": PLAIN, "event_time": (second + timedelta(minutes=1)).isoformat()}
    answer = world.post("/consents", after)
    assert answer.status_code == 201, answer.text
    assert stored_forms(world, PLAIN) == 1
    assert decision(world, PLAIN)["contact"] is True
