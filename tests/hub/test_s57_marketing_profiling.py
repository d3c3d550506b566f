"""Art. 21(2)-(3) in the ledger and the hub: an objection to direct marketing stops every purpose
serving it, profiling for direct marketing (``profiling_for_direct_marketing: true``) and
marketing by electronic mail under the ePrivacy rules (``eprivacy: true``, whatever
``direct_marketing`` says) included; an objection to such a purpose is absolute.

Before: profiling for marketing had no way to be told apart from other profiling, and carried on
after the person objected to direct marketing; a purpose under the ePrivacy rules but not
flagged ``direct_marketing`` kept its stored state (and its CRMs) mailing after an objection to
direct marketing raised on another purpose, and a double opt-in link mailed for it before the
objection still confirmed a consent that lifted it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, LawfulBasis
from consentsync.hub import keys, notices
from consentsync.hub.api import create_app
from consentsync.hub.capture import Hub
from consentsync.hub.links import LinkRefused
from consentsync.hub.preferences import PreferenceCentre
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import consent_states
from tests.conftest import Clock
from tests.hub.conftest import NEWSLETTER_NOTICE, HubWorld, Inbox, hub_config
from tests.hub.people_world import EMAIL, seed, token_of
from tests.integration.helpers import consent_value

# Profiling for direct marketing: on legitimate interests, its objections otherwise reviewed.
SEGMENTS = {"key": "segments", "name": "Segments for our offers", "profiling_for_direct_marketing": True,
            "default_basis": "legitimate_interests", "objection_handling": "manual_review"}  # fmt: skip
# Marketing by email under the ePrivacy rules, not flagged direct_marketing: on consent.
MAILINGS = {"key": "mailings", "name": "Mailings", "eprivacy": True, "default_basis": "consent",
            "channels": ["email"]}  # fmt: skip
# The same with a double opt-in: its confirmation link is mailed.
OFFERS = {**MAILINGS, "key": "offers", "name": "Offers", "double_opt_in": True}


@pytest.fixture
def world(config_path: Path, clock: Clock, inbox: tuple[Inbox, int]) -> Iterator[HubWorld]:
    """The hub's world (tests/hub/conftest.py) with the purposes above."""
    handler, port = inbox
    hub_config(config_path, port)
    data = yaml.safe_load(config_path.read_text())
    data["purposes"] += [SEGMENTS, MAILINGS, OFFERS]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(config_path)
    ledger = open_ledger(config, migrate=True)
    ledger.clock = clock
    ledger.sync_purposes()
    for purpose in ("newsletter", "email_marketing", "profiling", "mailings", "offers"):
        notices.add(ledger, purpose, "2026-05", NEWSLETTER_NOTICE)
    _key, secret = keys.create(ledger, "website", source="web_form", purposes=["*"], actions=["*"])
    hub = Hub(config, ledger)
    with TestClient(create_app(hub)) as client:
        yield HubWorld(hub, ledger, client, handler, clock, secret)
    ledger.engine.dispose()


def decision(world: HubWorld, purpose: str) -> dict[str, Any]:
    answer = world.post("/decisions", {"email": EMAIL, "purpose": purpose, "channel": "email"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def stored(world: HubWorld, purpose: str) -> tuple[bool, str]:
    """The state the ledger keeps (and passes to the CRMs) for Ada, ``purpose``, by email."""
    with world.ledger.engine.connect() as conn:
        row = conn.execute(
            select(consent_states.c.suppressed, consent_states.c.rule).where(
                consent_states.c.purpose == purpose, consent_states.c.channel == "email"
            )
        ).one()
    return bool(row.suppressed), row.rule


def object_to(world: HubWorld, purpose: str, *, direct_marketing: bool = False) -> dict[str, Any]:
    body = {"email": EMAIL, "purpose": purpose, "direct_marketing": direct_marketing}
    answer = world.post("/objections", body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def grant(world: HubWorld, purpose: str) -> None:
    body = {"email": EMAIL, "purpose": purpose, "status": "granted", "notice_version": "2026-05"}
    assert world.post("/consents", body).status_code == 201


def test_an_objection_to_direct_marketing_stops_profiling_for_it(world: HubWorld) -> None:
    seed(world)
    assert decision(world, "segments")["contact"] is True  # profiling on legitimate interests runs
    world.clock.advance(minutes=5)
    object_to(world, "newsletter", direct_marketing=True)  # "no more marketing"
    decided = decision(world, "segments")
    assert (decided["contact"], decided["rule"]) == (False, "objection_direct_marketing"), decided
    # Other profiling (not for marketing) is the person's to object to on its own.
    assert decision(world, "profiling")["contact"] is True


def test_an_objection_to_profiling_for_marketing_is_absolute(world: HubWorld) -> None:
    """Art. 21(2): upheld at once, never queued for a review that could reject it (the purpose
    says manual_review), and, as any objection to direct marketing, it stops it all."""
    seed(world)
    result = object_to(world, "segments")
    assert (result["status"], result["direct_marketing"]) == ("upheld", True), result
    assert decision(world, "segments")["rule"] == "objection_direct_marketing"


def test_the_preference_page_objects_to_profiling_for_marketing_as_direct_marketing(world: HubWorld) -> None:
    uid = seed(world)
    centre = PreferenceCentre(world.hub)
    person = centre.person(token_of(world, uid))
    row = next(r for r in centre.purposes(person) if r["purpose"] == "segments")
    assert (row["direct_marketing"], row["stop"]) == (True, "object")
    result = centre.object(person, "segments", centre.visitor("203.0.113.9", "UA"))
    assert (result["status"], result["direct_marketing"], result["subject"]) == ("upheld", True, uid)
    assert decision(world, "segments")["rule"] == "objection_direct_marketing"


def test_an_objection_to_direct_marketing_stops_marketing_under_the_eprivacy_rules(world: HubWorld) -> None:
    """The ledger decides the purposes the objection binds again and keeps their states: the
    mailings' stored state (what the CRMs are told) is suppressed too."""
    seed(world)
    grant(world, "mailings")
    assert stored(world, "mailings") == (False, "latest_event_time")
    world.clock.advance(minutes=5)
    object_to(world, "newsletter", direct_marketing=True)
    assert stored(world, "mailings") == (True, "objection_direct_marketing")
    assert stored(world, "segments") == (True, "objection_direct_marketing")
    # Only the person's own new consent, after the objection, lifts it there.
    world.clock.advance(minutes=5)
    grant(world, "mailings")
    assert stored(world, "mailings")[0] is False


def test_an_objection_to_direct_marketing_voids_a_confirmation_link_of_marketing_by_email(
    world: HubWorld,
) -> None:
    """A double opt-in mailed for the offers (ePrivacy rules) before the person objected to
    direct marketing: confirming it would record a trusted consent lifting the objection."""
    seed(world)
    world.inbox.messages.clear()
    grant(world, "offers")
    token = world.inbox.link("/p/confirm/").rsplit("/", 1)[1]
    world.clock.advance(minutes=10)
    object_to(world, "newsletter", direct_marketing=True)
    world.clock.advance(days=1)
    with pytest.raises(LinkRefused, match="you said no"):
        world.hub.confirm(token)
    decided = decision(world, "offers")
    assert (decided["contact"], decided["rule"]) == (False, "objection_direct_marketing"), decided


def test_a_receipt_says_marketing_by_email_is_direct_marketing(world: HubWorld) -> None:
    """The person's receipt (ISO/IEC TS 27560) for the mailings says what the ledger holds: direct
    marketing, which they may object to at any time (Art. 21(2)), not "false"."""
    body = {"email": EMAIL, "purpose": "mailings", "status": "granted", "notice_version": "2026-05"}
    granted = world.post("/consents", body).json()["results"][0]
    answer = world.client.get(f"/receipts/{granted['subject']}/{granted['record_id']}", headers=world.auth())
    assert answer.status_code == 200, answer.text
    assert [p["direct_marketing"] for p in answer.json()["purposes"]] == [True]


def test_flagging_profiling_as_for_marketing_later_stops_it_for_those_who_objected(
    world: HubWorld, config_path: Path
) -> None:
    """A ledger in use: Ada objected to direct marketing while the profiling purpose was not yet
    flagged. Once the operator flags it, the first process to open the ledger decides its stored
    states again (``sync_purposes``): her profiling stops, audited, without her objecting again."""
    seed(world)
    now = world.clock()
    evidence = consent_value(
        ConsentStatus.NOT_APPLICABLE,
        now,
        now,
        purpose="profiling",
        basis=LawfulBasis.LEGITIMATE_INTERESTS,
        source="ops",
    )
    world.ledger.record(Identity(email=EMAIL), evidence)
    world.clock.advance(minutes=5)
    object_to(world, "newsletter", direct_marketing=True)
    assert stored(world, "profiling")[0] is False  # not flagged: profiling for something else
    data = yaml.safe_load(config_path.read_text())
    for purpose in data["purposes"]:
        if purpose["key"] == "profiling":
            purpose["profiling_for_direct_marketing"] = True
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    open_ledger(load_config(config_path), migrate=True).engine.dispose()  # syncs the purposes
    assert stored(world, "profiling") == (True, "objection_direct_marketing")
