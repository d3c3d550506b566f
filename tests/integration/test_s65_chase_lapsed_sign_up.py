"""Session 65 regulatory finding: ``consentsync ledger requested`` (``Ledger.stale_requests``) listed
a double opt-in sign-up nobody confirmed, lapsed, for a direct-marketing purpose as an unanswered
request to follow up. The address may have been typed by anyone, and a message asking for
marketing consent is itself direct marketing (docs/policy.md rule 6, PECR reg. 22): ``hub
requests`` asks only people the ledger lets us e-mail marketing on another ground, and would have
asked nobody. Now the report applies the same test (``may_email_marketing``) to every purpose
serving direct marketing, and leaves out sign-ups nobody confirmed, open or lapsed: they are not
requests we sent. A request of ours (``hub requests``), one recorded after a lapsed sign-up, and
one for a purpose outside direct marketing are still listed. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, LawfulBasis
from consentsync.hub import keys, notices
from consentsync.hub.api import create_app
from consentsync.hub.capture import Hub
from consentsync.hub.outreach import Outreacher
from consentsync.ledger.identity import Identity
from tests.conftest import Cli, Clock
from tests.hub.conftest import NEWSLETTER_NOTICE, NOTICE_IN_EFFECT, HubWorld, Inbox, hub_config, inbox
from tests.hub.people_world import soft_opt_in
from tests.integration.helpers import consent_value

FIXTURES = (inbox,)

# Marketing by e-mail with a double opt-in (the finding's "newsletter"), and a double opt-in
# purpose that is no marketing.
OFFERS = {"key": "offers", "name": "Offers", "direct_marketing": True, "default_basis": "consent",
          "channels": ["email"], "double_opt_in": True}  # fmt: skip
UPDATES = {"key": "updates", "name": "Product updates", "default_basis": "consent", "channels": ["email"],
           "double_opt_in": True}  # fmt: skip
SIGN_UP = {"status": "granted", "notice_version": "2026-05", "evidence_ref": "form:signup"}

TYPED = "typed-by-someone@example.test"  # an offers sign-up nobody confirmed; nothing else
SUBSCRIBER = "subscriber@example.test"  # e-mail marketing consent in force; offers sign-up lapsed
OPEN = "open@example.test"  # an updates sign-up never confirmed (not swept by the lapse)
CUSTOMER = "customer@example.test"  # a contract only; an offers request recorded by ops
ASKED = "asked@example.test"  # a soft opt-in; asked for offers by `hub requests`
AGAIN = "again@example.test"  # consent in force; offers sign-up lapsed, then asked by ops
PLAIN = "plain@example.test"  # an updates request recorded by ops: no marketing, no sign-up


@pytest.fixture
def world(config_path: Path, inbox: tuple[Inbox, int]) -> Iterator[HubWorld]:
    handler, port = inbox
    hub_config(config_path, port)
    data = yaml.safe_load(config_path.read_text())
    data["purposes"].extend([OFFERS, UPDATES])
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(config_path)
    ledger = open_ledger(config, migrate=True)
    # Two months ago: old enough for the report's default (30 days), read by the CLI at real time.
    clock = Clock(datetime.now(UTC).replace(microsecond=0) - timedelta(days=60))
    ledger.clock = clock
    ledger.sync_purposes()
    for purpose in config.purposes:
        notices.add(ledger, purpose, "2026-05", NEWSLETTER_NOTICE, in_effect_from=NOTICE_IN_EFFECT)
    _key, secret = keys.create(ledger, "website", source="web_form", purposes=["*"], actions=["*"])
    hub = Hub(config, ledger)
    with TestClient(create_app(hub)) as client:
        yield HubWorld(hub, ledger, client, handler, clock, secret)
    ledger.engine.dispose()


def _record(world: HubWorld, email: str, purpose: str, status: ConsentStatus, **more: object) -> None:
    now = world.clock()
    world.ledger.record(Identity(email=email), consent_value(status, now, now, purpose=purpose, **more))


def _sign_up(world: HubWorld, email: str, purpose: str) -> None:
    answer = world.post("/consents", {"email": email, "purpose": purpose, **SIGN_UP})
    assert answer.status_code == 201, answer.text
    (result,) = answer.json()["results"]
    assert (result["recorded"], result["confirmation"]) == ("requested", "queued")


def _people(world: HubWorld) -> None:
    proof = {"notice_version": "2026-05", "evidence_ref": "form:1"}
    for email in (SUBSCRIBER, AGAIN):
        _record(world, email, "email_marketing", ConsentStatus.GRANTED, **proof)
    _record(
        world, CUSTOMER, "service", ConsentStatus.NOT_APPLICABLE, basis=LawfulBasis.CONTRACT, source="ops"
    )
    soft_opt_in(world, ASKED)
    for email in (TYPED, SUBSCRIBER, AGAIN):
        _sign_up(world, email, "offers")
    _record(world, CUSTOMER, "offers", ConsentStatus.REQUESTED, source="ops")
    _record(world, PLAIN, "updates", ConsentStatus.REQUESTED, source="ops")
    world.clock.advance(days=world.hub.settings.confirmation_days + 1)
    assert world.hub.lapse_unconfirmed() == 3  # the three offers sign-ups' links
    _sign_up(world, OPEN, "updates")  # its link expires unswept
    world.clock.advance(minutes=1)
    _record(world, AGAIN, "offers", ConsentStatus.REQUESTED, source="ops")  # asked after the lapse
    world.clock.advance(minutes=1)
    asked = Outreacher(world.hub, sleep=lambda _seconds: None).request_consent("offers")
    assert (asked.sent, asked.no_ground) == (1, 2)  # ASKED; OPEN and PLAIN have no ground


def test_the_report_chases_no_unconfirmed_sign_up_nor_marketing_without_a_ground(
    world: HubWorld, config_path: Path
) -> None:
    _people(world)
    world.clock.advance(days=1)
    expected = {(ASKED, "offers"), (AGAIN, "offers"), (PLAIN, "updates")}
    report = world.ledger.stale_requests(0)
    assert {(row["email"], row["purpose"]) for row in report} == expected
    # `consentsync ledger requested`, at its default age (30 days), says the same.
    rows = Cli(config_path, CliRunner()).json("ledger", "requested")
    assert {(row["email"], row["purpose"]) for row in rows} == expected
    # The ground is weighed now: the soft opt-in refused, ASKED is no longer chased.
    world.clock.advance(minutes=1)
    _record(world, ASKED, "email_marketing", ConsentStatus.WITHDRAWN, basis=None)
    assert {(r["email"], r["purpose"]) for r in world.ledger.stale_requests(0)} == expected - {
        (ASKED, "offers")
    }


def test_a_confirmed_sign_up_is_no_request_and_a_declined_one_is_a_refusal(world: HubWorld) -> None:
    """The sign-up's own answers end it: confirmed, a grant; declined, a refusal. Neither is listed."""
    _record(world, SUBSCRIBER, "email_marketing", ConsentStatus.GRANTED, notice_version="2026-05")
    _sign_up(world, SUBSCRIBER, "offers")
    _sign_up(world, TYPED, "updates")
    assert world.ledger.stale_requests(0) == []  # both waiting for their person's answer
    first, second = (world.inbox.link("/confirm/", index).rsplit("/", 1)[1] for index in (-2, -1))
    world.clock.advance(minutes=5)
    world.hub.confirm(first, "en")
    world.hub.decline(second, "en")
    states = {
        (email, purpose): world.ledger.decision_for(email, purpose, "email")[1].status
        for email, purpose in ((SUBSCRIBER, "offers"), (TYPED, "updates"))
    }
    assert states == {
        (SUBSCRIBER, "offers"): ConsentStatus.GRANTED,
        (TYPED, "updates"): ConsentStatus.REFUSED,
    }
    assert world.ledger.stale_requests(0) == []
