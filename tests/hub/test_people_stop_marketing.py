"""Whatever the ledger lets us send a person, their preference page offers a way to stop it and
says truthfully that we send it. A person marketed under the ePrivacy soft opt-in saw email
marketing as "Does not apply to you" with only "I agree", and an objection to direct marketing
was refused (400) for everyone, consent subscribers too: the page now says we send it and offers
"Stop: I object", an Art. 21(2) objection, absolute, upheld at once with no review. A purpose
recorded on legitimate interests offers "Object" as profiling does. A rejected objection's reason
reaches the person's own Art. 15 download."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient

from consentsync.domain import ConsentStatus, LawfulBasis
from consentsync.ledger.identity import Identity
from tests.conftest import SQLITE_ONLY
from tests.hub.conftest import HubWorld
from tests.hub.people_world import EMAIL, mailed, people_pages, seed, soft_opt_in, token_of
from tests.hub.test_people_pages import act, page, tampered, text_of
from tests.integration.helpers import consent_value

# The page is the subject here, not SQL: SQLite only; `people`: the pages, in-process.
pytestmark = SQLITE_ONLY
FIXTURES = (people_pages,)


def section(html: str, purpose: str) -> str:
    """The words of one purpose's part of the page."""
    found = re.search(
        rf'<section class="purpose" aria-labelledby="purpose-{purpose}">(.*?)</section>', html, re.S
    )
    assert found, f"no section for {purpose}"
    return text_of(found.group(1))


def contact(world: HubWorld, purpose: str = "email_marketing") -> dict[str, object]:
    """What the capture API answers a sender asking whether it may mail the person now."""
    response = world.post("/decisions", {"email": EMAIL, "purpose": purpose, "channel": "email"})
    assert response.status_code == 200, response.text
    return {key: response.json()[key] for key in ("contact", "rule")}


def test_a_soft_opt_in_is_shown_as_sent_and_stopped_at_once_by_an_objection(
    world: HubWorld, people: TestClient
) -> None:
    token = token_of(world, soft_opt_in(world))
    assert contact(world) == {"contact": True, "rule": "eprivacy_soft_opt_in"}
    marketing = section(page(people, token).text, "email_marketing")
    assert "Does not apply to you" not in marketing and "I agree" not in marketing
    assert "We send you this because you bought from us and did not say no (soft opt-in)" in marketing
    assert "without giving a reason: we stop at once" in marketing and "Stop: I object" in marketing
    # The form is the page's own, guarded as every other: a changed link records nothing.
    forged = people.post(f"/p/preferences/{tampered(token)}/object", data={"purpose": "email_marketing"})
    assert forged.status_code == 403 and world.ledger.subject_view(EMAIL)["objections"] == []

    shown = act(people, token, "object", {"purpose": "email_marketing", "lang": "en"})
    assert (
        "Done: you objected, and we stopped Email marketing for you at once, with all our other "
        "direct marketing to you." in text_of(shown.text)
    )
    (objection,) = world.ledger.subject_view(EMAIL)["objections"]
    assert (objection["status"], objection["direct_marketing"], objection["source"]) == (
        "upheld",
        True,
        "preference_center",
    )
    assert objection["decided_by"] == "policy:art21(2)_direct_marketing"  # no review queue
    assert world.ledger.list_objections(pending_only=True) == []
    assert contact(world) == {"contact": False, "rule": "objection_direct_marketing"}
    marketing = section(shown.text, "email_marketing")
    assert "Stopped for you" in marketing and "You objected, and we stopped." in marketing
    assert "Stop: I object" not in marketing and "We send you this" not in marketing


def test_a_consent_subscriber_withdraws_and_may_object_to_direct_marketing(
    world: HubWorld, people: TestClient
) -> None:
    token = token_of(world, seed(world))  # email marketing: a double opt-in waiting
    world.clock.advance(minutes=5)
    act(
        people,
        token,
        "choose",
        {"purpose": "email_marketing", "channel": "email", "action": "grant", "notice_version": "2026-05"},
    )
    assert contact(world) == {"contact": True, "rule": "latest_event_time"}
    marketing = section(page(people, token).text, "email_marketing")
    # Consent is ended by withdrawing: the page offers that, not a second way.
    assert "Withdraw consent" in marketing and "Stop: I object" not in marketing
    world.clock.advance(minutes=5)
    # An objection to direct marketing stands whatever the basis (Art. 21(2)): no 400.
    shown = act(people, token, "object", {"purpose": "email_marketing", "lang": "en"})
    assert "we stopped Email marketing for you at once" in text_of(shown.text)
    assert contact(world)["contact"] is False
    # What may not be objected to here still may not: a contract, a consent outside marketing.
    for purpose in ("service", "newsletter", "nothing"):
        response = people.post(f"/p/preferences/{token}/object", data={"purpose": purpose})
        assert response.status_code == 400, purpose
    assert [o["purpose"] for o in world.ledger.subject_view(EMAIL)["objections"]] == ["email_marketing"]


def test_a_purpose_recorded_on_legitimate_interests_offers_an_objection(
    world: HubWorld, people: TestClient
) -> None:
    now = world.clock()
    value = consent_value(
        ConsentStatus.NOT_APPLICABLE, now, now, purpose="newsletter", basis=LawfulBasis.LEGITIMATE_INTERESTS
    )
    uid = world.ledger.record(Identity(email=EMAIL), value).subject_uid
    token = token_of(world, uid)
    assert contact(world, "newsletter")["contact"] is True
    newsletter = section(page(people, token).text, "newsletter")
    assert "Does not apply to you" not in newsletter and "We do this" in newsletter
    assert "I agree" not in newsletter and "Object : Newsletter" in newsletter
    shown = act(people, token, "object", {"purpose": "newsletter", "lang": "en"})
    assert "Done: we stopped Newsletter for you." in text_of(shown.text)
    assert contact(world, "newsletter") == {"contact": False, "rule": "objection_upheld"}


def test_the_person_downloads_why_their_objection_was_rejected(world: HubWorld, people: TestClient) -> None:
    token = token_of(world, seed(world))
    act(people, token, "object", {"purpose": "profiling", "lang": "en"})  # manual review
    (pending,) = world.ledger.list_objections(pending_only=True)
    reason = "fraud prevention outweighs it for twelve months"
    world.ledger.decide_objection(pending["id"], uphold=False, by="dpo.anna", reason=reason)
    people.post(f"/p/preferences/{token}/export", data={})  # mails the download link
    response = people.post(mailed(world, "/p/export/"), data={"format": "json"})
    assert response.status_code == 200
    (objection,) = json.loads(response.content)["objections"]
    assert (objection["status"], objection["decided_by"], objection["decision_reason"]) == (
        "rejected",
        "dpo.anna",
        reason,
    )
