"""The capture API and a legacy address (one older versions let in, which a mail header reads as
several recipients): refused as a new consent, but the person held under it can still be erased
and asked about (Art. 17 must not depend on what a later version accepts)."""

from __future__ import annotations

from consentsync.domain import ConsentStatus, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from tests.hub.conftest import HubWorld
from tests.hub.people_world import sqlite_ledger_url
from tests.hub.test_outreach import someone
from tests.integration.helpers import consent_value

FIXTURES = (sqlite_ledger_url,)  # SQLite only: the API's own behaviour
LEGACY = "old.form@example.com,ceo"


def test_a_legacy_address_is_refused_as_new_but_erased_and_decided_by_the_api(world: HubWorld) -> None:
    now = world.ledger.clock()
    world.ledger.record(
        Identity(email=LEGACY),
        consent_value(ConsentStatus.GRANTED, now, now, basis=LawfulBasis.CONSENT, origin=Origin.CAPTURE),
    )
    signup = {"email": LEGACY, "purpose": "newsletter", "status": "granted", "notice_version": "2026-05"}
    assert world.post("/consents", signup).status_code == 422

    asked = world.post("/decisions", {"email": LEGACY, "purpose": "newsletter", "channel": "email"})
    assert asked.status_code == 200, asked.text
    assert asked.json()["known"] is True

    erased = world.post("/erasure-requests", {"email": LEGACY, "reason": "asked on the phone"})
    assert erased.status_code == 200, erased.text
    assert erased.json()["subject_known"] is True
    after = world.post("/decisions", {"email": LEGACY, "purpose": "newsletter", "channel": "email"})
    assert (after.json()["contact"], after.json()["rule"]) == (False, "erasure_suppression")


def test_consent_requests_leave_out_a_legacy_address_without_failing(world: HubWorld) -> None:
    """Mailing it would fail on every run (the mailer refuses what is not one address) and make
    every `hub requests` exit as if the mail server were down."""
    from consentsync.hub.outreach import Outreacher

    for email in (LEGACY, "ada@example.test"):
        someone(world, email)  # known, nothing asked
    world.inbox.messages.clear()
    done = Outreacher(world.hub, sleep=lambda _seconds: None).request_consent("newsletter")
    assert (done.candidates, done.sent, done.failed, done.unmailable) == (2, 1, 0, 1)
    (mail,) = world.inbox.messages
    assert mail["To"] == "ada@example.test"
