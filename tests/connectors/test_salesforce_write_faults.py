"""The Salesforce connector's write path against its sandbox, where Salesforce answers as its
documentation says and the connector once took it otherwise: a Bulk API 2.0 job that leaves
records out of both result files, a lock met by a trigger, the concurrent request limit worded
with the daily limit's code, and the JWT bearer audience."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce import SalesforceConnector
from consentsync_salesforce.connector import _canonical_id, _save_result
from consentsync_salesforce.sandbox import SalesforceCredentials, SalesforceSandbox
from consentsync_salesforce.settings import SalesforceSettings
from structlog.testing import capture_logs

from consentsync.sdk import Action, BudgetExhausted, ConnectorError, RecordUpdate, WriteResult
from tests.connectors.test_salesforce_against_sandbox import connector_for
from tests.sandbox import test_salesforce_sandbox as sandbox_tests
from tests.sandbox.serving import serve_seeded

rsa_keys = sandbox_tests.rsa_keys  # the sandbox tests' RSA key pair (PEM private, public)

BULK = {"bulk_threshold": 50, "bulk_poll_interval": 0.05}
TRIGGER_LOCK = "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY"


@pytest.fixture
def sandbox() -> Iterator[SalesforceSandbox]:
    yield from serve_seeded(SalesforceSandbox(), lambda server: server.org.seed(80, seed=7))


def contact_ids(sandbox: SalesforceSandbox, n: int) -> list[str]:
    return [r["Id"] for r in sandbox.org.records("Contact")[:n]]


def titled(ids: list[str], title: str) -> list[RecordUpdate]:
    return [RecordUpdate("Contact", record_id, {"Title": title}) for record_id in ids]


# -- Bulk API 2.0: records in neither result file ---------------------------------------------


def test_a_bulk_record_in_neither_result_file_is_sent_again_not_taken_as_written(
    sandbox: SalesforceSandbox,
) -> None:
    """A JobComplete job past the org's daily batch allocation processes every row but records
    the results of the first ones only. The row a lock refused among the others was not written:
    answered as written (the connector read failedResults alone), its value was lost for good.
    Every record in neither file is answered retryable (the outbox sends it again), and the
    disagreement with the job's counts is logged with ids only."""
    connector = connector_for(sandbox, **BULK)
    ids = contact_ids(sandbox, 60)
    sandbox.faults.update(bulk_unrecorded_after=45)
    sandbox.faults.lock_records(ids[50])  # refused, and the refusal not recorded either
    with capture_logs() as logged:
        (answers,) = list(connector.write_batches(titled(ids, "bulk")))
    assert all(answers[i].ok for i in range(45))
    unrecorded = [answers[i] for i in range(45, 60)]
    assert all(not r.ok and r.retryable and r.error_code == "BULK_RESULT_MISSING" for r in unrecorded), [
        (r.ok, r.error_code) for r in unrecorded
    ]
    assert sandbox.org.get(ids[50])["Title"] != "bulk"
    assert sandbox.calls["bulk_results"] == 2, "successfulResults and failedResults, once each"
    (warning,) = [e for e in logged if e["event"] == "salesforce.bulk_results_incomplete"]
    assert warning["log_level"] == "warning"
    assert (warning["records_processed"], warning["records_failed"]) == (60, 1)
    assert (warning["successful_rows"], warning["failed_rows"], warning["missing"]) == (45, 0, 15)
    assert warning["missing_ids"] == ids[45:]
    emails = {str(r.get("Email")) for r in sandbox.org.records("Contact") if r.get("Email")}
    assert not any(email in repr(event) for event in logged for email in emails)

    # The outbox sends them again (fewer than bulk_threshold: sObject Collections).
    sandbox.faults.reset()
    again = connector.write(titled(ids[45:], "bulk"))
    assert all(r.ok for r in again)
    assert all(sandbox.org.get(i)["Title"] == "bulk" for i in ids)


def test_a_bulk_job_whose_result_files_hold_every_record_logs_nothing(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox, **BULK)
    ids = contact_ids(sandbox, 55)
    with capture_logs() as logged:
        (answers,) = list(connector.write_batches(titled(ids, "complete")))
    assert all(result.ok for result in answers.values()) and len(answers) == 55
    assert not [e for e in logged if e["event"] == "salesforce.bulk_results_incomplete"]


@pytest.mark.parametrize("case", ["upper", "lower", "15"])
def test_a_bulk_record_named_by_an_id_of_another_case_or_length_is_answered_by_its_result(
    sandbox: SalesforceSandbox, case: str
) -> None:
    """The result files name each record by its 18-character id as Salesforce writes it. An
    update holding it upper-cased (18-character ids are made to survive systems that ignore
    case) matched nothing when the two were compared by their first 15 characters: a JobComplete
    record written was answered BULK_RESULT_MISSING, sent again and again, for ever."""
    connector = connector_for(sandbox, **BULK)
    ids = contact_ids(sandbox, 55)
    held = {"upper": str.upper, "lower": str.lower, "15": lambda record_id: record_id[:15]}[case]
    with capture_logs() as logged:
        (answers,) = list(connector.write_batches(titled([held(i) for i in ids], "any case")))
    assert sandbox.calls["bulk_create"] == 1, "one job"
    assert all(result.ok for result in answers.values()), {r.error_code for r in answers.values()}
    assert all(sandbox.org.get(i)["Title"] == "any case" for i in ids)
    assert not [e for e in logged if e["event"] == "salesforce.bulk_results_incomplete"]


def test_an_id_is_compared_in_its_18_character_form_with_its_case_restored() -> None:
    same = ["001A0000006Vm9rIAC", "001A0000006VM9RIAC", "001a0000006vm9riac", "001A0000006Vm9r"]
    assert {_canonical_id(record_id) for record_id in same} == {"001A0000006Vm9rIAC"}
    # Two ids whose first 15 characters differ only in case are two records.
    assert _canonical_id("001a0000006Vm9r") != _canonical_id("001A0000006Vm9r")
    # A checksum naming a digit as an upper-case letter is no checksum: the 15 as they are.
    assert _canonical_id("001A0000006Vm9rIAB") == "001A0000006Vm9rIAC"


# -- a lock met by a trigger -------------------------------------------------------------------


@pytest.mark.parametrize("bulk", [False, True], ids=["collections", "bulk"])
def test_a_lock_met_by_a_trigger_is_retryable_not_dead_lettered(
    sandbox: SalesforceSandbox, bulk: bool
) -> None:
    """A trigger (or flow, or roll-up) whose DML meets a locked row fails the save with
    CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY, UNABLE_TO_LOCK_ROW in the message: a lock, which
    clears, not a refusal of the record. Sent again in a later pass (Collections) and answered
    retryable (the outbox keeps it) where it is still locked."""
    connector = connector_for(sandbox, lock_retries=2, **(BULK if bulk else {}))
    ids = contact_ids(sandbox, 60 if bulk else 5)
    sandbox.faults.update(trigger_locks=True)
    sandbox.faults.lock_records(ids[0], attempts=1)  # locked once, then free
    sandbox.faults.lock_records(ids[1])  # locked for good
    results = connector.write(titled(ids, "trigger"))
    still = results[1]
    assert not still.ok and still.retryable, (still.error_code, still.retryable)
    assert still.error_code == TRIGGER_LOCK and "UNABLE_TO_LOCK_ROW" in (still.message or "")
    assert all(r.ok for r in results[2:])
    # Sent again in the next pass (a Bulk job's transient rows through Collections), after the
    # lock cleared.
    assert results[0].ok and sandbox.org.get(ids[0])["Title"] == "trigger"


def test_a_trigger_that_fails_otherwise_is_still_refused_for_good() -> None:
    refused = _save_result(
        "003000000000001AAA",
        {
            "success": False,
            "errors": [
                {
                    "statusCode": TRIGGER_LOCK,
                    "message": "ConsentTrigger: execution of AfterUpdate caused by: "
                    "FIELD_CUSTOM_VALIDATION_EXCEPTION, region required",
                }
            ],
        },
    )
    assert refused == WriteResult("003000000000001AAA", False, TRIGGER_LOCK, refused.message, retryable=False)


# -- REQUEST_LIMIT_EXCEEDED: the concurrent long-running request limit and the daily one -------


def test_the_concurrent_request_limit_is_retried_with_backoff(sandbox: SalesforceSandbox) -> None:
    """ "ConcurrentPerOrgLongTxn Limit exceeded." clears as the org's long requests end: the call
    is sent again, and the write goes through (it stopped the run as a spent daily budget)."""
    connector = connector_for(sandbox)
    connector.check()
    ids = contact_ids(sandbox, 3)
    sandbox.faults.update(throttle_after=0, throttle_calls=2)
    results = connector.write(titled(ids, "concurrent"))
    assert all(r.ok for r in results)
    assert sandbox.faults_injected["throttle"] == 2
    assert all(sandbox.org.get(i)["Title"] == "concurrent" for i in ids)


def test_a_concurrent_limit_that_persists_stops_the_run_cleanly_the_daily_limit_at_once(
    sandbox: SalesforceSandbox,
) -> None:
    connector = connector_for(sandbox, max_attempts=2)
    connector.check()
    ids = contact_ids(sandbox, 3)
    sandbox.faults.update(throttle_after=0, throttle_calls=10)
    with pytest.raises(ConnectorError) as concurrent:
        connector.write(titled(ids, "concurrent"))
    assert not isinstance(concurrent.value, BudgetExhausted)
    assert concurrent.value.action is Action.RATE_LIMITED  # the run stops cleanly, resumes later
    assert sandbox.faults_injected["throttle"] == 2, "sent twice (max_attempts), not once"

    sandbox.faults.reset()
    sandbox.faults.update(request_limit_after=0)
    with pytest.raises(BudgetExhausted, match="TotalRequests"):
        connector.write(titled(ids, "daily"))
    assert sandbox.faults_injected["request_limit"] == 1, "the daily limit is not retried"


# -- JWT bearer: the audience ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("login_url", "audience"),
    [
        ("https://login.salesforce.com", "https://login.salesforce.com"),
        ("https://test.salesforce.com/", "https://test.salesforce.com"),
        ("https://acme--uat.sandbox.my.salesforce.com", "https://test.salesforce.com"),
        ("https://ACME--UAT.SANDBOX.MY.SALESFORCE.COM", "https://test.salesforce.com"),
        ("https://acme.my.salesforce.com", "https://login.salesforce.com"),
        ("https://127.0.0.1:8443", "https://login.salesforce.com"),
    ],
)
def test_the_jwt_audience_follows_the_kind_of_org(login_url: str, audience: str) -> None:
    # (auth client_credentials takes a My Domain only: the password flow's settings, the same audience)
    settings = {"login_url": login_url, "auth": "password", "client_id": "cid", "client_secret": "secret"}
    settings |= {"username": "integration@example.org", "password": "pw"}
    assert SalesforceSettings.model_validate(settings).audience() == audience
    site = "https://acme.my.site.com/customers"
    assert SalesforceSettings.model_validate({**settings, "jwt_audience": site}).audience() == site


def test_a_jwt_login_at_my_domain_names_salesforces_login_server_as_audience(
    tmp_path: Path, rsa_keys: tuple[bytes, bytes]
) -> None:
    """Salesforce refuses an assertion whose ``aud`` is the My Domain (or any URL but its login
    servers and Experience Cloud sites): "audience is invalid". The login goes to the sandbox's
    own URL, the assertion names https://login.salesforce.com unless ``jwt_audience`` says."""
    private, public = rsa_keys
    key_file = tmp_path / "jwt.pem"
    key_file.write_bytes(private)
    with SalesforceSandbox(credentials=SalesforceCredentials(jwt_public_key_pem=public)) as server:
        settings: dict[str, Any] = {
            "login_url": server.login_url,
            "auth": "jwt",
            "client_id": server.credentials.client_id,
            "username": server.credentials.username,
            "private_key_file": str(key_file),
            "ca_bundle": str(server.ca_cert_path),
        }
        SalesforceConnector("sf-jwt", settings).check()
        SalesforceConnector("sf-jwt", {**settings, "jwt_audience": "https://test.salesforce.com"}).check()
        own = SalesforceConnector("sf-jwt", {**settings, "jwt_audience": server.login_url})
        with pytest.raises(ConnectorError, match="login with jwt"):
            own.check()
