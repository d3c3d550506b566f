"""A CRM whose clock runs behind ours no longer loses a later withdrawal to an earlier consent
(session 68 black-box finding). End to end: `consentsync ledger record`, `sync`, `audit verify`
through the CLI, against a real sandbox over HTTPS (SuperOffice, as the audit found it, and
Salesforce's consent records), on SQLite and PostgreSQL.

The defect: the CRM's clock ran 120 s (also 5 s) behind ours. A web-form consent was recorded at
our 12:00:00; the person withdrew in the CRM at our 12:01:00, which the CRM stamped with its own
clock, 11:59:00. Precedence (latest event time wins) ranked the withdrawal before the consent: the
consent stayed in force, the withdrawal was lost and the CRM kept (or was pushed back to) opted
in. Now the sync records with each value it reads while the CRM's answers show its clock behind
how far behind it may run (``Evidence.clock_lag``), and a no counts up to that much later than
stamped, never after it was read: the withdrawal wins, the CRM is opted out, a sync reading it
again records nothing new (the fingerprint leaves the lag out) and the audit verifies. With the
CRM's clock in step nothing changes: a consent given after the no still wins.
docs/policy.md, "A no stamped by a clock behind ours"."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import iso
from consentsync.ledger.schema import consent_events
from tests.conftest import Cli, running_harness

MAPPINGS = Path(__file__).resolve().parents[2] / "connectors"
EMAIL = "behind.clock@example.test"
# The id the Salesforce mapping gives email marketing: the sandbox's first DataUsePurpose.
SALESFORCE_EMAIL_MARKETING = "0ZW8d00007CB5wrGAD"


@dataclass(frozen=True)
class Vendor:
    """How a person is opted in, withdraws and is seen opted out in one CRM's sandbox."""

    name: str
    mappings: tuple[str, ...]
    # Makes the person, opted in to email marketing; returns the records to look at afterwards.
    person: Callable[[Any], dict[str, str]]
    # The person withdraws in the CRM, which stamps the change with its own clock.
    withdraw: Callable[[Any, dict[str, str]], None]
    opted_out: Callable[[Any, dict[str, str]], bool]
    # Whether the mapping writes an opt-in back (SuperOffice's never invents a consent).
    writes_a_yes: bool


def _superoffice_person(harness: Any) -> dict[str, str]:
    return {"person": harness.create_person(EMAIL)}  # E-marketing on consent


def _superoffice_withdraw(harness: Any, records: dict[str, str]) -> None:
    harness.opt_out(records["person"])  # SetConsent Withdrawn: Updated_EMARKETING, its clock


def _superoffice_opted_out(harness: Any, records: dict[str, str]) -> bool:
    return bool(harness.read_opted_out(records["person"]))


def _salesforce_person(harness: Any) -> dict[str, str]:
    """Salesforce's consent management: an Individual with an email-marketing consent record
    opting in, and the person's Contact pointing to the Individual."""
    org = harness.sandbox.org
    purpose = org.create("DataUsePurpose", Name="Email Marketing", CanDataSubjectOptOut=True)
    assert purpose == SALESFORCE_EMAIL_MARKETING, purpose
    individual = org.create("Individual", FirstName="Kim", LastName="Lee", HasOptedOutSolicit=False)
    captured = harness.sandbox.now() - timedelta(minutes=10)
    consent = org.create(
        "ContactPointTypeConsent",
        Name="em",
        PartyId=individual,
        ContactPointType="Email",
        CaptureContactPointType="Email",
        DataUsePurposeId=SALESFORCE_EMAIL_MARKETING,
        PrivacyConsentStatus="OptIn",
        CaptureDate=captured,
        CaptureSource="Web",
        EffectiveFrom=captured,
    )
    contact = org.create(
        "Contact", LastName="Lee", Email=EMAIL, IndividualId=individual, HasOptedOutOfEmail=False
    )
    return {"individual": individual, "consent": consent, "contact": contact}


def _salesforce_withdraw(harness: Any, records: dict[str, str]) -> None:
    # As a consent flow records an opt-out: captured now, by the org's clock (the sandbox's,
    # skewed as the CRM's is).
    harness.sandbox.org.update(
        records["consent"], PrivacyConsentStatus="OptOut", CaptureDate=harness.sandbox.now()
    )


def _salesforce_opted_out(harness: Any, records: dict[str, str]) -> bool:
    org = harness.sandbox.org
    contact, individual = org.get(records["contact"]), org.get(records["individual"])
    assert contact is not None and individual is not None
    return bool(contact["HasOptedOutOfEmail"]) and bool(individual["HasOptedOutSolicit"])


VENDORS = {
    "superoffice": Vendor(
        "superoffice",
        ("consentsync_superoffice/mappings/person.yaml",),
        _superoffice_person,
        _superoffice_withdraw,
        _superoffice_opted_out,
        writes_a_yes=False,
    ),
    "salesforce": Vendor(
        "salesforce",
        tuple(
            f"consentsync_salesforce/mappings/{name}.yaml"
            for name in ("contact", "individual", "contact_point_type_consent")
        ),
        _salesforce_person,
        _salesforce_withdraw,
        _salesforce_opted_out,
        writes_a_yes=True,
    ),
}


@contextmanager
def _crm(config_path: Path, vendor: Vendor) -> Iterator[Any]:
    """The vendor's sandbox running, configured as connector ``crm`` (two-way, no push guard)."""
    with running_harness(vendor.name) as harness:
        data = yaml.safe_load(config_path.read_text())
        data["connectors"] = [
            {
                "name": "crm",
                "vendor": vendor.name,
                "mappings": [str(MAPPINGS / path) for path in vendor.mappings],
                "settings": harness.connector_settings(),
                # The sandboxes stamp whole seconds and the test syncs just after a change.
                "signpost_lag_seconds": 0,
                "mode": "two_way",
                "push_guard": {"max_records": None, "max_share": None},
            }
        ]
        config_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        yield harness


def _sync(cli: Cli, *more: str) -> dict[str, Any]:
    time.sleep(1.1)  # past the second of the last change: the CRMs stamp whole seconds
    report: dict[str, Any] = cli.json("sync", "crm", *more)
    assert report["status"] == "succeeded", report
    return report


def _web_form_consent(cli: Cli, at: datetime) -> None:
    cli.ok(
        "ledger", "record", "--email", EMAIL, "--purpose", "email_marketing", "--status", "granted",
        "--source", "web_form", "--at", iso(at), "--notice-version", "v1", "--evidence-ref", "form:1",
    )  # fmt: skip


def _marketing(cli: Cli) -> dict[str, Any]:
    view = cli.json("subject", "show", EMAIL)
    (state,) = (p for p in view["purposes"] if (p["purpose"], p["channel"]) == ("email_marketing", "email"))
    return dict(state)


def _events(config_path: Path) -> int:
    ledger = open_ledger(load_config(config_path))
    try:
        with ledger.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(consent_events)).scalar_one())
    finally:
        ledger.engine.dispose()


def _settled(cli: Cli, config_path: Path) -> None:
    """Read again (an ordinary run and a full one): nothing new is recorded or pushed, and the
    audit chain and the state rows verify."""
    events = _events(config_path)
    for more in ((), ("--full",)):
        counts = _sync(cli, *more)["counts"]
        assert (counts["evidence_recorded"], counts["pushes_enqueued"]) == (0, 0), (more, counts)
    assert _events(config_path) == events, "a value read again was recorded as a new event"
    verified = cli("audit", "verify")
    assert verified.exit_code == 0, verified.output + verified.stderr


@pytest.mark.parametrize("vendor", sorted(VENDORS))
@pytest.mark.parametrize("behind", [120, 5], ids=["120s_behind", "5s_behind"])
def test_a_withdrawal_stamped_by_a_crm_clock_behind_ours_beats_the_consent_it_followed(
    cli: Cli, config_path: Path, vendor: str, behind: int
) -> None:
    crm = VENDORS[vendor]
    with _crm(config_path, crm) as harness:
        harness.skew_clock(timedelta(seconds=-behind))
        records = crm.person(harness)
        _sync(cli)  # the person known, opted in in the CRM
        assert not crm.opted_out(harness, records)
        consented = datetime.now(UTC)
        _web_form_consent(cli, consented)
        time.sleep(2)
        # The person withdraws in the CRM 2 s after the consent; its clock stamps the withdrawal
        # `behind` s earlier: before the consent.
        crm.withdraw(harness, records)
        assert harness.sandbox.now() < consented + timedelta(seconds=3)
        _sync(cli)
        state = _marketing(cli)
        assert (state["status"], state["suppressed"]) == ("withdrawn", True), (
            f"the withdrawal made after the web-form consent was lost: the CRM's clock runs {behind} s "
            f"behind ours and stamped it before the consent ({state})"
        )
        _sync(cli)  # the pushes read back
        assert crm.opted_out(harness, records), "the CRM was left (or put back) opted in"
        _settled(cli, config_path)
        assert _marketing(cli)["status"] == "withdrawn"
        assert crm.opted_out(harness, records)


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_with_the_crms_clock_in_step_a_consent_given_after_the_withdrawal_still_wins(
    cli: Cli, config_path: Path, vendor: str
) -> None:
    """Nothing changes where no lag is measured: a web-form consent 3 s after the CRM's no
    reverses it, as before."""
    crm = VENDORS[vendor]
    with _crm(config_path, crm) as harness:
        records = crm.person(harness)
        _sync(cli)
        withdrawn_at = harness.sandbox.now()
        crm.withdraw(harness, records)
        time.sleep(3)
        consented = datetime.now(UTC)
        assert consented >= withdrawn_at + timedelta(seconds=3)
        _web_form_consent(cli, consented)
        _sync(cli)
        state = _marketing(cli)
        assert (state["status"], state["suppressed"], state["rule"]) == (
            "granted",
            False,
            "trusted_opt_in_reverses",
        ), state
        _sync(cli)
        assert crm.opted_out(harness, records) is not crm.writes_a_yes
        _settled(cli, config_path)
        assert _marketing(cli)["status"] == "granted"
