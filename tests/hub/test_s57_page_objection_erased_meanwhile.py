"""An objection sent from a preference page while the person's erasure commits.

The page reads the person (``person_of``: uid and address) and their states before the objection
is written. The objection was raised by that address (``Ledger.raise_objection``): an erasure
committed in between left nobody holding it, and nothing was recorded, yet the page answered as
if the objection were taken ("we will answer you"); someone who came back with the address in
between had the objection recorded on them, another person than the link's. The objection is now
raised on the person the link names, by id, in the transaction that finds them not erased;
erased meanwhile, it is refused as the link is (410 Gone), as a choice is
(test_preference_choice_erased_meanwhile.py), and nothing is stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from consentsync.domain import ConsentStatus, LawfulBasis
from consentsync.hub.links import LinkRefused
from consentsync.hub.people import refusal_status
from consentsync.hub.preferences import PreferenceCentre
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import objections
from consentsync.ledger.service import Ledger
from tests.hub.conftest import HubWorld
from tests.hub.people_world import EMAIL, mounted, seed, token_of
from tests.hub.test_capture_s53_erased_says_no import stored_forms
from tests.integration.helpers import consent_value


def objection_rows(world: HubWorld) -> int:
    with world.ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(objections)).scalar_one())


def erase_after_the_states_are_read(monkeypatch: pytest.MonkeyPatch, *, comeback: bool = False) -> list[str]:
    """The erasure commits right after the page's first read of the person's record (the
    states ``PreferenceCentre.object`` checks the purpose against), before the write; with
    ``comeback``, someone signs up with the address again in between too."""
    read = Ledger.subject_view
    erased: list[str] = []

    def read_then_erased(ledger: Ledger, email: str) -> dict[str, object]:
        view = read(ledger, email)
        if not erased:  # once
            erased.append(email)
            ledger.erase(email, reason="Art. 17 request")
            if comeback:  # a sign-up on a web form with the address, by someone
                # Evidenced, dated and observed after the erasure: it lifts it (one stated ahead
                # of its observation counts from the observation, no later than the erasure).
                later = ledger.clock() + timedelta(seconds=1)
                value = consent_value(
                    ConsentStatus.GRANTED,
                    later,
                    later,
                    basis=LawfulBasis.CONSENT,
                    source="web_form",
                    notice_version="privacy-v3",
                )
                ledger.record(Identity(email=email), value)
        return view

    monkeypatch.setattr(Ledger, "subject_view", read_then_erased)
    return erased


@pytest.fixture
def pages(world: HubWorld) -> Iterator[TestClient]:
    with TestClient(mounted(world.hub)) as client:
        yield client


def test_an_objection_racing_an_erasure_is_refused_and_stores_nothing(
    world: HubWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = seed(world)
    centre = PreferenceCentre(world.hub)
    person = centre.person(token_of(world, uid))  # the request's person_of(): still known
    world.clock.advance(minutes=1)
    erased = erase_after_the_states_are_read(monkeypatch)
    with pytest.raises(LinkRefused) as refused:
        centre.object(person, "profiling", centre.visitor("203.0.113.9", "UA"))
    assert erased, "the erasure did not come in between"
    assert "erased" in str(refused.value) and refusal_status(refused.value) == 410
    assert objection_rows(world) == 0
    assert stored_forms(world, EMAIL) == 0, "the erased address written back on a new person"
    assert world.ledger.subject_uids_for_email(EMAIL) == [uid]


def test_the_page_answers_410_to_an_objection_racing_an_erasure(
    world: HubWorld, pages: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the page: the token is issued and the page loaded, then the objection is posted
    while the erasure commits."""
    uid = seed(world)
    token = token_of(world, uid)
    assert pages.get(f"/p/preferences/{token}").status_code == 200
    world.clock.advance(minutes=1)
    erased = erase_after_the_states_are_read(monkeypatch)
    answer = pages.post(
        f"/p/preferences/{token}/object", data={"purpose": "profiling"}, follow_redirects=False
    )
    assert erased, "the erasure did not come in between"
    assert answer.status_code == 410, (answer.status_code, answer.headers.get("location"))
    assert objection_rows(world) == 0


def test_an_objection_racing_an_erasure_and_a_comeback_is_not_put_on_the_newcomer(
    world: HubWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone signs up with the erased address between the page's read and the objection: the
    link's person is erased, so the objection is refused; the newcomer, another person, gets no
    objection they never raised."""
    uid = seed(world)
    centre = PreferenceCentre(world.hub)
    person = centre.person(token_of(world, uid))
    world.clock.advance(minutes=1)
    erase_after_the_states_are_read(monkeypatch, comeback=True)
    with pytest.raises(LinkRefused) as refused:
        centre.object(person, "profiling", centre.visitor("203.0.113.9", "UA"))
    assert refusal_status(refused.value) == 410
    assert objection_rows(world) == 0
    newcomers = {u for u in world.ledger.subject_uids_for_email(EMAIL) if u != uid}
    assert len(newcomers) == 1


def test_an_objection_from_the_page_is_recorded_on_the_links_person(world: HubWorld) -> None:
    """Not erased: the objection is recorded on the person the link names (the working path)."""
    uid = seed(world)
    centre = PreferenceCentre(world.hub)
    person = centre.person(token_of(world, uid))
    result = centre.object(person, "profiling", centre.visitor("203.0.113.9", "UA"))
    assert (result["subject"], result["status"], result["direct_marketing"]) == (uid, "pending", False)
    assert objection_rows(world) == 1
