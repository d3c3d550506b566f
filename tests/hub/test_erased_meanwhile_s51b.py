"""The data subject's walk, session 51b: nothing more is mailed to a person erased meanwhile.

- A double opt-in's mail goes after the capture's answer (a background task): an erasure
  committed in between still let the confirmation mail go to the erased address.
- An outreach run paces its mails over minutes: a person erased while it ran was still mailed a
  consent request or a renewal from the list made at its start.

Either is now skipped, as its own outcome: not a failure (``hub requests`` does not exit 69 for
it: a scheduler would retry for nothing), logged by ids only.
"""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from consentsync.hub import keys
from consentsync.hub.capture import ConsentCapture, Mailed
from consentsync.hub.outreach import Outreacher
from tests.conftest import SQLITE_ONLY, Cli
from tests.hub.conftest import HubWorld
from tests.hub.people_world import GRANT
from tests.hub.test_outreach import someone  # known, nothing on record for the newsletter

ADA = "ada@example.test"
BOB = "bob@example.test"


def ada_and_bob(world: HubWorld) -> None:
    """Two people with nothing on record for the newsletter, and an empty inbox."""
    for email in (ADA, BOB):
        someone(world, email)
    world.inbox.messages.clear()


def erase(world: HubWorld, email: str) -> None:
    world.ledger.erase(email, reason="asked for by the person", actor="dpo")


def no_personal_data(logged: list[dict[str, Any]]) -> None:
    for entry in logged:
        assert "@" not in repr(entry), entry


@SQLITE_ONLY
@pytest.mark.usefixtures("info_logs")
def test_a_double_opt_in_mail_is_not_sent_to_a_person_erased_after_the_answer(world: HubWorld) -> None:
    key = keys.authenticate(world.ledger, world.secret)
    assert key is not None
    signed_up = world.hub.capture(
        key, [ConsentCapture(BOB, "email_marketing", "granted", notice_version="2026-05")]
    )
    assert signed_up.body["results"][0]["confirmation"] == "queued"
    (pending,) = signed_up.mails
    # The answer is given; before its background task mails the link, Bob is erased.
    erase(world, BOB)
    world.inbox.messages.clear()
    with structlog.testing.capture_logs() as logged:
        outcome = world.hub.send_confirmation(pending)
    assert outcome is Mailed.ERASED
    assert world.inbox.messages == []
    skipped = [entry for entry in logged if entry["event"] == "hub.mail_skipped"]
    assert skipped and skipped[0]["reason"] == "erased"
    assert not [entry for entry in logged if entry["event"] in ("hub.mail_sent", "hub.mail_failed")]
    no_personal_data(logged)
    # A person not erased is mailed as ever.
    again = world.hub.capture(
        key, [ConsentCapture(ADA, "email_marketing", "granted", notice_version="2026-05")]
    )
    assert world.hub.send_confirmation(again.mails[0]) is Mailed.SENT
    assert len(world.inbox.messages) == 1


@SQLITE_ONLY
@pytest.mark.usefixtures("info_logs")
def test_a_consent_request_run_skips_a_person_erased_while_it_ran(world: HubWorld) -> None:
    ada_and_bob(world)

    def pace(_seconds: float) -> None:  # while the run waits between mails, Bob is erased
        erase(world, BOB)

    with structlog.testing.capture_logs() as logged:
        done = Outreacher(world.hub, sleep=pace).request_consent("newsletter")
    assert (done.candidates, done.sent, done.failed, done.erased) == (2, 1, 0, 1)
    assert len(world.inbox.messages) == 1 and world.inbox.messages[0]["To"] == ADA
    no_personal_data(logged)
    # Nothing was recorded about him, and no link of his is left.
    from sqlalchemy import func, select

    from consentsync.ledger.schema import confirmations

    with world.ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(confirmations)).scalar() == 1


@SQLITE_ONLY
def test_a_renewal_run_skips_a_person_erased_while_it_ran(world: HubWorld) -> None:
    for email in (ADA, BOB):
        assert world.post("/consents", {**GRANT, "email": email}).status_code == 201
    world.clock.advance(days=340)
    world.inbox.messages.clear()
    done = Outreacher(world.hub, sleep=lambda _seconds: erase(world, BOB)).renew()
    assert (done.candidates, done.sent, done.failed, done.erased) == (2, 1, 0, 1)
    assert [message["To"] for message in world.inbox.messages] == [ADA]


@SQLITE_ONLY
def test_hub_requests_does_not_exit_69_for_a_person_erased_during_the_run(
    world: HubWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command, as a scheduler runs it: an erasure during the run is no failure to retry."""
    ada_and_bob(world)
    paced = Outreacher._pace

    def pace(self: Outreacher, sent: int) -> None:
        if sent:  # the wait between two mails: Bob is erased through the console meanwhile
            erase(world, BOB)
        paced(self, 0)

    monkeypatch.setattr(Outreacher, "_pace", pace)
    result = Cli(world.hub.config.path, CliRunner())("hub", "requests", "newsletter")
    assert result.exit_code == 0, result.output
    assert "1 consent request(s) sent for newsletter, 0 failed" in result.stdout
    assert [message["To"] for message in world.inbox.messages] == [ADA]


class _ErasingWhilePaced:
    """The daemon's stop event, whose wait between two mails erases Bob meanwhile."""

    def __init__(self, world: HubWorld) -> None:
        self.world = world

    def wait(self, _seconds: float) -> bool:
        erase(self.world, BOB)
        return False

    def is_set(self) -> bool:
        return False


@SQLITE_ONLY
@pytest.mark.usefixtures("info_logs")
def test_the_daemons_upkeep_log_counts_people_left_out_meanwhile(world: HubWorld) -> None:
    from dataclasses import replace

    from consentsync.sync.daemon import Daemon

    ada_and_bob(world)
    settings = world.hub.config.settings
    configured = replace(
        world.hub.config,
        settings=settings.model_copy(
            update={"hub": settings.hub.model_copy(update={"request_purposes": ["newsletter"]})}
        ),
    )
    daemon = Daemon(configured, world.ledger)
    daemon.stopping = _ErasingWhilePaced(world)  # type: ignore[assignment]
    with structlog.testing.capture_logs() as logged:
        daemon.hub_upkeep()
    (upkeep,) = [entry for entry in logged if entry["event"] == "hub.upkeep"]
    assert (upkeep["requests_sent"], upkeep["requests_failed"]) == (1, 0), upkeep
    assert (upkeep["left_out_erased"], upkeep["left_out_changed"]) == (1, 0), upkeep
    no_personal_data(logged)
