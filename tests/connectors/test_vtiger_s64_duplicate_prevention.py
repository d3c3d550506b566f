"""Vtiger's Duplicate Prevention (7.2+, CheckDuplicateHandler on vtiger.entity.beforesave) refuses
every save, edits included, of a record whose current values in the module's checked fields equal
another live record's: webservice.php answers it {"code": 0, "message": "Duplicates detected"}.
Such a refusal, like a workflow failing one record's save, is that record's: reported for it, the
other records of the write carry on; the sandbox models the rule as Vtiger runs it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_vtiger import VtigerConnector
from consentsync_vtiger.sandbox.server import VtigerCrm, VtigerError, VtigerSandbox
from sqlalchemy import select

from consentsync.ledger.schema import outbox
from consentsync.ledger.service import Ledger
from consentsync.sdk import ConnectorError, RecordUpdate, WriteResult
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.connectors.against_sandbox import connector_settings
from tests.integration.helpers import shipped_engine
from tests.sandbox.test_vtiger_sandbox import Client

# What the shipped contacts mapping's `anonymise` writes (personal_fields), with the flag.
ANONYMISED = {
    "firstname": None,
    "lastname": "Erased",
    "email": None,
    "secondaryemail": None,
    "phone": None,
    "mobile": None,
    "emailoptout": True,
}


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    with VtigerSandbox() as server:
        yield server


def _connector(sandbox: VtigerSandbox) -> VtigerConnector:
    return VtigerConnector("vt-dup", connector_settings(sandbox.connection_settings(), {"timeout": 5}))


def _write(connector: VtigerConnector, updates: list[RecordUpdate]) -> list[WriteResult]:
    """Every answer of one write, in order (raises what the write raises)."""
    answers: dict[int, WriteResult] = {}
    for batch in connector.write_batches(updates):
        answers.update(batch)
    return [answers[position] for position in sorted(answers)]


def _refused_as_duplicate(result: WriteResult) -> None:
    assert not result.ok and result.error_code == "DUPLICATES_DETECTED" and not result.retryable
    assert not result.gone
    message = result.message or ""
    assert "Duplicate Prevention" in message and "code 0" in message
    assert "Module Layouts & Fields > Duplicate Prevention" in message and "outbox retry" in message


# -- the connector -----------------------------------------------------------------------------


def test_an_opt_out_on_one_of_two_contacts_sharing_an_email_is_that_records_failure(
    sandbox: VtigerSandbox,
) -> None:
    """Two contacts share an address (made before an administrator turned the Email rule on):
    every save of either is refused, an opt-out included. The refusal is that contact's; the
    opt-out of another person after it in the same write still reaches Vtiger."""
    crm = sandbox.crm
    first = crm.create("Contacts", lastname="Ivanova", email="olga.ivanova@example.test")
    second = crm.create("Contacts", lastname="Ivanova", email="Olga.Ivanova@example.test")
    other = crm.create("Contacts", lastname="Other", email="other.person@example.test")
    crm.prevent_duplicates("Contacts", "email")
    results = _write(
        _connector(sandbox),
        [
            RecordUpdate("Contacts", first, {"emailoptout": True}),
            RecordUpdate("Contacts", second, {"emailoptout": True}),
            RecordUpdate("Contacts", other, {"emailoptout": True}),
        ],
    )
    _refused_as_duplicate(results[0])
    _refused_as_duplicate(results[1])
    assert results[2].ok
    assert crm.get(other)["emailoptout"] == "1"  # type: ignore[index]
    assert "1" not in (crm.get(first)["emailoptout"], crm.get(second)["emailoptout"])  # type: ignore[index]
    assert sandbox.calls["revise"] == 3


def test_a_second_anonymise_under_a_first_and_last_name_rule_is_that_records_failure(
    sandbox: VtigerSandbox,
) -> None:
    """The common Contacts rule (First Name + Last Name): the first erased contact becomes
    ("", "Erased"), and the second anonymise would make its twin. Refused for that contact only:
    the writes after it are made."""
    crm = sandbox.crm
    anna = crm.create("Contacts", firstname="Anna", lastname="Roth", email="anna.roth@example.test")
    bert = crm.create("Contacts", firstname="Bert", lastname="Kuhn", email="bert.kuhn@example.test")
    cara = crm.create("Contacts", firstname="Cara", lastname="Diaz", email="cara.diaz@example.test")
    crm.prevent_duplicates("Contacts", "firstname", "lastname")
    results = _write(
        _connector(sandbox),
        [
            RecordUpdate("Contacts", anna, ANONYMISED),
            RecordUpdate("Contacts", bert, ANONYMISED),
            RecordUpdate("Contacts", cara, {"emailoptout": True, "donotcall": True}),
        ],
    )
    assert results[0].ok
    _refused_as_duplicate(results[1])
    assert results[2].ok
    assert crm.get(anna)["lastname"] == "Erased"  # type: ignore[index]
    kept = crm.get(bert)
    assert kept is not None and (kept["firstname"], kept["email"]) == ("Bert", "bert.kuhn@example.test")
    written = crm.get(cara)
    assert written is not None and (written["emailoptout"], written["donotcall"]) == ("1", "1")


def test_a_workflow_failing_one_records_save_is_retryable_and_the_others_carry_on(
    sandbox: VtigerSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception a workflow or event handler throws on one record's save reaches the client
    as INTERNAL_SERVER_ERROR "Unknown Error while processing request" (webservice.php's catch of
    Exception): that record's, sent again on a later run; the rest are written. A refusal with a
    code the connector does not know is that record's too, not retried."""
    crm = sandbox.crm
    ids = [crm.create("Contacts", lastname=f"P{i}", email=f"p{i}@example.test") for i in range(4)]
    original = VtigerCrm.revise

    def revise(self: VtigerCrm, wsid: str, values: Any = None, **more: Any) -> dict[str, str]:
        if wsid == ids[1]:
            raise RuntimeError("a workflow's custom function threw")
        if wsid == ids[2]:
            raise VtigerError("SOMETHING_NEW", "a refusal nobody documented")
        return original(self, wsid, values, **more)

    monkeypatch.setattr(VtigerCrm, "revise", revise)
    results = _write(_connector(sandbox), [RecordUpdate("Contacts", i, {"emailoptout": True}) for i in ids])
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[1].error_code == "INTERNAL_SERVER_ERROR" and results[1].retryable
    assert "workflow or event handler" in (results[1].message or "")
    assert results[2].error_code == "SOMETHING_NEW" and not results[2].retryable
    assert sandbox.calls["revise"] == 4  # one call each: none retried within the run


def test_every_save_failing_stops_the_write_after_a_few(
    sandbox: VtigerSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An install failing every save (a broken workflow on the module) is no one record's: after
    five records in a row the write stops, and the rest wait for the next run instead of each
    spending an attempt."""
    crm = sandbox.crm
    ids = [crm.create("Contacts", lastname=f"Q{i}", email=f"q{i}@example.test") for i in range(8)]

    def revise(self: VtigerCrm, wsid: str, values: Any = None, **more: Any) -> dict[str, str]:
        raise RuntimeError("every save throws")

    monkeypatch.setattr(VtigerCrm, "revise", revise)
    answered: list[WriteResult] = []
    with pytest.raises(ConnectorError, match="refused the last 5 saves in a row"):
        for batch in _connector(sandbox).write_batches(
            [RecordUpdate("Contacts", i, {"emailoptout": True}) for i in ids]
        ):
            answered.extend(batch.values())
    assert len(answered) == 5 and all(r.retryable for r in answered)
    assert sandbox.calls["revise"] == 5


def test_session_and_limit_refusals_are_still_no_records(sandbox: VtigerSandbox) -> None:
    """A session expired between two writes is logged in again (not reported for the record);
    the day's limit stops the write (raised), as before."""
    crm = sandbox.crm
    ids = [crm.create("Contacts", lastname=f"S{i}", email=f"s{i}@example.test") for i in range(2)]
    connector = _connector(sandbox)
    assert _write(connector, [RecordUpdate("Contacts", ids[0], {"emailoptout": True})])[0].ok
    sandbox.expire_sessions()
    assert _write(connector, [RecordUpdate("Contacts", ids[1], {"emailoptout": True})])[0].ok
    assert connector.usage.per_endpoint["login"] == 2


# -- the sandbox -------------------------------------------------------------------------------


def test_the_sandbox_answers_a_duplicate_as_webservice_php_does(sandbox: VtigerSandbox) -> None:
    crm = sandbox.crm
    existing = crm.create("Contacts", lastname="Roth", email="anna@example.test")
    twin = crm.create("Contacts", lastname="Kuhn", email="ANNA@example.test ")
    crm.prevent_duplicates("Contacts", "email")
    client = Client(sandbox).login()
    refused = {"success": False, "error": {"code": 0, "message": "Duplicates detected"}}
    element = {"lastname": "Roth", "email": "Anna@Example.test", "assigned_user_id": "19x5"}
    assert (
        client.post(
            operation="create",
            sessionName=client.session_name,
            elementType="Contacts",
            element=json.dumps(element),
        )
        == refused
    )
    assert client.revise({"id": existing, "emailoptout": "1"}) == refused
    assert client.revise({"id": twin, "email": "bert@example.test"})["success"]
    assert client.revise({"id": existing, "emailoptout": "1"})["success"]


def test_the_sandbox_checks_current_values_on_every_save() -> None:
    crm = VtigerCrm()
    one = crm.create("Contacts", firstname="Anna", lastname="Roth", email="anna@example.test")
    twin = crm.create("Contacts", firstname="anna", lastname="ROTH", email="other@example.test")
    crm.prevent_duplicates("Contacts", "firstname", "lastname")

    def refused(call: Any, *args: Any, **kwargs: Any) -> bool:
        try:
            call(*args, **kwargs)
        except VtigerError as error:
            assert (error.code, error.message) == (0, "Duplicates detected")
            return True
        return False

    # Records made before the rule stay; their next save, of any field, is refused.
    assert refused(crm.revise, one, {"emailoptout": "1"})
    assert refused(crm.replace, twin, {"firstname": "Anna", "lastname": "Roth", "assigned_user_id": "19x5"})
    assert refused(crm.create, "Contacts", firstname="Anna", lastname="Roth")
    # A save that makes the record unique passes; then the other one may be saved too.
    assert not refused(crm.revise, twin, {"firstname": "Anne"})
    assert not refused(crm.revise, one, {"emailoptout": "1"})
    # An empty field matches an empty one, but no check where all the fields are empty.
    crm.revise(one, {"firstname": None, "lastname": "Erased"})
    assert refused(crm.revise, twin, {"firstname": "", "lastname": "Erased"})
    crm.prevent_duplicates("Contacts", "email")
    crm.revise(one, {"email": None})
    assert not refused(crm.create, "Contacts", lastname="New")  # no email: not checked
    # Deleted records do not count, and a restore is checked as a save is.
    crm.revise(twin, {"email": "shared@example.test"})
    gone = crm.create("Contacts", lastname="Gone", email="gone@example.test")
    crm.delete(gone)
    assert not refused(crm.create, "Contacts", lastname="Again", email="gone@example.test")
    assert refused(crm.restore, gone)
    # Converted leads do not count (the check asks for converted = 0); the switch turns it off.
    crm.prevent_duplicates("Leads", "email")
    lead = crm.create("Leads", lastname="Lead", email="lead@example.test")
    crm.convert_lead(lead)
    assert not refused(crm.create, "Leads", lastname="Lead", email="lead@example.test")
    crm.allow_duplicates("Contacts")
    assert not refused(crm.create, "Contacts", lastname="Twin", email="shared@example.test")
    with pytest.raises(ValueError):
        crm.prevent_duplicates("Contacts", "email", "firstname", "lastname", "phone")


# -- end to end --------------------------------------------------------------------------------


def _engine(ledger: Ledger, config_path: Path, sandbox: VtigerSandbox) -> SyncEngine:
    options = SyncOptions(batch_size=40, signpost_lag_seconds=0, erasure_actions={"Contacts": "anonymise"})
    return shipped_engine(
        ledger,
        config_path,
        sandbox,
        "vt",
        "vtiger",
        ["contacts.yaml", "leads.yaml"],
        {"max_attempts": 3},
        options,
    )


@SQLITE_ONLY
def test_a_second_erasure_refused_as_a_duplicate_is_dead_lettered_and_others_reach_vtiger(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    """Under a First + Last Name rule two erasures' anonymises collide: the second is
    dead-lettered with the reason (not sent again every run), the run succeeds, and another
    person's opt-out, pushed in the same run, reaches her contact."""

    def run(**how: bool) -> None:
        report = _engine(ledger, config_path, sandbox).run(**how)
        assert report.status == "succeeded", report.error
        time.sleep(1.1)

    crm = sandbox.crm
    anna = crm.create("Contacts", firstname="Anna", lastname="Roth", email="anna.roth@example.test")
    bert = crm.create("Contacts", firstname="Bert", lastname="Kuhn", email="bert.kuhn@example.test")
    cara = crm.create("Contacts", firstname="Cara", lastname="Diaz", email="cara.diaz@example.test")
    crm.create("Leads", lastname="Diaz", email="cara.diaz@example.test")
    crm.prevent_duplicates("Contacts", "firstname", "lastname")
    run(full=True)
    ledger.erase("anna.roth@example.test", reason="Art. 17 request")
    ledger.erase("bert.kuhn@example.test", reason="Art. 17 request")
    lead = next(r["id"] for r in crm.records("Leads") if r["email"] == "cara.diaz@example.test")
    crm.revise(lead, {"emailoptout": "1"})
    time.sleep(1.1)
    run()
    assert crm.get(anna)["lastname"] == "Erased"  # type: ignore[index]
    assert crm.get(cara)["emailoptout"] == "1", "another person's opt-out did not reach Vtiger"  # type: ignore[index]
    assert crm.get(bert)["firstname"] == "Bert"  # type: ignore[index]
    with ledger.engine.connect() as conn:
        row = conn.execute(
            select(outbox.c.status, outbox.c.last_error).where(outbox.c.record_id == bert)
        ).one()
    assert row.status == "dead" and "Duplicate Prevention" in row.last_error
    sent = sandbox.calls["revise"]
    run()
    assert sandbox.calls["revise"] == sent, "the dead-lettered anonymise was sent again"
