"""Stopping email marketing sent under the soft opt-in, on a purpose not flagged as direct
marketing that follows the ePrivacy rules (docs/policy.md allows ``eprivacy: true`` with
``direct_marketing: false``).

The page's objection went to the ledger without saying it was one to direct marketing, so the
purpose's flag alone decided: the person saw the Art. 21(1) form ("for reasons arising from your
particular situation"), and under ``manual_review`` the objection was queued, could be rejected,
and the marketing resumed. Marketing by email on the soft opt-in is direct marketing: the
objection is absolute (Art. 21(2)), and the person's refusal ends the soft opt-in for good
(PECR reg. 22(3)(c), ePrivacy Art. 13(2)).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from consentsync.config import write_starter
from consentsync.domain import (
    ConsentStatus,
    InvalidInput,
    LawfulBasis,
    ObjectionHandling,
    Purpose,
    SoftOptIn,
)
from consentsync.hub.preferences import direct_marketing_for, objectable_for
from consentsync.ledger.identity import Identity
from tests.conftest import SQLITE_ONLY
from tests.hub.conftest import HubWorld
from tests.hub.people_world import EMAIL, people_pages, token_of
from tests.hub.test_people_pages import act, page, text_of
from tests.integration.helpers import consent_value

# The page and what it tells the ledger are the subject here, not SQL: SQLite only.
FIXTURES = (people_pages,)

ART_21_2 = "without giving a reason: we stop at once"


@pytest.fixture
def config_path(tmp_path: Path, ledger_url: str) -> Path:
    """The hub's configuration (``hub_config`` is applied on top), with offers by email that
    follow the ePrivacy rules although not flagged as direct marketing, objections reviewed."""
    path = tmp_path / "consentsync.yaml"
    write_starter(path, ledger_url)
    data = yaml.safe_load(path.read_text())
    data["purposes"].append(
        {"key": "offers", "name": "Offers", "direct_marketing": False, "eprivacy": True,
         "default_basis": "legitimate_interests", "objection_handling": "manual_review",
         "channels": ["email"]}
    )  # fmt: skip
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def on_the_soft_opt_in(world: HubWorld) -> str:
    """Ada, sent offers by email under the soft opt-in (as ops record it); her uid."""
    now = world.clock()
    value = consent_value(
        ConsentStatus.NOT_APPLICABLE,
        now,
        now,
        purpose="offers",
        basis=LawfulBasis.LEGITIMATE_INTERESTS,
        source="ops",
        soft_opt_in=SoftOptIn("order 7", "same product line", "checkout form v4", "footer v2"),
    )
    return world.ledger.record(Identity(email=EMAIL), value).subject_uid


def contact(world: HubWorld, purpose: str = "offers") -> dict[str, object]:
    response = world.post("/decisions", {"email": EMAIL, "purpose": purpose, "channel": "email"})
    assert response.status_code == 200, response.text
    return {key: response.json()[key] for key in ("contact", "rule")}


def section(html: str, purpose: str) -> str:
    found = re.search(
        rf'<section class="purpose" aria-labelledby="purpose-{purpose}">(.*?)</section>', html, re.S
    )
    assert found, f"no section for {purpose}"
    return text_of(found.group(1))


@SQLITE_ONLY
def test_stopping_a_soft_opt_in_is_absolute_and_cannot_be_rejected_by_review(
    world: HubWorld, people: TestClient
) -> None:
    uid = on_the_soft_opt_in(world)
    token = token_of(world, uid)
    assert contact(world) == {"contact": True, "rule": "eprivacy_soft_opt_in"}
    offers = section(page(people, token).text, "offers")
    # The Art. 21(2) form, not the Art. 21(1) one that asks for reasons.
    assert ART_21_2 in offers and "Stop: I object" in offers
    assert "particular situation" not in offers
    world.clock.advance(minutes=1)
    shown = act(people, token, "object", {"purpose": "offers", "lang": "en"})
    assert "we stopped Offers for you at once" in text_of(shown.text)
    (objection,) = world.ledger.subject_view(EMAIL)["objections"]
    assert (objection["status"], objection["direct_marketing"], objection["decided_by"]) == (
        "upheld",
        True,
        "policy:art21(2)_direct_marketing",
    )
    assert world.ledger.list_objections(pending_only=True) == []  # no review queue
    # Nothing for a reviewer to reject: the marketing does not resume.
    with pytest.raises(InvalidInput, match="only pending objections"):
        world.ledger.decide_objection(objection["id"], uphold=False, by="ops", reason="we like mailing")
    assert contact(world) == {"contact": False, "rule": "objection_direct_marketing"}
    # Art. 21(3): with all other direct marketing.
    assert contact(world, "email_marketing")["contact"] is False
    # For good: a later sale recorded as a new soft opt-in does not bring it back.
    world.clock.advance(days=30)
    on_the_soft_opt_in(world)
    assert contact(world) == {"contact": False, "rule": "objection_direct_marketing"}
    # Profiling on legitimate interests stays Art. 21(1): the form asks for reasons, reviewed.
    token = token_of(world, uid)  # a link of today
    profiling = section(page(people, token).text, "profiling")
    assert "particular situation" in profiling and ART_21_2 not in profiling
    act(people, token, "object", {"purpose": "profiling", "lang": "en"})
    (queued,) = world.ledger.list_objections(pending_only=True)
    assert (queued["purpose"], queued["direct_marketing"]) == ("profiling", False)


def test_an_objection_is_to_direct_marketing_where_the_purpose_or_the_state_says_so() -> None:
    """``direct_marketing_for``: the purpose's flags, or any of its channels' states resting on
    the soft opt-in, as the page reads them."""
    plain = Purpose(
        "offers", "Offers", False, LawfulBasis.LEGITIMATE_INTERESTS, None, ObjectionHandling.MANUAL_REVIEW
    )
    assert not direct_marketing_for(plain)
    assert not direct_marketing_for(plain, ["purpose_default_basis", None])
    assert direct_marketing_for(plain, ["purpose_default_basis", "eprivacy_soft_opt_in"])
    assert direct_marketing_for(replace(plain, eprivacy=True))
    assert not direct_marketing_for(replace(plain, eprivacy=False))
    assert direct_marketing_for(replace(plain, direct_marketing=True, eprivacy=False))
    # A consent on a purpose set to follow the ePrivacy rules may be objected to as marketing.
    consent = replace(plain, default_basis=LawfulBasis.CONSENT)
    assert not objectable_for(consent, "consent")
    assert objectable_for(replace(consent, eprivacy=True), "consent")


@SQLITE_ONLY
def test_an_objection_raised_by_ops_or_the_api_to_an_eprivacy_purpose_is_upheld_at_once(
    world: HubWorld,
) -> None:
    """Ops (the CLI) and the capture API raise objections through the ledger without the page's
    reading of the state: the purpose's ePrivacy flag alone makes it one to direct marketing."""
    on_the_soft_opt_in(world)
    objection = world.ledger.raise_objection(EMAIL, "offers")
    assert (objection["status"], objection["direct_marketing"]) == ("upheld", True)
    assert world.ledger.list_objections(pending_only=True) == []
    assert contact(world) == {"contact": False, "rule": "objection_direct_marketing"}
