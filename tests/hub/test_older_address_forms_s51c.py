"""A person an older version holds under the address as it came (before UTS #46 mapping: a
domain in NFD, fullwidth letters) is found by every way in, not only by the sync path
(docs/policy.md, "One address, one form"):

- the capture API's consents and objections, and the CLI's ``ledger record`` and
  ``objection raise``, record on that person (whose CRM records then get the no), rather than
  making a second person who has said nothing while the first keeps their consent;
- the console finds them by the address as typed (their page, their audit trail).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from consentsync.config import load_config
from consentsync.ledger.schema import subjects
from consentsync.ledger.service import Ledger
from consentsync.web.console import Console
from tests.conftest import SQLITE_ONLY, Cli
from tests.hub.conftest import HubWorld
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _pushed, _state

NFD = "b@cafe\u0301.example"  # as an older version stored it: lower-cased only
FULLWIDTH = "c@\uff45xample.com"  # UTS #46 maps it to "c@example.com"


def _people(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(subjects)).scalar_one())


def _linked_person(world: HubWorld, config_path: Path, stored: str) -> Org:
    """A person kept as an older version kept them (the address as it came), opted in, and a CRM
    record of theirs linked to them by a sync; nothing pushed to it yet."""
    _grant(world.ledger, stored, world.clock.now - timedelta(days=30))
    world.clock.advance(minutes=1)
    org = Org(world.clock)
    org.put("r1", stored.upper())
    assert _engine(world.ledger, config_path, org).run().status == "succeeded"
    assert _people(world.ledger) == 1 and _pushed(org, "r1") == []
    world.clock.advance(minutes=1)
    return org


def _reaches_the_record(world: HubWorld, config_path: Path, org: Org, stored: str) -> None:
    assert _people(world.ledger) == 1  # no second person for the same mailbox
    assert _state(world.ledger, stored)[1] is True
    world.clock.advance(minutes=1)
    assert _engine(world.ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]


@SQLITE_ONLY
@pytest.mark.parametrize("stored", [NFD, FULLWIDTH])
def test_a_withdrawal_through_the_capture_api_reaches_the_person_an_older_version_holds(
    world: HubWorld, config_path: Path, stored: str
) -> None:
    org = _linked_person(world, config_path, stored)
    withdrawn = {"email": stored, "purpose": "email_marketing", "status": "withdrawn"}
    answer = world.post("/consents", withdrawn)
    assert answer.status_code == 201, answer.text
    _reaches_the_record(world, config_path, org, stored)


@SQLITE_ONLY
@pytest.mark.parametrize("stored", [NFD, FULLWIDTH])
def test_an_objection_through_the_capture_api_reaches_the_person_an_older_version_holds(
    world: HubWorld, config_path: Path, stored: str
) -> None:
    org = _linked_person(world, config_path, stored)
    objected = {"email": stored, "purpose": "email_marketing", "direct_marketing": True}
    answer = world.post("/objections", objected)
    assert answer.status_code == 201, answer.text
    _reaches_the_record(world, config_path, org, stored)


@SQLITE_ONLY
@pytest.mark.parametrize("stored", [NFD, FULLWIDTH])
def test_a_sign_up_does_not_suspend_the_consent_of_the_person_an_older_version_holds(
    world: HubWorld, config_path: Path, stored: str
) -> None:
    """A double opt-in sign-up for a purpose the person holds records nothing (anyone can type
    their address into a form): so for a person held under the older form too."""
    _linked_person(world, config_path, stored)
    signup = {"email": stored, "purpose": "email_marketing", "status": "granted", "notice_version": "2026-05"}
    answer = world.post("/consents", signup)
    assert answer.status_code == 201, answer.text
    assert answer.json()["results"][0]["recorded"] is None
    assert _people(world.ledger) == 1
    assert _state(world.ledger, stored) == ("granted", False)


@SQLITE_ONLY
@pytest.mark.parametrize("stored", [NFD, FULLWIDTH])
def test_a_withdrawal_recorded_by_the_cli_reaches_the_person_an_older_version_holds(
    world: HubWorld, config_path: Path, stored: str
) -> None:
    org = _linked_person(world, config_path, stored)
    cli = Cli(config_path, CliRunner())
    result = cli(
        "ledger", "record", "--email", stored, "--purpose", "email_marketing",
        "--status", "withdrawn", "--source", "phone",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    _reaches_the_record(world, config_path, org, stored)


@SQLITE_ONLY
@pytest.mark.parametrize("stored", [NFD, FULLWIDTH])
def test_an_objection_raised_by_the_cli_reaches_the_person_an_older_version_holds(
    world: HubWorld, config_path: Path, stored: str
) -> None:
    org = _linked_person(world, config_path, stored)
    cli = Cli(config_path, CliRunner())
    result = cli(
        "objection", "raise", "--email", stored, "--purpose", "email_marketing", "--direct-marketing"
    )
    assert result.exit_code == 0, result.output
    _reaches_the_record(world, config_path, org, stored)


@SQLITE_ONLY
@pytest.mark.parametrize("stored", [NFD, FULLWIDTH])
def test_the_console_finds_a_person_an_older_version_holds_by_the_address_as_typed(
    world: HubWorld, config_path: Path, stored: str
) -> None:
    _grant(world.ledger, stored, world.clock.now - timedelta(days=30))
    (uid,) = world.ledger.subject_uids_for_email(stored)
    console = Console(load_config(config_path), world.ledger)
    assert console.subject_by_email(stored.upper(), reader=None)["subject"] == uid
    assert console.subject_uids_for_email(stored, reader=None) == [uid]
