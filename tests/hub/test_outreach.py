"""Consent requests and renewals: asked only of people with nothing on record (never the erased,
restricted, objecting, withdrawn or already asked), confirmed through the mailed link; renewals
mailed inside the window, and following the link extends the consent."""

from __future__ import annotations

from consentsync.domain import ConsentStatus, LawfulBasis
from consentsync.hub.capture import Hub
from consentsync.hub.outreach import Outreacher
from consentsync.ledger.identity import Identity
from tests.conftest import SQLITE_ONLY
from tests.hub.conftest import HubWorld
from tests.hub.people_world import GRANT
from tests.integration.helpers import consent_value


def someone(world: HubWorld, email: str) -> None:
    """A person the ledger knows (a customer: service messages on their contract, recorded by
    ops) with nothing on record for the newsletter. Not through an objection to ``service``: a
    contract gives no right to object, and the ledger refuses one (``ledger.service.objectable``)."""
    now = world.ledger.clock()
    customer = consent_value(
        ConsentStatus.NOT_APPLICABLE, now, now, purpose="service", basis=LawfulBasis.CONTRACT, source="ops"
    )
    world.ledger.record(Identity(email=email), customer)


@SQLITE_ONLY
def test_requests_go_only_to_people_with_nothing_on_record(world: HubWorld) -> None:
    for name in ("ada", "bob", "cy", "dee", "eve"):
        someone(world, f"{name}@example.test")
    world.post("/consents", {"email": "bob@example.test", "purpose": "newsletter", "status": "withdrawn"})
    world.ledger.restrict("cy@example.test", restricted=True, reason="disputed accuracy")
    world.ledger.erase("dee@example.test", reason="asked")
    world.ledger.raise_objection("eve@example.test", "newsletter", direct_marketing=True)
    world.inbox.messages.clear()
    outreach = Outreacher(world.hub, sleep=lambda _seconds: None)
    assert outreach.request_consent("newsletter", dry_run=True).candidates == 1
    done = outreach.request_consent("newsletter")
    assert (done.sent, done.failed) == (1, 0)
    (mail,) = world.inbox.messages
    assert mail["To"] == "ada@example.test" and "Newsletter" in mail["Subject"]
    token = world.inbox.link("/p/confirm/").rsplit("/", 1)[1]
    # Asked once: a second run asks no one, before or after the answer.
    assert outreach.request_consent("newsletter").candidates == 0
    world.clock.advance(hours=3)
    assert world.hub.confirm(token)["already"] is False
    state = world.ledger.subject_view("ada@example.test")["history"][-1]
    assert state["status"] == "granted" and state["double_opt_in_at"] is not None
    assert outreach.request_consent("newsletter").candidates == 0


@SQLITE_ONLY
def test_a_request_needs_a_consent_purpose_with_a_notice(world: HubWorld) -> None:
    import pytest

    from consentsync.domain import InvalidInput

    outreach = Outreacher(world.hub, sleep=lambda _seconds: None)
    with pytest.raises(InvalidInput, match="not based on consent"):
        outreach.request_consent("profiling")
    with pytest.raises(InvalidInput, match="unknown purpose"):
        outreach.request_consent("nope")


@SQLITE_ONLY
def test_renewals_inside_the_window_extend_the_consent(world: HubWorld) -> None:
    world.post("/consents", GRANT)
    outreach = Outreacher(world.hub, sleep=lambda _seconds: None)
    assert outreach.renew().candidates == 0  # a year to go
    world.clock.advance(days=340)
    world.inbox.messages.clear()
    done = outreach.renew()
    assert (done.candidates, done.sent) == (1, 1)
    assert "Renew" in world.inbox.messages[-1]["Subject"]
    assert outreach.renew().candidates == 0  # a renewal is open
    before = world.ledger.subject_view("ada@example.test")["purposes"]
    expiry = next(s["expires_at"] for s in before if s["purpose"] == "newsletter")
    world.clock.advance(days=2)
    world.hub.confirm(world.inbox.link("/p/confirm/").rsplit("/", 1)[1])
    after = world.ledger.subject_view("ada@example.test")["purposes"]
    renewed = next(s for s in after if s["purpose"] == "newsletter")
    assert renewed["status"] == "granted" and renewed["expires_at"] > expiry
    # Withdrawn people are not asked to renew.
    world.post("/consents", {"email": "ada@example.test", "purpose": "newsletter", "status": "withdrawn"})
    world.clock.advance(days=340)
    assert outreach.renew().candidates == 0


@SQLITE_ONLY
def test_the_daemon_lapses_and_renews_on_its_schedule(world: HubWorld) -> None:
    from consentsync.sync.daemon import Daemon

    world.post("/consents", GRANT)
    world.post("/consents", {**GRANT, "email": "bob@example.test", "purpose": "email_marketing"})
    world.clock.advance(days=340)
    world.inbox.messages.clear()
    daemon = Daemon(world.hub.config, world.ledger)
    assert [job.id for job in daemon.scheduler.get_jobs()] == []
    daemon._schedule_hub_upkeep()
    assert [job.id for job in daemon.scheduler.get_jobs()] == ["~hub-upkeep"]
    daemon.hub_upkeep()
    assert [m["To"] for m in world.inbox.messages] == ["ada@example.test"]  # the renewal
    from sqlalchemy import select

    from consentsync.ledger.schema import confirmations

    with world.ledger.engine.connect() as conn:
        kinds = {(row.kind, row.lapsed_at is not None) for row in conn.execute(select(confirmations))}
    assert kinds == {("double_opt_in", True), ("renewal", False)}  # bob's unconfirmed opt-in lapsed


@SQLITE_ONLY
def test_the_daemon_sends_consent_requests_only_for_the_purposes_configured(world: HubWorld) -> None:
    from dataclasses import replace

    from consentsync.sync.daemon import Daemon

    someone(world, "ada@example.test")
    world.inbox.messages.clear()
    Daemon(world.hub.config, world.ledger).hub_upkeep()
    assert world.inbox.messages == []  # none configured: requests are a deliberate command
    settings = world.hub.config.settings
    configured = replace(
        world.hub.config,
        settings=settings.model_copy(
            update={"hub": settings.hub.model_copy(update={"request_purposes": ["newsletter"]})}
        ),
    )
    Daemon(configured, world.ledger).hub_upkeep()
    assert [m["To"] for m in world.inbox.messages] == ["ada@example.test"]


def _unreachable_mail(world: HubWorld) -> Hub:
    """The same hub with its mail server gone (a port nothing listens on)."""
    import socket
    from dataclasses import replace

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings = world.hub.config.settings
    smtp = settings.hub.smtp.model_copy(update={"port": closed})
    config = replace(
        world.hub.config,
        settings=settings.model_copy(update={"hub": settings.hub.model_copy(update={"smtp": smtp})}),
    )
    return Hub(config, world.ledger)


@SQLITE_ONLY
def test_a_request_or_renewal_that_could_not_be_mailed_asked_nobody(world: HubWorld) -> None:
    """Nothing is recorded for a mail that did not go: the person is still among those to ask
    (a "requested" on record would have kept them from ever being asked), and no link is left
    open to keep them from the next run."""
    from sqlalchemy import func, select

    from consentsync.ledger.schema import confirmations

    someone(world, "ada@example.test")
    world.inbox.messages.clear()
    history = world.ledger.subject_view("ada@example.test")["history"]
    down = Outreacher(_unreachable_mail(world), sleep=lambda _seconds: None)
    done = down.request_consent("newsletter")
    assert (done.candidates, done.sent, done.failed) == (1, 0, 1)
    assert world.ledger.subject_view("ada@example.test")["history"] == history
    with world.ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(confirmations)).scalar() == 0
    back = Outreacher(world.hub, sleep=lambda _seconds: None)
    assert back.request_consent("newsletter", dry_run=True).candidates == 1
    assert (back.request_consent("newsletter").sent, len(world.inbox.messages)) == (1, 1)
    assert world.ledger.subject_view("ada@example.test")["history"][-1]["status"] == "requested"
    # A renewal likewise: due again at once, not only once an unsent link lapsed.
    world.post("/consents", {**GRANT, "email": "bob@example.test", "purpose": "newsletter"})
    world.clock.advance(days=340)
    assert (down.renew().failed, down.renew().failed) == (1, 1)
    assert back.renew().sent == 1
