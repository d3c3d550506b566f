"""An org's record-triggered automation (a flow, an Apex trigger) that sets a field in the same
save as consentsync's write runs as the integration user: the record's LastModifiedById and stamps
are those of our save, nothing tells its change from a person's. A flow ticking Do Not Call when
consentsync ticked Email Opt Out was read on the next sync as the person's withdrawal from phone
calls, and carried to their other records. With ``read_back_writes`` the connector reads the
written records right before and right after each write: what else our own save changed is
ours. A person's change before our save, or a save of theirs after it (a site or portal user's
too), stays theirs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync.ledger.service import Ledger
from consentsync.sync.engine import RunReport, SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import shipped_engine
from tests.sandbox.serving import serve_seeded

EMAIL = "pat@example.test"
PHONE = ("service", "phone")
READ_BACK = {"read_back_writes": True}


@pytest.fixture
def salesforce() -> Iterator[SalesforceSandbox]:
    """An org with one person on a Contact and a Lead, and a flow: a Contact whose Email Opt Out
    is ticked gets Do Not Call ticked in the same save."""

    def person(sandbox: SalesforceSandbox) -> None:
        sandbox.org.create("Contact", LastName="Pat", Email=EMAIL)
        sandbox.org.create("Lead", LastName="Pat", Company="Acme", Email=EMAIL)
        sandbox.org.automate("Contact", "HasOptedOutOfEmail", True, DoNotCall=True)

    yield from serve_seeded(SalesforceSandbox(), person)


def _engine(ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox, **settings: Any) -> SyncEngine:
    options = SyncOptions(batch_size=25, signpost_lag_seconds=0)
    mappings = ["contact.yaml", "lead.yaml"]
    return shipped_engine(ledger, config_path, salesforce, "sf", "salesforce", mappings, settings, options)


def _run(ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox, **settings: Any) -> RunReport:
    report = _engine(ledger, config_path, salesforce, **settings).run()
    assert report.status == "succeeded", report.error
    return report


def _one(salesforce: SalesforceSandbox, sobject: str) -> str:
    (record,) = salesforce.org.records(sobject)
    return str(record["Id"])


def _nos(ledger: Ledger) -> dict[tuple[str, str], list[str]]:
    """(purpose, channel) -> the sources of the person's withdrawals, as the ledger holds them."""
    found: dict[tuple[str, str], list[str]] = {}
    for item in ledger.subject_view(EMAIL)["history"]:
        if item["status"] == "withdrawn":
            found.setdefault((item["purpose"], item["channel"]), []).append(item["evidence_ref"])
    return found


def _opt_out_on_the_lead(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox, **settings: Any
) -> None:
    """The person (through a site user) ticks Email Opt Out on their lead; the run reads it and
    ticks it on their contact, where the flow ticks Do Not Call in the same save."""
    _run(ledger, config_path, salesforce, **settings)
    org = salesforce.org
    with org.acting_as(org.new_user()):
        org.update(_one(salesforce, "Lead"), HasOptedOutOfEmail=True)
    report = _run(ledger, config_path, salesforce, **settings)
    assert report.counts.pushed == 1, report.counts
    contact = org.get(_one(salesforce, "Contact"))
    assert contact is not None and contact["HasOptedOutOfEmail"] and contact["DoNotCall"]
    assert contact["LastModifiedById"] == org.user_id  # the flow ran in our save


@SQLITE_ONLY  # the connector's rule; the ledger's SQL is the same on PostgreSQL
def test_what_the_orgs_flow_set_in_our_save_is_no_withdrawal_of_the_person(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    _opt_out_on_the_lead(ledger, config_path, salesforce, **READ_BACK)
    report = _run(ledger, config_path, salesforce, **READ_BACK)
    assert report.counts.evidence_recorded == 0 and report.counts.pushed == 0, report.counts
    assert PHONE not in _nos(ledger), _nos(ledger)
    lead = salesforce.org.get(_one(salesforce, "Lead"))
    assert lead is not None and not lead["DoNotCall"], "the flow's tick was carried to the lead"
    assert list(_nos(ledger)) == [("email_marketing", "email")]


@SQLITE_ONLY
def test_a_persons_later_edit_after_the_flow_still_counts(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    """The flow's tick is ours; the person clearing it, then ticking it again through a portal
    user (a save of another user, later), is theirs."""
    _opt_out_on_the_lead(ledger, config_path, salesforce, **READ_BACK)
    _run(ledger, config_path, salesforce, **READ_BACK)
    org, contact = salesforce.org, _one(salesforce, "Contact")
    portal = org.new_user()
    with org.acting_as(portal):
        org.update(contact, DoNotCall=False)
    _run(ledger, config_path, salesforce, **READ_BACK)
    assert PHONE not in _nos(ledger)
    with org.acting_as(portal):
        org.update(contact, DoNotCall=True)
    _run(ledger, config_path, salesforce, **READ_BACK)
    assert _nos(ledger).get(PHONE) == [f"Contact/{contact}"], _nos(ledger)


def _before_the_write(engine: SyncEngine, act: Callable[[], None]) -> None:
    """``act`` as the run starts to write, after its reads (a person's save in between)."""
    connector: Any = engine.connector
    write_batches = connector.write_batches

    def acted(updates: Any) -> Any:
        act()
        return write_batches(updates)

    connector.write_batches = acted


@SQLITE_ONLY
def test_a_persons_change_made_before_our_save_stays_theirs(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    """Do Not Call ticked by the person (a site user) after the run read the contact and before
    it wrote to it: our save, and the flow's tick of the same box, leave it the person's."""
    _run(ledger, config_path, salesforce, **READ_BACK)
    org, contact = salesforce.org, _one(salesforce, "Contact")
    with org.acting_as(org.new_user()):
        org.update(_one(salesforce, "Lead"), HasOptedOutOfEmail=True)

    def site_user_ticks_do_not_call() -> None:
        with org.acting_as(org.new_user()):
            org.update(contact, DoNotCall=True)

    engine = _engine(ledger, config_path, salesforce, **READ_BACK)
    _before_the_write(engine, site_user_ticks_do_not_call)
    assert engine.run().counts.pushed == 1
    _run(ledger, config_path, salesforce, **READ_BACK)
    assert _nos(ledger).get(PHONE) == [f"Contact/{contact}"], _nos(ledger)


@SQLITE_ONLY
@pytest.mark.parametrize("who", ["a sales user", "the integration user, later"])
def test_a_save_right_after_ours_by_someone_else_or_later_claims_nothing_for_us(
    ledger: Ledger,
    config_path: Path,
    salesforce: SalesforceSandbox,
    monkeypatch: pytest.MonkeyPatch,
    who: str,
) -> None:
    """The contact saved again between our write and its read back, by another user, or by the
    integration user (another application on it) after Salesforce answered our write: whose
    change Do Not Call is can no longer be told, and it is read as a no (a false no, never a
    lost one)."""
    from consentsync_salesforce import connector as sf_connector

    _run(ledger, config_path, salesforce, **READ_BACK)
    org, contact = salesforce.org, _one(salesforce, "Contact")
    with org.acting_as(org.new_user()):
        org.update(_one(salesforce, "Lead"), HasOptedOutOfEmail=True)
    save_chunk = sf_connector.SalesforceConnector._save_chunk
    real = org.clock
    later = real()

    def saved_then_saved_again(self: Any, *args: Any) -> Any:
        nonlocal later
        answers = save_chunk(self, *args)
        if who == "a sales user":
            with org.acting_as(org.new_user()):
                org.touch(contact)
        else:
            later = real().replace(microsecond=0) + timedelta(seconds=1)  # past the answer's Date
            org.clock = lambda: later
            org.touch(contact)
            org.clock = real
        return answers

    monkeypatch.setattr(sf_connector.SalesforceConnector, "_save_chunk", saved_then_saved_again)
    assert _run(ledger, config_path, salesforce, **READ_BACK).counts.pushed == 1
    monkeypatch.undo()
    while who != "a sales user" and real() <= later:  # the next run's signpost is past that save
        time.sleep(0.05)
    _run(ledger, config_path, salesforce, **READ_BACK)
    assert _nos(ledger).get(PHONE) == [f"Contact/{contact}"], _nos(ledger)


@SQLITE_ONLY
def test_without_read_back_the_flows_tick_is_read_as_the_persons_no(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    """The default (no call more for a write): the false no the setting is there for."""
    _opt_out_on_the_lead(ledger, config_path, salesforce)
    _run(ledger, config_path, salesforce)
    assert _nos(ledger).get(PHONE) == [f"Contact/{_one(salesforce, 'Contact')}"], _nos(ledger)


@SQLITE_ONLY
def test_read_back_costs_a_query_before_and_after_each_write_call(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    _run(ledger, config_path, salesforce, **READ_BACK)
    org = salesforce.org
    with org.acting_as(org.new_user()):
        org.update(_one(salesforce, "Lead"), HasOptedOutOfEmail=True)
    engine = _engine(ledger, config_path, salesforce, **READ_BACK)
    assert engine.run().counts.pushed == 1
    usage = engine.connector.usage.per_endpoint
    assert (usage.get("composite"), usage.get("query")) == (1, 2 + 2), usage  # 2 reads, 2 read backs


def test_read_back_needs_a_login_that_names_the_user(salesforce: SalesforceSandbox) -> None:
    from consentsync_salesforce import SalesforceConnector

    with pytest.raises(ValueError, match="read_back_writes needs a login that names the integration user"):
        SalesforceConnector(
            "sf",
            {"auth": "token", "access_token": "x", "instance_url": salesforce.instance_url, **READ_BACK},
        )


def test_the_sandbox_runs_a_record_triggered_automation_in_the_save_that_fires_it(
    salesforce: SalesforceSandbox,
) -> None:
    """As in Salesforce: the automation's change is in the save that fired it (its stamps, its
    user: the API's integration user for a write through the API), and fires only on the change
    its entry condition names; a helper acting as another user saves as that user."""
    org, contact = salesforce.org, _one(salesforce, "Contact")
    site_user = org.new_user()
    with org.acting_as(site_user):
        org.update(contact, DoNotCall=False)
    edited = org.get(contact)
    assert edited is not None and edited["LastModifiedById"] == site_user
    record = {"attributes": {"type": "Contact"}, "id": contact, "HasOptedOutOfEmail": True}
    answer = salesforce.requests_session().patch(
        f"{salesforce.data_url()}/composite/sobjects",
        json={"allOrNone": False, "records": [record]},
        headers={"Authorization": f"Bearer {salesforce.issue_token()}"},
    )
    assert answer.json() == [{"id": contact, "success": True, "errors": []}]
    saved = org.get(contact)
    assert saved is not None and saved["DoNotCall"] and saved["LastModifiedById"] == org.user_id
    assert saved["LastModifiedDate"] == saved["SystemModstamp"]
    with org.acting_as(site_user):
        org.update(contact, DoNotCall=False, HasOptedOutOfEmail=True)  # already ticked: no change
    after = org.get(contact)
    assert after is not None and not after["DoNotCall"] and after["LastModifiedById"] == site_user
