"""The capture API and the preference page take an objection (Art. 21) by the same rule as
``consentsync objection raise``: the ledger's (``Ledger._objection_on``, ``objectable``), on the
basis the ledger holds the person's processing on.

Before, ``POST /v1/objections`` took an objection to ``service`` (a contract): 201, upheld at once,
and ``/v1/decisions`` then said no for the contract's messages (``objection_upheld``), while the
page refused the same objection (400). It is now refused (422, one line naming the purpose, its
basis and what to do instead; nothing recorded), as is one to a consent outside direct marketing
(withdrawn instead, Art. 7(3)) and one to a legitimate-interests purpose where the person's own
basis is consent; the page refuses those too.
"""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from consentsync.domain import ConsentStatus, LawfulBasis
from consentsync.hub.preferences import Person, PreferenceCentre
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import audit_entries, objections, subjects
from tests.hub.conftest import HubWorld
from tests.hub.people_world import EMAIL, people_pages, seed, token_of
from tests.integration.helpers import consent_value

FIXTURES = (people_pages,)
_GRANT = {"purpose": "newsletter", "status": "granted", "notice_version": "2026-05"}


def counts(world: HubWorld) -> tuple[int, ...]:
    """Objections, people and audit entries in the ledger."""
    with world.ledger.engine.connect() as conn:
        return tuple(
            int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in (objections, subjects, audit_entries)
        )


def on_basis(world: HubWorld, purpose: str, basis: LawfulBasis, channels: tuple[str, ...] = ()) -> None:
    """Ada's processing for ``purpose`` recorded on ``basis`` on ``channels`` (default: all of
    the purpose's): a consent granted, any other basis as in force (``not_applicable``)."""
    now = world.clock()
    status = ConsentStatus.GRANTED if basis is LawfulBasis.CONSENT else ConsentStatus.NOT_APPLICABLE
    for channel in channels or world.ledger.purposes[purpose].channels:
        value = consent_value(
            status,
            now,
            now,
            purpose=purpose,
            channel=channel,
            basis=basis,
            notice_version="2026-05",
            evidence_ref="form:1",
        )
        world.ledger.record(Identity(email=EMAIL), value)


def object_buttons(page: str) -> set[str]:
    """The purposes the preference page shows an "Object" (or "Stop: I object") form for."""
    return set(
        re.findall(r'action="[^"]*/object"[^>]*>\s*<input type="hidden" name="purpose" value="(\w+)"', page)
    )


def contact(world: HubWorld, email: str, purpose: str, channel: str = "email") -> tuple[bool, str]:
    answer = world.post("/decisions", {"email": email, "purpose": purpose, "channel": channel})
    assert answer.status_code == 200, answer.text
    return answer.json()["contact"], answer.json()["rule"]


def test_the_api_refuses_an_objection_to_a_contract_or_a_consent(world: HubWorld) -> None:
    assert world.post("/consents", {**_GRANT, "email": "hank@example.com"}).status_code == 201
    before = counts(world)
    for email in ("hank@example.com", "nobody-yet@example.com"):
        for purpose, basis, instead in (
            ("service", "contract", "contract gives no right to object"),
            ("newsletter", "consent", "a consent is withdrawn instead (Art. 7(3)): record a withdrawal"),
        ):
            answer = world.post("/objections", {"email": email, "purpose": purpose})
            assert answer.status_code == 422, (purpose, answer.status_code, answer.text)
            error = answer.json()["error"]
            assert f"purpose {purpose!r} cannot be objected to: it rests on {basis} for this person" in error
            assert instead in error and "nothing was recorded" in error and email not in error
            # The reason, machine-readable: a client acts on it, not on the wording.
            assert answer.json()["code"] == "objection_basis_not_objectable", answer.text
    # Another refusal has no code of its own: only its message.
    unknown = world.post("/objections", {"email": "hank@example.com", "purpose": "nope"})
    assert unknown.status_code == 422 and set(unknown.json()) == {"error"}, unknown.text
    assert counts(world) == before  # no objection, no person made, no audit entry
    # The contract's messages go on being sent; the newsletter consent stands.
    assert contact(world, "hank@example.com", "service") == (True, "purpose_default_basis")
    assert contact(world, "hank@example.com", "newsletter") == (True, "latest_event_time")


def test_an_objection_to_direct_marketing_on_a_contract_is_refused_too(world: HubWorld) -> None:
    before = counts(world)
    answer = world.post(
        "/objections", {"email": "hank@example.com", "purpose": "service", "direct_marketing": True}
    )
    assert answer.status_code == 422, answer.text
    assert "names a purpose that serves it (email_marketing)" in answer.json()["error"]
    assert counts(world) == before


def test_the_api_takes_what_may_be_objected_to(world: HubWorld) -> None:
    pending = world.post("/objections", {"email": "li@example.com", "purpose": "profiling"})
    assert (pending.status_code, pending.json()["status"]) == (201, "pending"), pending.text
    marketing = world.post("/objections", {"email": "dm@example.com", "purpose": "email_marketing"})
    assert (marketing.status_code, marketing.json()["status"]) == (201, "upheld"), marketing.text


def test_the_page_and_the_api_agree_on_the_persons_own_basis(world: HubWorld, people: TestClient) -> None:
    token = token_of(world, seed(world))
    # Consent recorded for Ada under profiling (a legitimate-interests purpose), on each channel:
    # her processing rests on consent, which she withdraws; an objection is refused everywhere.
    on_basis(world, "profiling", LawfulBasis.CONSENT)
    world.clock.advance(minutes=1)
    before = counts(world)
    for purpose in ("service", "newsletter", "profiling"):
        page = people.post(
            f"/p/preferences/{token}/object", data={"purpose": purpose}, follow_redirects=False
        )
        assert page.status_code == 400, (purpose, page.status_code)
        api = world.post("/objections", {"email": EMAIL, "purpose": purpose})
        assert api.status_code == 422, (purpose, api.text)
    assert "it rests on consent for this person" in api.json()["error"]
    assert counts(world) == before
    assert world.ledger.subject_view(EMAIL)["objections"] == []


def test_the_page_shows_object_exactly_where_the_ledger_takes_an_objection(
    world: HubWorld, people: TestClient
) -> None:
    """Before, the page offered "Object" for a legitimate-interests purpose whatever the
    person's own basis (it read the purpose's default): Ada, on consent for profiling on every
    channel, was shown the button, and pressing it was refused (400)."""
    uid = seed(world)
    token = token_of(world, uid)
    centre, ada = PreferenceCentre(world.hub), Person(uid, EMAIL)
    # Profiling on its default, legitimate interests: objectable, offered. Not a contract nor a
    # consent (email marketing on a consent is stopped by withdrawing it: one way, not two).
    assert object_buttons(people.get(f"/p/preferences/{token}").text) == {"profiling"}
    on_basis(world, "profiling", LawfulBasis.CONSENT)
    world.clock.advance(minutes=1)
    page = people.get(f"/p/preferences/{token}").text
    assert object_buttons(page) == set()
    # Her way to stop it: withdrawing, on each channel (and the newsletter's).
    assert page.count("Withdraw consent") == 1 + len(world.ledger.purposes["profiling"].channels)
    rows = [row for row in centre.purposes(ada) if row["purpose"] == "profiling"]
    assert rows and not any(row["objectable"] or row["stop"] == "object" for row in rows)
    assert not centre.objectable(ada, "profiling")
    # One channel back on legitimate interests: the ledger takes an objection to profiling
    # (Art. 21(1)), and the page offers it again, and takes it.
    on_basis(world, "profiling", LawfulBasis.LEGITIMATE_INTERESTS, ("phone",))
    world.clock.advance(minutes=1)
    assert object_buttons(people.get(f"/p/preferences/{token}").text) == {"profiling"}
    assert centre.objectable(ada, "profiling")
    taken = people.post(
        f"/p/preferences/{token}/object", data={"purpose": "profiling"}, follow_redirects=False
    )
    assert taken.status_code == 303, taken.text
    (objection,) = world.ledger.subject_view(EMAIL)["objections"]
    assert (objection["purpose"], objection["status"]) == ("profiling", "pending")
