"""`consentsync demo` against Salesforce (registered under the entry-point group
``consentsync.demos``): the main job end to end on a fresh machine, in under a minute.

Starts the Salesforce sandbox with a seeded org, writes a temporary config, runs a full sync,
changes a few records the way users would in Salesforce (a withdrawal, a new lead with the email
of an existing contact, an objection), runs an incremental sync, and says what happened.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from consentsync.app import open_ledger, open_sync
from consentsync.config import load_config, write_starter
from consentsync.sync.engine import RunReport
from consentsync_salesforce.sandbox.server import SalesforceSandbox

MAPPINGS = ("contact.yaml", "lead.yaml", "individual.yaml", "contact_point_type_consent.yaml")
# The field each object's shipped mapping keeps in step with email marketing on email.
EMAIL_MARKETING_FIELDS = {
    "Contact": "HasOptedOutOfEmail",
    "Lead": "HasOptedOutOfEmail",
    "Individual": "HasOptedOutSolicit",
}


def find_mappings() -> Path:
    """The Salesforce connector's example mappings (package data of its connector package, found
    through its entry point: an installed wheel has them as a checkout does)."""
    from consentsync.mapping_examples import vendor_path

    return vendor_path("salesforce")


def run_demo(
    *,
    records: int = 300,
    workdir: Path | None = None,
    keep: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.monotonic()
    work = workdir or Path(tempfile.mkdtemp(prefix="consentsync-demo-"))
    summary: dict[str, Any] = {"workdir": str(work)}
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(records, seed=7)
        say(
            f"Salesforce sandbox at {sandbox.instance_url}: {sandbox.org.count('Contact')} contacts, "
            f"{sandbox.org.count('Lead')} leads, {sandbox.org.count('Individual')} individuals, "
            f"{sandbox.org.count('ContactPointTypeConsent')} consent records"
        )
        config_path = _write_config(work, sandbox)
        config = load_config(config_path)
        ledger = open_ledger(config, migrate=True)
        say(f"ledger: {config.settings.ledger.url} (in {work})")
        # Said, because the README's next step says a new connector only observes: this one is
        # set to push from its first run, which a newcomer would otherwise read as the default.
        say(
            "the demo's connector pushes from its first sync (mode: two_way, push guard off); a "
            "connector you add observes first and pushes only what you approve (README)\n"
        )

        first = _sync(config, ledger, "full sync", say, full=True)
        summary["full"] = first

        say("\nchanging the org as its users would:")
        changes = _change_org(sandbox, ledger, say)
        summary["changes"] = changes

        second = _sync(config, ledger, "incremental sync", say)
        summary["incremental"] = second

        withdrawn = changes["withdrawn_email"]
        view = ledger.subject_view(withdrawn)
        email_state = next(
            p for p in view["purposes"] if p["purpose"] == "email_marketing" and p["channel"] == "email"
        )
        say(
            f"\n{withdrawn}: email_marketing/email is {email_state['status']}, suppressed "
            f"{email_state['suppressed']} (rule {email_state['rule']}), across "
            f"{len(view['crm_records'])} Salesforce records:"
        )
        for link in view["crm_records"]:
            shown = _consent_fields(sandbox, link["object"], link["record_id"])
            say(f"  {link['object']} {link['record_id']}: {shown}")
        summary["api_calls_served"] = sandbox.total_calls
    elapsed = time.monotonic() - started
    summary["seconds"] = round(elapsed, 1)
    say(f"\nthe sandbox served {summary['api_calls_served']} API calls; the demo took {elapsed:.1f} s")
    say("look further with:")
    say(f"  consentsync --config {config_path} runs list")
    say(f"  consentsync --config {config_path} audit log --email {withdrawn}")
    say(f"  consentsync --config {config_path} audit verify")
    if not keep and workdir is None:
        say(f"(the files stay in {work}; delete the folder when done)")
    return summary


def _consent_fields(sandbox: SalesforceSandbox, object_type: str, record_id: str) -> str:
    """What a record of the person says now, in the fields the shipped mappings keep in step
    for email marketing; a consent record (about one purpose and channel, named with it) is
    evidence the mappings only read, and keeps what its capture tool wrote."""
    record = sandbox.org.get(record_id)
    field = EMAIL_MARKETING_FIELDS.get(object_type)
    if field is not None:
        return f"{field}={record[field]}"
    if object_type == "ContactPointTypeConsent":
        purpose = sandbox.org.get(record["DataUsePurposeId"])["Name"]
        return (
            f"PrivacyConsentStatus={record['PrivacyConsentStatus']} "
            f"(for {purpose} by {record['ContactPointType']}; evidence, only read: its mapping "
            "leaves consent records to the tools that capture them)"
        )
    return "(no consent field shown)"


def _write_config(work: Path, sandbox: Any) -> Path:
    config_path = work / "consentsync.yaml"
    write_starter(config_path, "sqlite:///consentsync.db")
    mapping_dir = work / "mappings"
    mapping_dir.mkdir(exist_ok=True)
    source = find_mappings()
    for name in MAPPINGS:
        shutil.copy(source / name, mapping_dir / name)
    ca = work / "sandbox-ca.pem"
    shutil.copy(sandbox.ca_cert_path, ca)
    data = yaml.safe_load(config_path.read_text())
    credentials = sandbox.credentials
    data["connectors"] = [
        {
            "name": "salesforce-demo",
            "vendor": "salesforce",
            "mappings": [f"mappings/{name}" for name in MAPPINGS],
            "settings": {
                "login_url": sandbox.login_url,
                "auth": "client_credentials",
                "client_id": credentials.client_id,
                "client_secret": "${CONSENTSYNC_DEMO_SF_SECRET}",
                "ca_bundle": str(ca),
            },
            "signpost_lag_seconds": 0,
            # Pushes straight away, to every record (a real connector starts in observe mode).
            "mode": "two_way",
            "push_guard": {"max_records": None, "max_share": None},
        }
    ]
    os.environ["CONSENTSYNC_DEMO_SF_SECRET"] = credentials.client_secret
    comments = config_path.read_text().split("\nversion: 1", 1)[0]
    config_path.write_text(comments + "\n" + yaml.safe_dump(data, sort_keys=False))
    return config_path


def _sync(
    config: Any, ledger: Any, label: str, say: Callable[[str], None], *, full: bool = False
) -> dict[str, Any]:
    engine = open_sync(config, "salesforce-demo", ledger)
    try:
        report: RunReport = engine.run(full=full)
    finally:
        engine.connector.close()
    c = report.counts
    say(
        f"{label}: {report.status}; read {c.read} records, recorded {c.evidence_recorded} consent events, "
        f"{c.state_changes} ledger changes, {c.subjects_created} people, {c.quarantined} quarantined, "
        f"{c.pushed} pushes to Salesforce, {c.api_calls} API calls"
    )
    return {"run_id": report.run_id, "status": report.status, **asdict(c)}


def _address(record: dict[str, Any]) -> str:
    return str(record.get("Email") or "").strip().lower()


def _change_org(sandbox: Any, ledger: Any, say: Callable[[str], None]) -> dict[str, Any]:
    org = sandbox.org
    everyone = [c for c in org.records("Contact") if c.get("Email")]

    # People the ledger allows email marketing (an opt-in on record), so that the withdrawal
    # changes what it decides. Not "an unticked box": a box is left as it is for a person the
    # ledger holds no evidence for (defaults are not evidence, docs/adoption.md).
    def allowed(contact: dict[str, Any]) -> bool:
        return not ledger.decision_for(_address(contact), "email_marketing", "email")[1].suppressed

    unticked = [c for c in everyone if not c.get("HasOptedOutOfEmail")] or everyone
    lead_emails = {_address(lead) for lead in org.records("Lead")}
    # Preferably a person who also exists as a Lead: the withdrawal must reach both records.
    ordered = sorted(unticked, key=lambda c: _address(c) not in lead_emails)
    target = next((c for c in ordered if allowed(c)), ordered[0])
    org.update(target["Id"], {"HasOptedOutOfEmail": True})
    say(f"  - {target['Email']} unsubscribed on Contact {target['Id']}")
    other = next(c for c in everyone if c["Id"] != target["Id"] and _address(c) not in lead_emails)
    lead_id = org.create(
        "Lead", {"LastName": other.get("LastName") or "Doe", "Company": "Demo Ltd", "Email": other["Email"]}
    )
    say(f"  - a new Lead {lead_id} with the email of Contact {other['Id']}")
    objector = next(
        (c for c in unticked if c["Id"] not in (target["Id"], other["Id"]) and allowed(c)),
        next(c for c in everyone if c["Id"] not in (target["Id"], other["Id"])),
    )
    objection = ledger.raise_objection(
        _address(objector),
        "email_marketing",
        direct_marketing=True,
        source="dpo-mailbox",
        actor="dpo",
    )
    say(
        f"  - {objector['Email']} objected to direct marketing by letter to the DPO "
        f"(objection {objection['id']}, {objection['status']})"
    )
    return {
        "withdrawn_email": _address(target),
        "withdrawn_contact": target["Id"],
        "new_lead": lead_id,
        "objector_email": _address(objector),
    }
