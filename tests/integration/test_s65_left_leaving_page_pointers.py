"""The page on which a person's record moves off an address: what a new record showing that
address points to (session 65 review of 6dc0598; docs/policy.md, "An address a person no longer
holds does not speak for them"). Against the Salesforce sandbox over HTTP, on SQLite and
PostgreSQL.

Alex's Contact moves off old.box@; on the same page the mailbox's new owner's Contact shows
old.box@ and points to their own Individual, not read yet, whose consent record opts in. Before,
the Individual was linked to Alex (the new Contact's grants waited for the page, its pointers did
not), and its consent record's opt-in became Alex's consent. Now the Individual is a person of
its own, as when read first or a run later; where the address turns out not to be left (another
record of Alex's still shows it), the new Contact is Alex's after all and so is its Individual.

And a new Contact on that page pointing to Alex's own Individual speaks for Alex, as it does a run
later: before, its grant was set aside on the leaving page only."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from consentsync.demo_crms import _past_this_second
from tests.conftest import Cli, running_harness
from tests.integration.test_s64_left_address_sandboxes import NEW, OLD, _ledger, _sync

MAPPINGS = Path(__file__).resolve().parents[2] / "connectors" / "consentsync_salesforce" / "mappings"
EMAIL_MARKETING = "0ZW8d00007CB5wrGAD"  # the sandbox's email marketing DataUsePurpose
# A grant the Contact mapping reads (the shipped one reads only nos from a Contact).
GRANT = """
  - purpose: profiling
    channel: email
    status:
      field: Legal_Basis__c
      direction: pull
      pull: {Consent: granted}
"""


@pytest.fixture
def sf(config_path: Path) -> Iterator[Any]:
    """The Salesforce sandbox as connector ``sf``: Contacts (with ``GRANT``), Individuals and
    their consent records, Contacts read first."""
    with running_harness("salesforce") as harness:
        contact = config_path.parent / "sf_contact.yaml"
        shipped = (MAPPINGS / "contact.yaml").read_text()
        assert "\npersonal_fields:" in shipped
        contact.write_text(shipped.replace("\npersonal_fields:", GRANT + "\npersonal_fields:", 1))
        data = yaml.safe_load(config_path.read_text())
        data["connectors"] = [
            {
                "name": "sf",
                "vendor": harness.vendor,
                "mappings": [
                    str(contact),
                    str(MAPPINGS / "individual.yaml"),
                    str(MAPPINGS / "contact_point_type_consent.yaml"),
                ],
                "settings": harness.connector_settings(),
                "signpost_lag_seconds": 0,
                "mode": "two_way",
                "push_guard": {"max_records": None, "max_share": None},
            }
        ]
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        harness.sandbox.org.seed(0)  # the org's data use purposes (EMAIL_MARKETING), no people
        yield harness


def _records(cli: Cli, email: str) -> set[str]:
    return {row["record_id"] for row in cli.json("subject", "show", email)["crm_records"]}


def _new_owners_individual(org: Any) -> tuple[str, str]:
    """The new owner's Individual, not read yet, and its consent record opting in to email."""
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
    return individual, consent


def test_the_new_owners_individual_read_on_the_leaving_page_is_not_the_former_holders(
    sf: Any, config_path: Path, cli: Cli
) -> None:
    ledger = _ledger(config_path)
    try:
        org = sf.sandbox.org
        alex = org.create("Contact", LastName="Ames", FirstName="Alex", Email=OLD)
        _sync(config_path, ledger, "sf", full=True)
        _past_this_second()
        org.update(alex, Email=NEW)
        individual, consent = _new_owners_individual(org)
        stranger = org.create("Contact", LastName="Newowner", Email=OLD, IndividualId=individual)
        _sync(config_path, ledger, "sf")  # Alex's move and the new owner's Contact: one page
        _sync(config_path, ledger, "sf")

        records = _records(cli, NEW)
        assert stranger in records  # linked by the address, its grants set aside
        assert individual not in records, "the new owner's Individual became Alex's"
        assert consent not in records
        _uid, state = ledger.decision_for(NEW, "email_marketing", "email")
        assert state.status.value != "granted", "the new owner's opt-in became Alex's consent"
    finally:
        ledger.engine.dispose()


def test_a_record_on_the_leaving_page_is_theirs_with_what_it_points_to_where_the_address_stays(
    sf: Any, config_path: Path, cli: Cli
) -> None:
    """Another Contact of Alex's still shows old.box@: the address is not left, the new Contact
    read beside the move is Alex's, its grant too, and the Individual it points to is Alex's
    (a person of its own until the page was weighed, then absorbed), with its consent record."""
    ledger = _ledger(config_path)
    try:
        org = sf.sandbox.org
        alex = org.create("Contact", LastName="Ames", FirstName="Alex", Email=OLD)
        org.create("Contact", LastName="Ames", FirstName="Alex", Email=OLD)
        _sync(config_path, ledger, "sf", full=True)
        _past_this_second()
        org.update(alex, Email=NEW)
        individual, consent = _new_owners_individual(org)
        other = org.create(
            "Contact", LastName="Ames", Email=OLD, IndividualId=individual, Legal_Basis__c="Consent"
        )
        report = _sync(config_path, ledger, "sf")
        _sync(config_path, ledger, "sf")

        assert report.counts.quarantined == 0
        assert {other, individual, consent} <= _records(cli, NEW)
        _uid, profiling = ledger.decision_for(NEW, "profiling", "email")
        assert profiling.status.value == "granted"
        _uid, marketing = ledger.decision_for(NEW, "email_marketing", "email")
        assert marketing.status.value == "granted"
    finally:
        ledger.engine.dispose()


@pytest.mark.parametrize("same_run", [True, False])
def test_a_record_pointing_to_the_holders_individual_speaks_for_them_on_the_leaving_page_too(
    sf: Any, config_path: Path, same_run: bool
) -> None:
    ledger = _ledger(config_path)
    try:
        org = sf.sandbox.org
        individual = org.create("Individual", FirstName="Alex", LastName="Ames")
        alex = org.create("Contact", LastName="Ames", FirstName="Alex", Email=OLD, IndividualId=individual)
        _sync(config_path, ledger, "sf", full=True)
        _past_this_second()
        org.update(alex, Email=NEW)
        if not same_run:
            _sync(config_path, ledger, "sf")
            _past_this_second()
        org.create(
            "Contact", LastName="Ames", FirstName="Alex", Email=OLD, IndividualId=individual,
            Legal_Basis__c="Consent",
        )  # fmt: skip
        report = _sync(config_path, ledger, "sf")

        _uid, state = ledger.decision_for(NEW, "profiling", "email")
        assert (state.status.value, report.counts.quarantined) == ("granted", 0), (
            "a record pointing to Alex's own Individual was set aside on the page of the move"
        )
    finally:
        ledger.engine.dispose()
