"""An address a person no longer holds does not speak for them, in the sync too (session 64
regulatory black-box finding; docs/policy.md, "An address a person no longer holds does not speak
for them"). Against the Salesforce and HubSpot sandboxes over HTTP, on SQLite and PostgreSQL:

Alex's Salesforce Contact is read showing old.box@, then showing alex.ames@ (Alex left old.box@).
The recycled mailbox's new owner makes a HubSpot contact with old.box@ and subscribes. The sync
links that contact to Alex (an address has one holder), but its subscription is no word of
Alex's: it is set aside (a quarantine row names it, for ops), Alex has no consent on record, and
Salesforce is never told to clear Alex's email opt-out (before: HasOptedOutOfEmail yes -> no,
marketing to a person who never consented). The contact's unsubscribe, a no, is Alex's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import select

from consentsync import audit
from consentsync.app import open_ledger, open_sync
from consentsync.config import load_config
from consentsync.demo_crms import _past_this_second
from consentsync.ledger.schema import crm_links, quarantine, subject_identifiers
from consentsync.ledger.service import Ledger, utcnow
from tests.conftest import Cli, running_harness, sqlite_at_head
from tests.integration.test_cli_sync import connect_sandbox

OLD, NEW = "old.box@example.org", "alex.ames@example.org"
MARKETING = "1001"  # the HubSpot sandbox's marketing subscription


@pytest.fixture
def crms() -> Iterator[dict[str, Any]]:
    with running_harness("salesforce") as salesforce, running_harness("hubspot") as hubspot:
        yield {"sf": salesforce, "hs": hubspot}


def _configure(config_path: Path, crms: dict[str, Any]) -> None:
    """Both sandboxes as connectors ``sf`` and ``hs``, two-way; Salesforce's Contact mapping
    ticking the email opt-out for a person without consent on record (``no_consent: true``), so
    that a consent wrongly recorded shows as the box cleared."""
    shipped = Path(crms["sf"].mapping_files[0]).read_text()
    opt_out = "push: {suppressed: true, allowed: false}"
    assert opt_out in shipped
    mapping = config_path.parent / "sf_contact.yaml"
    ticked = "push: {suppressed: true, allowed: false, no_consent: true}"
    mapping.write_text(shipped.replace(opt_out, ticked, 1))
    data = yaml.safe_load(config_path.read_text())
    data["connectors"] = [
        {
            "name": name,
            "vendor": harness.vendor,
            "mappings": [str(mapping)] if name == "sf" else [str(p) for p in harness.mapping_files],
            "settings": harness.connector_settings(),
            "signpost_lag_seconds": 0,
            "mode": "two_way",
            "push_guard": {"max_records": None, "max_share": None},
        }
        for name, harness in crms.items()
    ]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _ledger(config_path: Path) -> Ledger:
    config = load_config(config_path)
    sqlite_at_head(config.ledger_url)
    ledger = open_ledger(config, migrate=True)
    ledger.clock = utcnow  # the sandboxes stamp records with the real time
    return ledger


def _sync(config_path: Path, ledger: Ledger, name: str, *, full: bool = False) -> Any:
    _past_this_second()  # the CRMs stamp changes to the second (or millisecond): a change is past
    engine = open_sync(load_config(config_path), name, ledger)
    try:
        report = engine.run(full=full)
    finally:
        engine.connector.close()
    assert report.status == "succeeded", report.error
    return report


def _marketing(ledger: Ledger) -> tuple[str, str]:
    _uid, state = ledger.decision_for(NEW, "email_marketing", "email")
    return state.status.value, state.rule


def _set_aside(ledger: Ledger, record_id: str) -> list[str]:
    with ledger.engine.connect() as conn:
        return list(
            conn.execute(
                select(quarantine.c.reason).where(
                    quarantine.c.connector == "hs", quarantine.c.record_id == record_id
                )
            ).scalars()
        )


@pytest.fixture
def moved(crms: dict[str, Any], config_path: Path) -> Iterator[tuple[Ledger, str]]:
    """Alex's Contact synced showing OLD, then showing NEW: Alex left OLD. The ledger, and the
    Contact's id."""
    _configure(config_path, crms)
    ledger = _ledger(config_path)
    org = crms["sf"].sandbox.org
    alex = crms["sf"].create_named("Ames", OLD, FirstName="Alex")
    _sync(config_path, ledger, "sf", full=True)
    _sync(config_path, ledger, "hs", full=True)
    assert org.get(alex)["HasOptedOutOfEmail"] is True  # no consent on record: ticked
    org.update(alex, Email=NEW)
    _sync(config_path, ledger, "sf")
    with ledger.engine.connect() as conn:
        left = conn.execute(
            select(subject_identifiers.c.left_at).where(subject_identifiers.c.value == OLD)
        ).scalar()
    assert left is not None, "Alex's move was not kept: the scenario needs OLD left"
    try:
        yield ledger, alex
    finally:
        ledger.engine.dispose()


def test_the_recycled_mailboxs_subscription_is_not_the_persons_consent(
    moved: tuple[Ledger, str], crms: dict[str, Any], config_path: Path
) -> None:
    ledger, alex = moved
    portal, org = crms["hs"].sandbox.portal, crms["sf"].sandbox.org
    stranger = portal.create({"email": OLD, "lastname": "Newowner"}, via="form")
    portal.set_status(OLD, MARKETING, "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", source="Form")
    report = _sync(config_path, ledger, "hs")

    # Linked to Alex (an address has one holder), but the subscription is set aside, for ops.
    with ledger.engine.connect() as conn:
        linked = conn.execute(
            select(crm_links.c.subject_id).where(crm_links.c.record_id == stranger)
        ).scalar()
        alex_id = conn.execute(
            select(subject_identifiers.c.subject_id).where(subject_identifiers.c.value == NEW)
        ).scalar()
    assert linked == alex_id
    assert _marketing(ledger) == ("applicable", "no_consent_on_record")
    assert report.counts.quarantined == 1 and report.counts.evidence_recorded == 0
    (reason,) = _set_aside(ledger, stranger)
    assert "email_marketing/email granted" in reason and "an address they left" in reason
    assert OLD not in reason  # the reason names no address

    # Salesforce keeps Alex's opt-out: nothing tells it otherwise, in this run or the next.
    _sync(config_path, ledger, "sf")
    _sync(config_path, ledger, "hs")
    assert org.get(alex)["HasOptedOutOfEmail"] is True, "Alex's opt-out was cleared on a stranger's word"
    with ledger.engine.connect() as conn:
        pushed = [e for e in audit.entries(conn, action="crm.pushed") if e["what"]["record"] == alex]
    assert [e["new"] for e in pushed] == [{"HasOptedOutOfEmail": True}], pushed
    assert len(_set_aside(ledger, stranger)) == 1, "the unchanged subscription was set aside again"


def test_a_later_subscription_is_set_aside_and_an_unsubscribe_is_the_persons(
    moved: tuple[Ledger, str], crms: dict[str, Any], config_path: Path
) -> None:
    """The contact read first with nothing to say (linked to Alex), then subscribing, then
    unsubscribing: every read while it shows OLD sets its grant aside; its no binds Alex."""
    ledger, alex = moved
    portal, org = crms["hs"].sandbox.portal, crms["sf"].sandbox.org
    stranger = portal.create({"email": OLD, "lastname": "Newowner"}, via="form")
    _sync(config_path, ledger, "hs")
    assert _set_aside(ledger, stranger) == []
    portal.set_status(OLD, MARKETING, "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", source="Form")
    _sync(config_path, ledger, "hs")
    assert len(_set_aside(ledger, stranger)) == 1
    assert _marketing(ledger) == ("applicable", "no_consent_on_record")
    _sync(config_path, ledger, "sf")
    assert org.get(alex)["HasOptedOutOfEmail"] is True

    portal.set_status(OLD, MARKETING, "UNSUBSCRIBED", source="Subscription preferences page")
    report = _sync(config_path, ledger, "hs")
    assert report.counts.evidence_recorded == 1 and report.counts.quarantined == 0
    assert _marketing(ledger)[0] == "withdrawn"


# -- a stranger's Individual tied to the person by the left address ---------------------------------

EMAIL_MARKETING = "0ZW8d00007CB5wrGAD"  # the Salesforce sandbox's "Email Marketing" DataUsePurpose


def test_a_strangers_individual_is_not_absorbed_through_the_left_address(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new owner's own Individual, its consent record opting in, and a Contact of theirs
    with OLD pointing to it: a record tying an address-less person to Alex only through the
    address Alex left proves nothing (docs/policy.md, "A person known only through records
    without an address"): the Individual is not absorbed into Alex, so the consent record's
    later opt-in is never Alex's."""
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
        _past_this_second()
        cli.ok("sync", "sf")
        org.create("Contact", LastName="Newowner", Email=OLD, IndividualId=individual)
        _past_this_second()
        cli("sync", "sf")
        assert [e for e in cli.json("audit", "log") if e["action"] == "subject.absorbed"] == []
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
