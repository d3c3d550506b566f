"""Write paths checked against what the vendors' APIs do (session 49): a Bulk API 2.0 job whose
creation answer was lost, or that a run cannot fill or close, is never left open; a Vtiger delete
sent again after the process was killed is done, not dead-lettered; HubSpot and SuperOffice hand
over what they applied of an update before a limit stops the run; and (a guard) a SuperOffice
erasure never writes the "Sales and service" consent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from consentsync_salesforce import SalesforceConnector
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync.sdk import Action, ConnectorError, RecordUpdate, WriteAction
from tests.connectors.against_sandbox import connector_settings, lose_answers
from tests.integration.helpers import free_port

# -- Salesforce ----------------------------------------------------------------------------------


@pytest.fixture
def salesforce() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(port=free_port()) as server:
        server.org.seed(80, seed=3)
        yield server


def _is_job_create(request: Any) -> bool:
    return request.method == "POST" and request.url.rstrip("/").endswith("/jobs/ingest")


def test_salesforce_bulk_job_whose_creation_answer_was_lost_is_taken_up_not_left_open(
    salesforce: SalesforceSandbox,
) -> None:
    """Salesforce made the job, the answer was lost. The retry must not leave that job Open
    for good (an open job is never processed, and counts against the org): it finds it (Get All
    Jobs) and uses it, so one job applies every record once and no job stays open."""
    settings = connector_settings(
        salesforce.connection_settings(), {"bulk_threshold": 50, "bulk_poll_interval": 0.05}
    )
    connector = SalesforceConnector("sf-s49", settings)
    connector.check()
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:60]]
    lost = lose_answers(connector.session, _is_job_create)
    (answers,) = list(
        connector.write_batches([RecordUpdate("Contact", i, {"Title": "bulk lost"}) for i in ids])
    )
    assert lost, "no job creation answer was lost"
    assert sorted(answers) == list(range(60)) and all(result.ok for result in answers.values())
    assert all(salesforce.org.get(i)["Title"] == "bulk lost" for i in ids)
    states = sorted(job.state for job in salesforce._jobs.values())
    assert "Open" not in states, f"a job was left open: {states}"
    assert states == ["JobComplete"], f"the records went through more than one job: {states}"
    assert salesforce.calls["bulk_create"] == 1 and salesforce.calls["bulk_list"] == 1


def test_salesforce_bulk_job_of_another_application_is_never_taken_up_nor_aborted(
    salesforce: SalesforceSandbox,
) -> None:
    """Another application on the same integration user opened a job like ours a moment before
    our creation answer was lost: which open job is ours is not known, so neither is taken up
    or aborted (their upload must not get our rows, nor be stopped); ours goes through a new
    job."""
    settings = connector_settings(
        salesforce.connection_settings(), {"bulk_threshold": 50, "bulk_poll_interval": 0.05}
    )
    spec = {"object": "Contact", "operation": "update", "contentType": "CSV", "lineEnding": "LF"}
    theirs = SalesforceConnector("other-app", settings).sf.restful("jobs/ingest", method="POST", json=spec)
    connector = SalesforceConnector("sf-s49", settings)
    connector.check()
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:60]]
    lost = lose_answers(connector.session, _is_job_create)
    (answers,) = list(connector.write_batches([RecordUpdate("Contact", i, {"Title": "ours"}) for i in ids]))
    assert lost and all(result.ok for result in answers.values())
    assert salesforce._jobs[theirs["id"]].state == "Open"  # theirs, untouched
    assert all(salesforce.org.get(i)["Title"] == "ours" for i in ids)


def test_salesforce_bulk_job_create_lists_no_jobs_when_its_answer_came(salesforce: SalesforceSandbox) -> None:
    """Get All Jobs is asked only after a lost answer; an open job of someone else's (another
    object) is never touched."""
    settings = connector_settings(
        salesforce.connection_settings(), {"bulk_threshold": 50, "bulk_poll_interval": 0.05}
    )
    connector = SalesforceConnector("sf-s49", settings)
    other = connector.sf.restful(
        "jobs/ingest", method="POST", json={"object": "Lead", "operation": "update", "contentType": "CSV"}
    )
    lost = lose_answers(connector.session, _is_job_create)
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:60]]
    (answers,) = list(connector.write_batches([RecordUpdate("Contact", i, {"Title": "bulk"}) for i in ids]))
    assert lost and all(result.ok for result in answers.values())
    assert salesforce._jobs[other["id"]].state == "Open"
    salesforce.reset_counters()
    list(connector.write_batches([RecordUpdate("Contact", i, {"Title": "again"}) for i in ids]))
    assert salesforce.calls["bulk_create"] == 1 and salesforce.calls["bulk_list"] == 0


def _refuse(session: requests.Session, match: Callable[[Any], bool]) -> list[str]:
    """Every request ``match`` takes fails before it reaches the CRM (the connection refused)."""
    refused: list[str] = []
    for adapter in list(session.adapters.values()):
        original = adapter.send

        def send(request: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if match(request):
                refused.append(str(request.url))
                raise requests.exceptions.ConnectionError("connection refused", request=request)
            return _original(request, *args, **kwargs)

        adapter.send = send  # type: ignore[method-assign]
    return refused


@pytest.mark.parametrize("step", ["upload", "close"])
def test_salesforce_bulk_job_the_run_cannot_fill_or_close_is_aborted_not_left_open(
    salesforce: SalesforceSandbox, step: str
) -> None:
    """A run that stops between creating a job and closing it (here the upload or the close
    never gets through, every attempt) must not leave the job Open: it aborts it, and the run
    stops with its own error (the rows stay pending and are sent again)."""
    settings = connector_settings(
        salesforce.connection_settings(),
        {"bulk_threshold": 50, "bulk_poll_interval": 0.05, "max_attempts": 2},
    )
    connector = SalesforceConnector("sf-s49", settings)
    connector.check()
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:60]]
    if step == "upload":
        refused = _refuse(connector.session, lambda r: r.method == "PUT" and "/batches" in r.url)
    else:
        refused = _refuse(
            connector.session, lambda r: r.method == "PATCH" and b"UploadComplete" in (r.body or b"")
        )
    with pytest.raises(ConnectorError):
        list(connector.write_batches([RecordUpdate("Contact", i, {"Title": "never"}) for i in ids]))
    assert refused, f"no {step} was refused"
    states = [job.state for job in salesforce._jobs.values()]
    assert states == ["Aborted"], f"the job was left {states}"
    assert not any(salesforce.org.get(i)["Title"] == "never" for i in ids)


# -- Vtiger --------------------------------------------------------------------------------------


def _vtiger_harness() -> Any:
    from consentsync_vtiger.sandbox.harness import SERVER_TIMEZONE, VtigerHarness
    from consentsync_vtiger.sandbox.server import VtigerCrm, VtigerSandbox

    harness = VtigerHarness()
    harness.sandbox = VtigerSandbox(
        VtigerCrm(privacy_guard=False, timezone=SERVER_TIMEZONE), port=free_port()
    )
    return harness


def test_vtiger_delete_sent_again_after_the_process_was_killed_is_done(tmp_path: Path) -> None:
    """An erasure by delete: ``consentsync sync`` is SIGKILLed after Vtiger deleted the record
    and before the ledger committed the answer. The next run sends the delete again, which
    Vtiger answers ACCESS_DENIED (a deleted id). The record is gone, as asked: the push is done
    and the link marked gone, not dead-lettered (stock 8.2.0: no deletion listing to tell)."""
    from sqlalchemy import select

    from consentsync.ledger.schema import crm_links, outbox
    from consentsync.sdk.harness import open_sync_engine, write_sync_config

    harness = _vtiger_harness()
    harness.start()
    try:
        erased = harness.create_person("erased.0@example.test")
        kept = harness.create_person("kept.0@example.test")
        config = write_sync_config(harness, tmp_path)
        data = yaml.safe_load(config.read_text())
        data["connectors"][0]["erasure"] = {"Contacts": "delete"}
        data["connectors"][0]["settings"]["read_deletions"] = False  # the stock 8.2.0's sync fails
        config.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        time.sleep(1.1)  # whole seconds: the records' second is over
        assert open_sync_engine(config).run(full=True).status == "succeeded"
        engine = open_sync_engine(config)
        engine.ledger.erase("erased.0@example.test", reason="s49")
        engine.ledger.engine.dispose()
        command = [
            str(Path(sys.executable).parent / "consentsync"),
            "--config",
            str(config),
            "sync",
            "contract",
        ]
        env = {k: v for k, v in os.environ.items() if k != "CONSENTSYNC_CONFIG"}
        killed = subprocess.run(
            command,
            env={**env, "CONSENTSYNC_FAILPOINTS": "sync.push.answered=kill@1"},
            capture_output=True,
            timeout=120,
        )
        assert killed.returncode == -9, killed.stderr[-400:]
        assert harness.sandbox.crm.get(erased) is None, "the delete was not applied before the kill"
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr[-400:]
        engine = open_sync_engine(config)
        with engine.ledger.engine.connect() as conn:
            deletes = conn.execute(
                select(outbox.c.status, outbox.c.last_error).where(outbox.c.action == "delete")
            ).all()
            gone = conn.execute(
                select(crm_links.c.record_id).where(crm_links.c.gone_at.is_not(None))
            ).scalars()
            gone_ids = list(gone)
        engine.ledger.engine.dispose()
        assert [tuple(row) for row in deletes] == [("done", None)], deletes
        assert gone_ids == [erased]
        assert harness.sandbox.crm.get(kept) is not None
    finally:
        harness.stop()


def test_vtiger_delete_of_a_record_the_user_may_not_delete_stays_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Vtiger refuses a delete of a record that is there with ACCESS_DENIED too: the record
    still reads, so the refusal stands, and Vtiger's answer for a record the user may not read
    ("Permission to read given object is denied") is never taken for a deleted one."""
    from consentsync_vtiger import VtigerConnector
    from consentsync_vtiger.sandbox import server

    harness = _vtiger_harness()
    harness.start()
    try:
        record = harness.create_person("kept.1@example.test")
        connector = VtigerConnector("vt-s49", connector_settings(harness.sandbox.connection_settings()))

        def denied(self: Any, params: Any) -> dict[str, str]:
            self._user(params)
            raise server._denied()  # Vtiger's words for a record the user may not act on

        monkeypatch.setattr(server.VtigerSandbox, "_op_delete", denied)
        (result,) = connector.write([RecordUpdate("Contacts", record, {}, WriteAction.DELETE)])
        assert not result.ok and result.error_code == "ACCESS_DENIED"
        monkeypatch.setattr(server.VtigerSandbox, "_op_retrieve", denied)
        (hidden,) = connector.write([RecordUpdate("Contacts", record, {}, WriteAction.DELETE)])
        assert not hidden.ok and hidden.error_code == "ACCESS_DENIED", (
            "an unreadable record taken for deleted"
        )
        assert harness.sandbox.crm.get(record) is not None
    finally:
        harness.stop()


# -- HubSpot -------------------------------------------------------------------------------------


def test_hubspot_limit_reached_mid_group_hands_over_the_unsubscribes_already_applied() -> None:
    """An update with properties and a subscription change: the subscription calls go first,
    one per contact, and the properties follow in one batch update. When the daily limit stops
    the run after HubSpot applied some unsubscribes (which its API can never undo), those
    updates must be answered before the error (not done: their properties were not written),
    or the ledger never learns what HubSpot did. Sent again, each update completes."""
    from consentsync_hubspot import HubSpotConnector
    from consentsync_hubspot.connector import INTERRUPTED
    from consentsync_hubspot.sandbox.harness import HubSpotHarness

    harness = HubSpotHarness(port=free_port())
    harness.start()
    try:
        ids = harness.seed(3)
        portal = harness.sandbox.portal
        basis = "Freely given consent from contact"
        updates = [
            RecordUpdate("contacts", i, {"hs_legal_basis": basis, "subscription_1001": "UNSUBSCRIBED"})
            for i in ids
        ]
        connector = HubSpotConnector("hs-s49", harness.connector_settings())
        connector.describe("contacts")
        # The addresses' batch read and two unsubscribes get through, then the limit.
        harness.sandbox.faults.update(request_limit_after=3)
        answered: dict[int, Any] = {}
        with pytest.raises(ConnectorError) as raised:
            for batch in connector.write_batches(updates):
                answered.update(batch)
        assert raised.value.action is Action.RATE_LIMITED

        def unsubscribed(record_id: str) -> bool:
            status = portal.status(portal.get(record_id)["email"], "1001")
            return status is not None and status.status == "UNSUBSCRIBED"

        applied = {i for i, record_id in enumerate(ids) if unsubscribed(record_id)}
        assert applied, "no unsubscribe went through before the limit"
        assert applied <= set(answered), f"applied {sorted(applied)}, answered {sorted(answered)}"
        for position in applied:
            result = answered[position]
            assert (result.ok, result.error_code, result.retryable) == (False, INTERRUPTED, True)
            assert portal.get(ids[position]).get("hs_legal_basis") != basis
        harness.sandbox.faults.update(request_limit_after=None)
        again = HubSpotConnector("hs-s49", harness.connector_settings()).write(updates)
        assert all(result.ok for result in again)
        assert all(unsubscribed(i) and portal.get(i)["hs_legal_basis"] == basis for i in ids)
    finally:
        harness.stop()


# -- SuperOffice ---------------------------------------------------------------------------------


def test_superoffice_limit_reached_inside_an_update_hands_over_what_was_applied() -> None:
    """SuperOffice has no batch call: an anonymise is RemoveConsent per purpose, then one PATCH
    of the person. When the limit stops the run after the consent was removed and before the
    PATCH, that update is answered (not done, sent again) before the error: what SuperOffice
    applied is never unknown to the ledger. An update none of whose calls went through is not
    answered (it stays pending as it was)."""
    from consentsync_superoffice import SuperOfficeConnector
    from consentsync_superoffice.connector import INTERRUPTED
    from consentsync_superoffice.sandbox.harness import SuperOfficeHarness
    from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
    from consentsync_superoffice.sandbox.tenant import SuperOfficeTenant

    harness = SuperOfficeHarness()
    harness.sandbox = SuperOfficeSandbox(SuperOfficeTenant(), port=free_port())
    harness.start()
    try:
        people = [harness.create_person(f"anon.{n}@example.test") for n in range(2)]
        tenant = harness.tenant
        connector = SuperOfficeConnector("so-s49", harness.connector_settings())
        connector.check()
        erase = {"LegalBase_EMARKETING": None, "Lastname": "Erased", "Email": None}
        # The first person's RemoveConsent gets through, then the limit.
        harness.sandbox.faults.update(request_limit_after=1)
        answered: dict[int, Any] = {}
        with pytest.raises(ConnectorError) as raised:
            for batch in connector.write_batches([RecordUpdate("Person", p, erase) for p in people]):
                answered.update(batch)
        assert raised.value.action is Action.RATE_LIMITED
        first = tenant.consent(int(people[0]), "EMARKETING")
        assert first is not None and first.legal_base.key == tenant.withdrawn_legal_base, "not removed"
        assert tenant.persons[int(people[0])].last_name != "Erased"
        assert list(answered) == [0], f"answered {sorted(answered)}"
        assert (answered[0].ok, answered[0].error_code, answered[0].retryable) == (False, INTERRUPTED, True)
        harness.sandbox.faults.update(request_limit_after=None)
        again = SuperOfficeConnector("so-s49", harness.connector_settings())
        assert all(r.ok for r in again.write([RecordUpdate("Person", p, erase) for p in people]))
        assert all(tenant.persons[int(p)].last_name == "Erased" for p in people)
    finally:
        harness.stop()


@pytest.mark.parametrize("action", ["suppress", "anonymise"])
def test_superoffice_erasure_writes_no_consent_to_store_and_removes_e_marketing(
    tmp_path: Path, action: str
) -> None:
    """Guard (candidate checked, not a defect): an erasure is pushed as RemoveConsent of the
    E-marketing consent (SuperOffice marks it Withdrawn) and, for anonymise, one PATCH of the
    person; it never SetConsents the "Sales and service" (STORE) purpose, whose legal basis
    stays as the tenant holds it (restricted or erased data is for SuperOffice's own Privacy
    tools: person.yaml)."""
    from consentsync_superoffice.sandbox.harness import SuperOfficeHarness
    from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
    from consentsync_superoffice.sandbox.tenant import SuperOfficeTenant

    from consentsync.sdk.harness import open_sync_engine, write_sync_config

    harness = SuperOfficeHarness()
    harness.sandbox = SuperOfficeSandbox(SuperOfficeTenant(), port=free_port())
    harness.start()
    try:
        person = int(harness.create_person("erased.so@example.test"))
        tenant = harness.tenant
        store_before = tenant.consent(person, "STORE")
        config = write_sync_config(harness, tmp_path)
        data = yaml.safe_load(config.read_text())
        data["connectors"][0]["erasure"] = {"Person": action}
        config.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        time.sleep(1.1)
        assert open_sync_engine(config).run(full=True).status == "succeeded"
        engine = open_sync_engine(config)
        engine.ledger.erase("erased.so@example.test", reason="s49")
        engine.ledger.engine.dispose()
        time.sleep(1.1)
        harness.sandbox.reset_counters()
        report = open_sync_engine(config).run()
        assert report.status == "succeeded" and report.counts.pushed == 1, report.counts
        assert harness.sandbox.calls["set_consent"] == 0
        assert harness.sandbox.calls["remove_consent"] == 1
        assert harness.sandbox.calls["person_patch"] == (1 if action == "anonymise" else 0)
        emarketing = tenant.consent(person, "EMARKETING")
        assert emarketing is not None and emarketing.legal_base.key == tenant.withdrawn_legal_base
        store = tenant.consent(person, "STORE")
        assert store is not None and store_before is not None
        assert store.legal_base.key == store_before.legal_base.key
    finally:
        harness.stop()
