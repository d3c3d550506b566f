"""The data subject's walk, session 51c: an outreach run (consent requests, renewals) paces its
mails over minutes from a list made at its start. A person restricted (Art. 18), or who withdrew
or objected while it went on, was still mailed. Each person's state is now read again right
before their mail: such a person is left out, as its own outcome (not a failure: ``hub requests``
does not exit 69 for it), logged by ids and rule only, and the command says how many.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from sqlalchemy import func, select

from consentsync.domain import ConsentStatus, LawfulBasis, Origin
from consentsync.hub.outreach import Outreacher
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import confirmations, consent_events
from tests.conftest import SQLITE_ONLY, Cli
from tests.hub.conftest import HubWorld
from tests.hub.people_world import GRANT
from tests.hub.test_outreach import someone
from tests.integration.helpers import consent_value

ADA = "ada@example.test"
BOB = "bob@example.test"


def restrict(world: HubWorld) -> None:
    world.ledger.restrict(BOB, restricted=True, reason="contests the accuracy of his data", actor="dpo")


def withdraw(world: HubWorld) -> None:
    now = world.ledger.clock()
    world.ledger.record(
        Identity(email=BOB),
        consent_value(
            ConsentStatus.WITHDRAWN,
            now,
            now,
            purpose="newsletter",
            basis=LawfulBasis.CONSENT,
            origin=Origin.CAPTURE,
        ),
    )


def object_to_marketing(world: HubWorld) -> None:
    world.ledger.raise_objection(BOB, "newsletter", direct_marketing=True)


MEANWHILE: dict[str, Callable[[HubWorld], None]] = {
    "restricted": restrict,
    "withdrew": withdraw,
    "objected": object_to_marketing,
}


def _open_links(world: HubWorld) -> int:
    with world.ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(confirmations)).scalar_one())


def _requested(world: HubWorld) -> int:
    with world.ledger.engine.connect() as conn:
        query = select(func.count()).where(consent_events.c.status == ConsentStatus.REQUESTED.value)
        return int(conn.execute(query).scalar_one())


def no_personal_data(logged: list[dict[str, Any]]) -> None:
    for entry in logged:
        assert "@" not in repr(entry), entry


@SQLITE_ONLY
@pytest.mark.usefixtures("info_logs")
@pytest.mark.parametrize("what", sorted(MEANWHILE))
def test_a_consent_request_run_leaves_out_a_person_who_said_no_or_was_restricted_meanwhile(
    world: HubWorld, what: str
) -> None:
    for email in (ADA, BOB):  # known, nothing on record for the newsletter
        someone(world, email)
    world.inbox.messages.clear()

    def pace(_seconds: float) -> None:  # while the run waits between mails
        MEANWHILE[what](world)

    with structlog.testing.capture_logs() as logged:
        done = Outreacher(world.hub, sleep=pace).request_consent("newsletter")
    assert [message["To"] for message in world.inbox.messages] == [ADA]  # Bob was not mailed
    assert (done.candidates, done.sent, done.failed, done.erased, done.changed) == (2, 1, 0, 0, 1)
    # Nothing recorded about Bob, and his link taken back: only Ada's is open.
    assert _requested(world) == 1 and _open_links(world) == 1
    skipped = [entry for entry in logged if entry["event"] == "hub.mail_skipped"]
    assert [entry["reason"] for entry in skipped] == ["changed"]
    no_personal_data(logged)


@SQLITE_ONLY
@pytest.mark.parametrize("what", sorted(MEANWHILE))
def test_a_renewal_run_leaves_out_a_person_who_said_no_or_was_restricted_meanwhile(
    world: HubWorld, what: str
) -> None:
    for email in (ADA, BOB):
        assert world.post("/consents", {**GRANT, "email": email}).status_code == 201
    world.clock.advance(days=340)
    world.inbox.messages.clear()
    done = Outreacher(world.hub, sleep=lambda _seconds: MEANWHILE[what](world)).renew()
    assert [message["To"] for message in world.inbox.messages] == [ADA]  # Bob was not mailed
    assert (done.candidates, done.sent, done.failed, done.erased, done.changed) == (2, 1, 0, 0, 1)
    assert _open_links(world) == 1


@SQLITE_ONLY
def test_hub_requests_says_who_was_left_out_and_why_and_does_not_fail_for_it(
    world: HubWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command, as a scheduler runs it: one person restricted and one erased during the run
    are no failures to retry, and the operator is told where they went."""
    carol = "carol@example.test"
    for email in (ADA, BOB, carol):
        someone(world, email)
    world.inbox.messages.clear()
    paced = Outreacher._pace
    meanwhile = [False]

    def pace(self: Outreacher, sent: int) -> None:
        if sent and not meanwhile[0]:  # after Ada's mail: Bob restricted, Carol erased (console)
            meanwhile[0] = True
            restrict(world)
            world.ledger.erase(carol, reason="asked for by the person", actor="dpo")
        paced(self, 0)

    monkeypatch.setattr(Outreacher, "_pace", pace)
    result = Cli(world.hub.config.path, CliRunner())("hub", "requests", "newsletter")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith("1 consent request(s) sent for newsletter, 0 failed, "), line
    assert "1 left out: erased while the run went on" in line
    assert "1 left out: restricted, or said no or answered, while the run went on" in line
    assert [message["To"] for message in world.inbox.messages] == [ADA]
