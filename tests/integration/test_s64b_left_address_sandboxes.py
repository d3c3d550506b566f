"""An address a person no longer holds does not speak for them: what the first fix left open
(session 64 review; docs/policy.md, "An address a person no longer holds does not speak for
them"). Against the Salesforce and HubSpot sandboxes over HTTP, on SQLite and PostgreSQL:

- the recycled mailbox's new owner's Salesforce Contact pointing to their own, unread Individual:
  the Individual (and so its consent record's opt-in) became the former holder's;
- the new owner's HubSpot contact, linked by the address while Alex still held it (after Alex's
  own record), edited away and back, or deleted and restored, subscribing: the subscription was
  recorded as Alex's and the address made Alex's again;
- the new owner's HubSpot contact read on the same page as Alex's contact moving off the address:
  its subscription was recorded as Alex's.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import select

from consentsync.demo_crms import _past_this_second
from consentsync.ledger.schema import subject_identifiers
from consentsync.ledger.service import Ledger
from tests.conftest import Cli, running_harness
from tests.integration.test_cli_sync import connect_sandbox
from tests.integration.test_s64_left_address_sandboxes import (
    MARKETING,
    NEW,
    OLD,
    _configure,
    _ledger,
    _marketing,
    _set_aside,
    _sync,
)

OTHER = "newowner.work@example.net"
EMAIL_MARKETING = "0ZW8d00007CB5wrGAD"  # the Salesforce sandbox's "Email Marketing" DataUsePurpose


@pytest.fixture
def crms() -> Iterator[dict[str, Any]]:
    with running_harness("salesforce") as salesforce, running_harness("hubspot") as hubspot:
        yield {"sf": salesforce, "hs": hubspot}


def _old_left(ledger: Ledger) -> bool:
    with ledger.engine.connect() as conn:
        return (
            conn.execute(
                select(subject_identifiers.c.left_at).where(subject_identifiers.c.value == OLD)
            ).scalar()
            is not None
        )


@pytest.fixture
def early(crms: dict[str, Any], config_path: Path) -> Iterator[tuple[Ledger, str, str]]:
    """Alex's Salesforce Contact showing OLD; the new owner's HubSpot contact made with OLD while
    Alex still held it (linked to Alex by the address, after Alex's Contact); then Alex's Contact
    moved to NEW: OLD left. The ledger, Alex's Contact and the HubSpot contact."""
    _configure(config_path, crms)
    ledger = _ledger(config_path)
    alex = crms["sf"].create_named("Ames", OLD, FirstName="Alex")
    _sync(config_path, ledger, "sf", full=True)
    _sync(config_path, ledger, "hs", full=True)
    stranger = crms["hs"].sandbox.portal.create({"email": OLD, "lastname": "Newowner"}, via="form")
    _sync(config_path, ledger, "hs")
    crms["sf"].sandbox.org.update(alex, Email=NEW)
    _sync(config_path, ledger, "sf")
    assert _old_left(ledger), "Alex's move was not kept: the scenario needs OLD left"
    try:
        yield ledger, alex, stranger
    finally:
        ledger.engine.dispose()


def _subscribe_and_check(
    ledger: Ledger, harnesses: dict[str, Any], config_path: Path, alex: str, stranger: str
) -> None:
    harnesses["hs"].sandbox.portal.set_status(
        OLD, MARKETING, "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", source="Form"
    )
    _sync(config_path, ledger, "hs")
    assert _marketing(ledger)[0] != "granted", "the new owner's subscription became Alex's consent"
    assert _old_left(ledger), "the new owner's contact made the address Alex's again"
    assert _set_aside(ledger, stranger), "the subscription was not set aside for ops"
    _sync(config_path, ledger, "sf")
    assert harnesses["sf"].sandbox.org.get(alex)["HasOptedOutOfEmail"] is True, "Alex's opt-out was cleared"


def test_a_contact_linked_before_the_move_edited_away_and_back_is_no_record_of_theirs(
    early: tuple[Ledger, str, str],
    crms: dict[str, Any],
    config_path: Path,
) -> None:
    ledger, alex, stranger = early
    portal = crms["hs"].sandbox.portal
    portal.update(stranger, {"email": OTHER})
    _sync(config_path, ledger, "hs")
    portal.update(stranger, {"email": OLD})
    _subscribe_and_check(ledger, crms, config_path, alex, stranger)


def test_a_contact_linked_before_the_move_deleted_and_restored_is_no_record_of_theirs(
    early: tuple[Ledger, str, str],
    crms: dict[str, Any],
    config_path: Path,
) -> None:
    ledger, alex, stranger = early
    portal = crms["hs"].sandbox.portal
    assert portal.archive(stranger)
    _sync(config_path, ledger, "hs")
    assert portal.restore(stranger)
    _subscribe_and_check(ledger, crms, config_path, alex, stranger)


def test_a_contact_read_on_the_page_that_leaves_the_address_is_no_record_of_theirs(
    crms: dict[str, Any],
    config_path: Path,
) -> None:
    """Alex's HubSpot contact moves off OLD and the new owner's contact, made with OLD and
    subscribed, is read on the same page: linked on the page that leaves OLD, it is linked after
    the move."""
    _configure(config_path, crms)
    ledger = _ledger(config_path)
    try:
        portal = crms["hs"].sandbox.portal
        alex = portal.create({"email": OLD, "firstname": "Alex", "lastname": "Ames"}, via="form")
        _sync(config_path, ledger, "hs", full=True)
        portal.update(alex, {"email": NEW})
        stranger = portal.create({"email": OLD, "lastname": "Newowner"}, via="form")
        portal.set_status(OLD, MARKETING, "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", source="Form")
        report = _sync(config_path, ledger, "hs")
        assert _old_left(ledger)
        assert _marketing(ledger)[0] != "granted", "the new owner's subscription became Alex's consent"
        assert report.counts.quarantined == 1 and len(_set_aside(ledger, stranger)) == 1
        # Their unsubscribe is Alex's no, on the safe side.
        portal.set_status(OLD, MARKETING, "UNSUBSCRIBED", source="Subscription preferences page")
        _sync(config_path, ledger, "hs")
        assert _marketing(ledger)[0] == "withdrawn"
    finally:
        ledger.engine.dispose()


def test_an_unread_individual_of_the_new_owner_is_not_brought_to_the_former_holder(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new owner's Contact with OLD pointing to their own Individual, read before it (the
    Individual and its consent record opting in made at once): the Individual is not linked to
    Alex, so its consent record's opt-in is never Alex's."""
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(3, seed=60)  # its DataUsePurposes are the mapping's
        connect_sandbox(sandbox, config_path, monkeypatch)
        org = sandbox.org
        alex = org.create("Contact", LastName="Ames", FirstName="Alex", Email=OLD)
        cli.ok("sync", "sf")
        org.update(alex, {"Email": NEW})
        _past_this_second()
        cli.ok("sync", "sf")
        individual = org.create("Individual", LastName="Newowner")
        consent = org.create(
            "ContactPointTypeConsent",
            {
                "Name": "Email marketing - Newowner",
                "PartyId": individual,
                "DataUsePurposeId": EMAIL_MARKETING,
                "ContactPointType": "Email",
                "PrivacyConsentStatus": "OptIn",
                "CaptureDate": datetime.now(UTC) - timedelta(hours=1),
                "CaptureSource": "Web",
            },
        )
        org.create("Contact", LastName="Newowner", Email=OLD, IndividualId=individual)
        _past_this_second()
        cli("sync", "sf")
        org.update(consent, {"CaptureDate": datetime.now(UTC) - timedelta(minutes=1)})  # opted in again
        _past_this_second()
        cli("sync", "sf")
        (state,) = [
            p for p in cli.json("subject", "show", NEW)["purposes"]
            if (p["purpose"], p["channel"]) == ("email_marketing", "email")
        ]  # fmt: skip
        assert state["status"] != "granted", "the new owner's opt-in became Alex's consent"
        records = {row["record_id"] for row in cli.json("subject", "show", NEW)["crm_records"]}
        assert alex in records and individual not in records and consent not in records
        assert [e for e in cli.json("audit", "log") if e["action"] == "subject.absorbed"] == []


def test_a_merge_survivor_moving_back_to_the_left_address_makes_it_theirs_again(
    crms: dict[str, Any], config_path: Path
) -> None:
    """Alex's Contact moves off OLD (left), then is merged into a Contact the ledger has not read
    (showing NEW): the survivor stands for the merged record, Alex's from before the move, so
    moved back to OLD it makes OLD Alex's again, as the merged record would have (before: the
    survivor was linked at the merge, after the move, and OLD stayed left for good)."""
    _configure(config_path, crms)
    ledger = _ledger(config_path)
    try:
        org = crms["sf"].sandbox.org
        alex = crms["sf"].create_named("Ames", OLD, FirstName="Alex")
        _sync(config_path, ledger, "sf", full=True)
        org.update(alex, Email=NEW)
        _sync(config_path, ledger, "sf")
        assert _old_left(ledger)
        survivor = crms["sf"].create_named("Ames", NEW, FirstName="Alex")
        org.merge(survivor, alex)
        _sync(config_path, ledger, "sf")
        org.update(survivor, Email=OLD)
        _sync(config_path, ledger, "sf")
        assert not _old_left(ledger), (
            "the merge's survivor, standing for Alex's record, could not hold OLD again"
        )
    finally:
        ledger.engine.dispose()
