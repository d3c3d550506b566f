"""A double opt-in sign-up leaves what the ledger treats as in force as it is (session 59b).

docs/hub.md, "A consent given stands": a sign-up for a person whose consent to that purpose and
channel is in force records nothing, since anyone can type an address into a form. The hub
protected only an evidenced grant: a consent read from a CRM without a date (HubSpot's
SUBSCRIBED), which the decision API answers ``contact: true`` for and the CRMs are told of, was
recorded over with "requested" (suspended, and pushed to the other CRMs as an opt-out), and the
mail's "No, I did not ask for this" then recorded a refusal that unsubscribed the person
("Disowning a sign-up ends nothing" promised it could not).
"""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from consentsync.domain import ConsentStatus, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from tests.hub.conftest import HubWorld
from tests.hub.people_world import mailed, people_pages, soft_opt_in, sqlite_ledger_url
from tests.integration.helpers import consent_value

# The module's fixtures: `ledger_url` (SQLite only here) and `people` (the pages, in-process).
FIXTURES = (sqlite_ledger_url, people_pages)

ANN = "ann@example.test"
SIGN_UP = {"email": ANN, "purpose": "email_marketing", "status": "granted", "notice_version": "2026-05"}


def decision(world: HubWorld, email: str = ANN) -> dict[str, object]:
    answer = world.post("/decisions", {"email": email, "purpose": "email_marketing", "channel": "email"})
    assert answer.status_code == 200
    return dict(answer.json())


def history(world: HubWorld, email: str = ANN) -> list[str]:
    events = world.ledger.subject_view(email)["history"]
    return [str(event["status"]) for event in events if event["purpose"] == "email_marketing"]


def crm_grant(world: HubWorld, email: str = ANN) -> None:
    """A grant read from a CRM without a date (HubSpot's SUBSCRIBED): in force, not evidenced."""
    now = world.clock()
    value = consent_value(ConsentStatus.GRANTED, None, now, source="hubspot:contact", origin=Origin.CRM)
    outcome = world.ledger.record(Identity(email=email), value)
    assert outcome.after is not None and not outcome.after.evidenced
    assert outcome.after.rule == "unknown_event_time_most_restrictive" and not outcome.after.suppressed


def test_a_sign_up_leaves_an_undated_crm_grant_in_force_and_its_decline_ends_nothing(
    world: HubWorld, people: TestClient
) -> None:
    crm_grant(world)
    world.clock.advance(days=3)
    before = decision(world)
    assert before["contact"] is True and before["status"] == "granted"
    # Someone else types Ann's address into the sign-up form.
    answer = world.post("/consents", SIGN_UP).json()["results"][0]
    assert (answer["recorded"], answer["duplicate"], answer["confirmation"]) == (None, True, "queued")
    assert answer["state"]["status"] == "granted" and answer["state"]["suppressed"] is False
    assert decision(world) == {**before, "as_of": decision(world)["as_of"]}
    assert history(world) == ["granted"]
    # "No, I did not ask for this" on the mail it sent: she disowns the sign-up, nothing ends.
    confirm = mailed(world, "/p/confirm/")
    world.clock.advance(minutes=5)
    said = people.post(f"{confirm}/decline", data={"lang": "en"}, follow_redirects=False)
    assert said.status_code == 303 and said.headers["location"].endswith("&kept=1")
    assert decision(world)["contact"] is True and history(world) == ["granted"]
    assert people.get(confirm).status_code == 410


def test_confirming_the_link_gives_the_crm_grant_its_proof(world: HubWorld, people: TestClient) -> None:
    crm_grant(world)
    world.clock.advance(days=3)
    assert world.post("/consents", SIGN_UP).json()["results"][0]["recorded"] is None
    world.clock.advance(minutes=2)
    assert people.post(mailed(world, "/p/confirm/"), data={"lang": "en"}).status_code == 200
    state = world.ledger.decision_for(ANN, "email_marketing", "email")[1]
    assert state.status is ConsentStatus.GRANTED and state.evidenced and not state.suppressed
    assert history(world) == ["granted", "granted"]


def test_a_dated_grant_without_a_notice_or_reference_stands_too(world: HubWorld) -> None:
    """A grant ops recorded with a time but nothing shown (no proof, ``evidenced`` false)."""
    now = world.clock()
    world.ledger.record(Identity(email=ANN), consent_value(ConsentStatus.GRANTED, now, now, source="ops"))
    world.clock.advance(hours=1)
    answer = world.post("/consents", SIGN_UP).json()["results"][0]
    assert answer["recorded"] is None and answer["state"]["status"] == "granted"
    assert decision(world)["contact"] is True


def test_a_sign_up_leaves_a_soft_opt_in_in_force(world: HubWorld, people: TestClient) -> None:
    """Mail the decision API allows under the ePrivacy soft opt-in: not suspended either."""
    soft_opt_in(world, ANN)
    world.clock.advance(days=1)
    answer = world.post("/consents", SIGN_UP).json()["results"][0]
    assert (answer["recorded"], answer["duplicate"], answer["confirmation"]) == (None, True, "queued")
    assert answer["state"]["rule"] == "eprivacy_soft_opt_in" and answer["state"]["suppressed"] is False
    assert decision(world)["contact"] is True and history(world) == ["not_applicable"]
    # Her confirmation is a consent, as for anyone.
    world.clock.advance(minutes=2)
    assert people.post(mailed(world, "/p/confirm/"), data={"lang": "en"}).status_code == 200
    assert decision(world)["status"] == "granted" and decision(world)["contact"] is True


def test_a_restricted_persons_undated_grant_is_granted_again_once_the_restriction_is_lifted(
    world: HubWorld,
) -> None:
    crm_grant(world)
    world.ledger.restrict(ANN, restricted=True, reason="accuracy contested")
    world.clock.advance(days=1)
    answer = world.post("/consents", SIGN_UP).json()["results"][0]
    assert answer["recorded"] is None and answer["state"]["rule"] == "restriction_art18"
    world.ledger.restrict(ANN, restricted=False, reason="accuracy confirmed")
    assert decision(world)["contact"] is True and history(world) == ["granted"]


def test_a_sign_up_for_a_consent_not_in_force_still_waits(world: HubWorld, people: TestClient) -> None:
    """The guard is for what is in force: a consent past its validity is asked for afresh, and
    its "No" is a refusal as before."""
    crm_grant(world)
    world.clock.advance(days=731)  # email marketing's validity is 730 days, from first seen
    assert decision(world)["contact"] is False
    answer = world.post("/consents", SIGN_UP).json()["results"][0]
    assert answer["recorded"] == "requested" and answer["duplicate"] is False
    world.clock.advance(minutes=2)
    said = people.post(f"{mailed(world, '/p/confirm/')}/decline", data={"lang": "en"}, follow_redirects=False)
    assert said.status_code == 303 and not said.headers["location"].endswith("&kept=1")
    assert history(world)[-2:] == ["requested", "refused"]


def crm_grant_on_legitimate_interests(world: HubWorld, email: str = ANN) -> None:
    """A HubSpot contact SUBSCRIBED with legal basis LEGITIMATE_INTEREST_PQL: granted, on
    legitimate interests, which is no consent to mail marketing (eprivacy_consent_required)."""
    now = world.clock()
    value = consent_value(
        ConsentStatus.GRANTED,
        now - timedelta(days=3),
        now,
        basis=LawfulBasis.LEGITIMATE_INTERESTS,
        source="hubspot:contact",
        origin=Origin.CRM,
    )
    outcome = world.ledger.record(Identity(email=email), value)
    assert outcome.after is not None and outcome.after.status is ConsentStatus.GRANTED


def test_a_grant_on_legitimate_interests_that_the_eprivacy_rule_holds_back_does_not_stand(
    world: HubWorld, people: TestClient
) -> None:
    """Session 59b (review of c604c97): only a person-wide rule holds a grant back for a while.
    ``eprivacy_consent_required`` says there is no consent: the sign-up asks for one, as over
    nothing, where it was answered "duplicate" as though the person had consented."""
    crm_grant_on_legitimate_interests(world)
    before = decision(world)
    assert (before["contact"], before["status"], before["rule"]) == (
        False,
        "granted",
        "eprivacy_consent_required",
    )
    world.clock.advance(minutes=5)
    answer = world.post("/consents", SIGN_UP).json()["results"][0]
    assert (answer["recorded"], answer["duplicate"], answer["confirmation"]) == ("requested", False, "queued")
    assert history(world) == ["granted", "requested"]
    # Her confirmation is the consent the ePrivacy rule asked for.
    world.clock.advance(minutes=2)
    assert people.post(mailed(world, "/p/confirm/"), data={"lang": "en"}).status_code == 200
    after = decision(world)
    assert (after["contact"], after["status"], after["basis"]) == (True, "granted", "consent")


def test_a_restricted_persons_grant_on_legitimate_interests_does_not_stand(world: HubWorld) -> None:
    """Under a person-wide rule only a consent stands: once the restriction is lifted, a grant on
    legitimate interests for email marketing is held back by the ePrivacy rule, not in force."""
    crm_grant_on_legitimate_interests(world)
    world.ledger.restrict(ANN, restricted=True, reason="accuracy contested")
    world.clock.advance(days=1)
    assert decision(world)["rule"] == "restriction_art18"
    answer = world.post("/consents", SIGN_UP).json()["results"][0]
    assert (answer["recorded"], answer["duplicate"]) == ("requested", False)
    world.ledger.restrict(ANN, restricted=False, reason="accuracy confirmed")
    assert decision(world)["status"] == "requested" and decision(world)["contact"] is False


def test_a_consent_an_objection_holds_back_stands(world: HubWorld) -> None:
    """An objection is a person-wide rule too: the consent under it is left as it is."""
    crm_grant(world)
    world.clock.advance(days=1)
    objected = world.post(
        "/objections", {"email": ANN, "purpose": "email_marketing", "direct_marketing": True}
    )
    assert objected.status_code == 201, objected.text
    world.clock.advance(minutes=5)
    assert decision(world)["rule"] == "objection_direct_marketing"
    answer = world.post("/consents", SIGN_UP).json()["results"][0]
    assert (answer["recorded"], answer["duplicate"]) == (None, True)
    assert history(world) == ["granted"]
