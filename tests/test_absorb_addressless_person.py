"""A person the ledger holds only through CRM records that carry no address (a Salesforce
Individual, its consent records) is absorbed into the person holding an address once a record
proves the two are one: a record pointing to the address-less person's record and carrying the
other's address, or a record of the address holder newly pointing to it (IndividualId set later).
Before, the order the records were read in decided who held them: an Individual synced before its
Contact left the Contact on an address-less person, so an access request by the address listed no
CRM record (Art. 15), an erasure with ``erasure: {Contact: delete}`` left the Contact in place,
only ticked (Art. 17(2), 19), and a consent record's withdrawal on the Individual never reached
the person holding the address (black-box finding, e5)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import create_engine, func, select

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.ledger.schema import audit_details, audit_entries, crm_links, subjects
from tests.conftest import Cli
from tests.integration.test_cli_sync import connect_sandbox

EMAIL_MARKETING = "0ZW8d00007CB5wrGAD"  # the sandbox's "Email Marketing" DataUsePurpose
ADDRESS = "erin.probe@erase-probe.test"


@pytest.fixture
def sf(cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceSandbox]:
    """A small seeded org (its DataUsePurposes are the mapping's), as connector `sf`, erasure
    deleting contacts."""
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(3, seed=60)
        connect_sandbox(sandbox, config_path, monkeypatch)
        data = yaml.safe_load(config_path.read_text())
        data["connectors"][0]["erasure"] = {"Contact": "delete"}
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        yield sandbox


def _sync(cli: Cli) -> dict[str, Any]:
    result = cli("sync", "sf", "--json")
    assert result.exit_code == 0, f"sync -> {result.exit_code}: {result.output}{result.stderr}"
    report = json.loads(result.stdout)
    assert report["status"] == "succeeded", report["error"]
    return report


def _known_at_the_hub(cli: Cli, at: datetime) -> None:
    cli.ok(
        "ledger", "record", "--email", ADDRESS, "--purpose", "email_marketing", "--status", "granted",
        "--source", "web_form", "--at", at.isoformat(), "--evidence-ref", "form:e5",
    )  # fmt: skip


def _export(cli: Cli, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "export.json"
    cli.ok("subject", "export", ADDRESS, "--format", "json", "-o", str(out))
    return dict(json.loads(out.read_text()))


def _verified(cli: Cli) -> None:
    result = cli("audit", "verify", "--json")
    assert result.exit_code == 0, f"audit verify -> {result.exit_code}: {result.output}{result.stderr}"


def _owners(config_path: Path, record_ids: list[str]) -> dict[str, str]:
    """The uid of the person each record is linked to."""
    engine = create_engine(load_config(config_path).ledger_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(crm_links.c.record_id, subjects.c.uid)
                .join(subjects, subjects.c.id == crm_links.c.subject_id)
                .where(crm_links.c.record_id.in_(record_ids))
            ).all()
    finally:
        engine.dispose()
    return {record_id: uid for record_id, uid in rows}


def _decision(config_path: Path) -> Any:
    """What `/v1/decisions` answers for the address: the ledger's ``decision_for`` (the endpoint's
    one call)."""
    ledger = open_ledger(load_config(config_path))
    try:
        return ledger.decision_for(ADDRESS, "email_marketing", "email")[1]
    finally:
        ledger.engine.dispose()


def absorb_an_individual(cli: Cli, sf: SalesforceSandbox, address: str, status: str) -> str:
    """An Individual with an email-marketing consent record (``status``) synced, then a Contact
    at ``address`` pointing to it: the Individual's person absorbed into the address holder,
    whose uid is returned."""
    individual = sf.org.create("Individual", LastName="Probe")
    sf.org.create(
        "ContactPointTypeConsent",
        {
            "Name": "Email marketing - Probe",
            "PartyId": individual,
            "DataUsePurposeId": EMAIL_MARKETING,
            "ContactPointType": "Email",
            "PrivacyConsentStatus": status,
            "CaptureDate": datetime.now(UTC) - timedelta(hours=1),
            "CaptureSource": "Preference Center",
        },
    )
    _sync(cli)
    sf.org.create("Contact", LastName="Probe", FirstName="Erin", Email=address, IndividualId=individual)
    _sync(cli)
    (entry,) = _absorbed(cli)
    return str(entry["what"]["absorbed"])


def _absorbed(cli: Cli) -> list[dict[str, Any]]:
    return [e for e in cli.json("audit", "log") if e["action"] == "subject.absorbed"]


def test_a_contact_pointing_to_an_individual_synced_before_it_is_the_address_holders(
    cli: Cli, config_path: Path, sf: SalesforceSandbox, tmp_path: Path
) -> None:
    _known_at_the_hub(cli, datetime.now(UTC) - timedelta(days=1))
    individual = sf.org.create("Individual", LastName="Probe")
    _sync(cli)  # the Individual alone: a person without an address
    contact = sf.org.create(
        "Contact", LastName="Probe", FirstName="Erin", Email=ADDRESS, IndividualId=individual
    )
    _sync(cli)

    export = _export(cli, tmp_path)
    held = {(r["object"], r["record_id"]) for r in export["crm_records"]}
    assert {("Contact", contact), ("Individual", individual)} <= held, "Art. 15: a record is not listed"
    owners = _owners(config_path, [contact, individual])
    assert set(owners.values()) == {export["subject"]}
    (entry,) = _absorbed(cli)
    assert entry["subject"] == export["subject"] and entry["what"]["absorbed"] != export["subject"]
    _verified(cli)

    cli.ok("erase", "--email", ADDRESS, "--reason", "Art. 17 request", "--yes")
    _sync(cli)
    _sync(cli)
    record = sf.org.get(contact)
    assert record is None or record["IsDeleted"], "Art. 17(2): the contact was not deleted"
    _verified(cli)


def test_a_consent_records_withdrawal_reaches_the_address_holder_when_the_individual_is_attached_later(
    cli: Cli, config_path: Path, sf: SalesforceSandbox, tmp_path: Path
) -> None:
    _known_at_the_hub(cli, datetime.now(UTC) - timedelta(days=1))
    individual = sf.org.create("Individual", LastName="Probe")
    consent = sf.org.create(
        "ContactPointTypeConsent",
        {
            "Name": "Email marketing - Probe",
            "PartyId": individual,
            "DataUsePurposeId": EMAIL_MARKETING,
            "ContactPointType": "Email",
            "PrivacyConsentStatus": "OptOut",
            "CaptureDate": datetime.now(UTC) - timedelta(hours=1),
            "CaptureSource": "Preference Center",
        },
    )
    _sync(cli)  # the Individual and its consent record: a person without an address, who said no
    contact = sf.org.create("Contact", LastName="Probe", FirstName="Erin", Email=ADDRESS)
    other = sf.org.create("Contact", LastName="Probe", FirstName="E.", Email=ADDRESS)  # a duplicate
    _sync(cli)
    shown = cli.json("subject", "show", ADDRESS)
    state = next(p for p in shown["purposes"] if (p["purpose"], p["channel"]) == ("email_marketing", "email"))
    assert state["status"] == "granted"  # the person's own yes, before the records are tied
    sf.org.update(contact, {"IndividualId": individual})  # the common pattern: attached later
    report = _sync(cli)
    assert report["counts"]["pushed"] >= 2, report["counts"]

    shown = cli.json("subject", "show", ADDRESS)
    state = next(p for p in shown["purposes"] if (p["purpose"], p["channel"]) == ("email_marketing", "email"))
    assert state["status"] == "withdrawn" and state["suppressed"], (
        "the consent record's no did not reach them"
    )
    assert _decision(config_path).suppressed, "/v1/decisions still says the person may be mailed"
    owners = _owners(config_path, [contact, other, individual, consent])
    assert set(owners.values()) == {shown["subject"]}, "the Individual and its consent record stayed apart"
    for record_id in (contact, other):  # the person's records, the one not tied to the Individual too
        assert sf.org.get(record_id)["HasOptedOutOfEmail"] is True, "the person's records were not told"
    assert sf.org.get(individual)["HasOptedOutSolicit"] is True
    (entry,) = _absorbed(cli)
    assert entry["subject"] == shown["subject"] and entry["what"]["event_fingerprints"]
    assert {r["id"] for r in entry["what"]["crm_records"]} == {individual, consent}
    _verified(cli)
    again = _sync(cli)  # our own writes read back: nothing moves
    assert again["counts"]["state_changes"] == 0 and not _absorbed(cli)[1:], again["counts"]
    _verified(cli)


def test_records_are_not_pooled_on_a_guess(cli: Cli, config_path: Path, sf: SalesforceSandbox) -> None:
    # Two address holders' contacts point to one address-less Individual: whose it is, is a guess.
    first, second = "one.holder@erase-probe.test", "two.holder@erase-probe.test"
    now = datetime.now(UTC) - timedelta(days=1)
    for address in (first, second):
        cli.ok(
            "ledger", "record", "--email", address, "--purpose", "email_marketing", "--status", "granted",
            "--source", "web_form", "--at", now.isoformat(), "--evidence-ref", "form:1",
        )  # fmt: skip
    shared = sf.org.create("Individual", LastName="Shared")
    _sync(cli)
    for address in (first, second):
        sf.org.create("Contact", LastName="Holder", Email=address, IndividualId=shared)
    # An Individual already held by an address holder is theirs: a contact of another address
    # pointing to it ties two people known by their addresses, not an address-less one.
    held = sf.org.create("Individual", LastName="Held")
    sf.org.create("Contact", LastName="Owner", Email="owner@erase-probe.test", IndividualId=held)
    _sync(cli)
    sf.org.create("Contact", LastName="Probe", Email=ADDRESS, IndividualId=held)
    _known_at_the_hub(cli, now)
    _sync(cli)

    assert _absorbed(cli) == []
    owners = _owners(config_path, [shared, held])
    people = {view["subject"] for view in (cli.json("subject", "show", a) for a in (first, second, ADDRESS))}
    assert owners[shared] not in people and owners[held] not in people | {owners[shared]}
    _verified(cli)


def test_an_individual_whose_records_showed_another_address_is_not_absorbed(
    cli: Cli, config_path: Path, sf: SalesforceSandbox
) -> None:
    # An erased person's contact points to the Individual first: whose the Individual is, the
    # erased person or the address holder, is a guess; the records stay where they are.
    erased = "erased.holder@erase-probe.test"
    now = datetime.now(UTC) - timedelta(days=1)
    cli.ok(
        "ledger", "record", "--email", erased, "--purpose", "email_marketing", "--status", "granted",
        "--source", "web_form", "--at", now.isoformat(), "--evidence-ref", "form:1",
    )  # fmt: skip
    cli.ok("erase", "--email", erased, "--reason", "Art. 17 request", "--yes")
    individual = sf.org.create("Individual", LastName="Probe")
    _sync(cli)
    first = sf.org.create("Contact", LastName="Gone", Email=erased, IndividualId=individual)
    _sync(cli)
    _known_at_the_hub(cli, now)
    second = sf.org.create("Contact", LastName="Probe", Email=ADDRESS, IndividualId=individual)
    _sync(cli)

    assert _absorbed(cli) == []
    owners = _owners(config_path, [individual, first, second])
    holder = cli.json("subject", "show", ADDRESS)["subject"]
    # Each contact is its address holder's (the erased one's by its keyed hash), whatever was read
    # first; the Individual, shared by two of them, stays a person of its own.
    assert owners[second] == holder and owners[first] != owners[second]
    assert owners[individual] not in (owners[first], holder)
    _verified(cli)


def test_a_contact_tied_to_a_strangers_individual_by_mistake_takes_no_consent_of_theirs(
    cli: Cli, config_path: Path, sf: Any
) -> None:
    # A CRM user gives Pat's contact an unrelated Individual's id, whose consent record says
    # OptIn: the Individual's person is absorbed, but only their nos would travel; Pat, with no
    # consent of their own, is not made to have consented (a merge carries nos for this reason).
    individual = sf.org.create("Individual", LastName="Stranger")
    sf.org.create(
        "ContactPointTypeConsent",
        {
            "Name": "Email marketing - Stranger",
            "PartyId": individual,
            "DataUsePurposeId": EMAIL_MARKETING,
            "ContactPointType": "Email",
            "PrivacyConsentStatus": "OptIn",
            "CaptureDate": datetime.now(UTC) - timedelta(hours=2),
            "CaptureSource": "Web",
        },
    )
    pat = "pat.holder@example.test"
    contact = sf.org.create("Contact", LastName="Holder", FirstName="Pat", Email=pat)
    _sync(cli)
    sf.org.update(contact, {"IndividualId": individual})  # the mistake
    _sync(cli)
    (state,) = [
        p for p in cli.json("subject", "show", pat)["purposes"]
        if (p["purpose"], p["channel"]) == ("email_marketing", "email")
    ]  # fmt: skip
    assert state["status"] != "granted" and state["suppressed"], state


def test_erasing_the_address_holder_erases_the_person_absorbed_into_them(
    cli: Cli, config_path: Path, sf: SalesforceSandbox
) -> None:
    # The absorbed person keeps their row and their consent history (absorption moves records,
    # never events): erased with the holder, or the history would outlive the erasure (Art. 17).
    _known_at_the_hub(cli, datetime.now(UTC) - timedelta(days=1))
    absorbed = absorb_an_individual(cli, sf, ADDRESS, "OptOut")

    cli.ok("erase", "--email", ADDRESS, "--reason", "Art. 17 request", "--yes")

    engine = create_engine(load_config(config_path).ledger_url)
    try:
        with engine.connect() as conn:
            person = conn.execute(select(subjects).where(subjects.c.uid == absorbed)).one()
            kept = conn.execute(
                select(func.count())
                .select_from(audit_details.join(audit_entries, audit_entries.c.seq == audit_details.c.seq))
                .where(
                    audit_entries.c.subject_id == person.id,
                    audit_entries.c.action != "subject.erased",  # its reason is kept, by design
                    audit_details.c.content.is_not(None),
                )
            ).scalar_one()
    finally:
        engine.dispose()
    assert person.erased_at is not None, "the absorbed person was not erased with the holder"
    assert kept == 0, f"{kept} audit details about the absorbed person outlived the erasure"
    erased = [e for e in cli.json("audit", "log") if e["action"] == "subject.erased"]
    assert absorbed in {e["subject"] for e in erased}
    _verified(cli)
