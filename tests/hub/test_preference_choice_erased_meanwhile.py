"""A choice made on a preference page while the person's erasure commits.

The page reads the person (``person_of``: uid and address) before the choice is written. The
choice (``PreferenceCentre.choose``, the page's Sec-GPC opt-out ``honour_gpc``) was recorded by
that address: an erasure committed in between left nobody holding it, so the resolver made a new
person with the erased address (a withdrawal too), mailed it a receipt, and an "I agree" (a
trusted source, newer than the erasure) lifted the erasure's suppression. The choice is now
recorded on the person the link names, by id, in the transaction that checks they are not
erased; erased meanwhile, it is refused as the link is (410) and nothing is stored or mailed.
"""

from __future__ import annotations

import pytest

from consentsync.hub.links import LinkRefused
from consentsync.hub.people import refusal_status
from consentsync.hub.preferences import Person, PreferenceCentre
from consentsync.ledger.service import Ledger
from tests.hub.conftest import HubWorld
from tests.hub.people_world import EMAIL, seed, token_of
from tests.hub.test_capture_s53_erased_says_no import decision, mails_to, stored_forms


def erased_after_the_page_read_them(world: HubWorld) -> tuple[PreferenceCentre, Person]:
    """Ada's page, read (``person_of``) before her erasure commits."""
    uid = seed(world)
    centre = PreferenceCentre(world.hub)
    person = centre.person(token_of(world, uid))  # the request's person_of(): still known
    world.clock.advance(minutes=1)
    world.ledger.erase(EMAIL, reason="Art. 17 request")  # the CLI, the API, her own mailed link
    assert stored_forms(world, EMAIL) == 0
    world.inbox.messages.clear()
    world.clock.advance(seconds=1)
    return centre, person


def refused_as_erased(error: pytest.ExceptionInfo[LinkRefused]) -> None:
    assert "erased" in str(error.value) and refusal_status(error.value) == 410


@pytest.mark.parametrize("grant", [False, True], ids=["withdrawal", "grant"])
def test_a_preference_choice_racing_an_erasure_stores_and_mails_nothing(world: HubWorld, grant: bool) -> None:
    centre, person = erased_after_the_page_read_them(world)
    visitor = centre.visitor("203.0.113.9", "UA")
    with pytest.raises(LinkRefused) as refused:
        centre.choose(person, "newsletter", "email", grant=grant, visitor=visitor, shown="2026-05")
    refused_as_erased(refused)
    assert stored_forms(world, EMAIL) == 0, "the erased address written back on a new person"
    assert mails_to(world, EMAIL) == [], "a receipt mailed to the erased address"
    assert world.ledger.subject_uids_for_email(EMAIL) == [person.uid]


def test_a_preference_grant_racing_an_erasure_does_not_lift_it(world: HubWorld) -> None:
    centre, person = erased_after_the_page_read_them(world)
    with pytest.raises(LinkRefused):
        centre.choose(
            person, "newsletter", "email", grant=True, visitor=centre.visitor("x", "y"), shown="2026-05"
        )
    answer = decision(world, EMAIL)
    assert (answer["contact"], answer["rule"]) == (False, "erasure_suppression")


def test_the_gpc_signal_of_a_page_racing_an_erasure_stores_nothing(
    world: HubWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``honour_gpc`` reads the person's record, then records the opt-out: the erasure commits
    between the two."""
    uid = seed(world)
    centre = PreferenceCentre(world.hub)
    person = centre.person(token_of(world, uid))
    world.clock.advance(minutes=1)
    # Not erased (yet): a choice is recorded on the person the link names, receipted to them.
    world.inbox.messages.clear()
    done = centre.choose(person, "newsletter", "email", grant=False, visitor=centre.visitor("x", "y"))
    assert (done["recorded"], done["status"], done["suppressed"]) == ("withdrawn", "withdrawn", True)
    assert mails_to(world, EMAIL) == ["Your consent receipt: Newsletter"]
    world.clock.advance(minutes=1)
    read = Ledger.subject_view
    erased: list[str] = []

    def read_then_erased(ledger: Ledger, email: str) -> dict[str, object]:
        view = read(ledger, email)
        if not erased:  # once: the erasure commits right after the read
            erased.append(email)
            ledger.erase(email, reason="Art. 17 request")
        return view

    monkeypatch.setattr(Ledger, "subject_view", read_then_erased)
    with pytest.raises(LinkRefused) as refused:
        centre.honour_gpc(person, centre.visitor("203.0.113.9", "UA", gpc=True))
    refused_as_erased(refused)
    assert erased, "the erasure did not come in between"
    assert stored_forms(world, EMAIL) == 0, "the erased address written back on a new person"
    assert world.ledger.subject_uids_for_email(EMAIL) == [uid]
