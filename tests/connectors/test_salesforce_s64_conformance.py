"""The Salesforce connector against Salesforce's documentation, session 64's conformance check,
each against a sandbox that answers as a real org would:

- an active duplicate rule whose Action on Edit is Allow with an Alert refuses a save through the
  API unless the call says ``Sforce-Duplicate-Rule-Header: allowSave=true`` ("The default value
  for all fields is false", REST API *Duplicate Rule Header*). It runs only on an edit that
  changes a field of its matching criteria (Salesforce Help, article 005237351): never on a
  consent flag's write, but on an erasure's anonymise, whose values can match a record erased
  before (that erasure was dead-lettered). A Block rule still refuses, dead-lettered with a
  reason that says so; Bulk API 2.0 takes no header, its refused rows go through Collections;
- an active lead assignment rule runs on every REST update of a Lead unless the call says
  ``Sforce-Auto-Assign: FALSE`` ("If the header is not provided in the request, the default
  value is TRUE"): a consent flag written to a lead handed it to another owner;
- UNKNOWN_EXCEPTION, Salesforce's platform error, per record (Collections and a Bulk job's
  sf__Error): transient, as a lock is, sent again in the run (a Bulk job's row through
  Collections), not dead-lettered on its first try;
- the client credentials flow at login.salesforce.com or test.salesforce.com ("The client
  credentials flow doesn't support calls to" them): refused as the admin's configuration, in one
  line naming ``login_url`` and what is accepted, before any call;
- QUERY_TIMEOUT, a query the org stopped under load: retried, and still refused a transient
  stop (exit 69), not a configuration fault (exit 2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from consentsync_salesforce.sandbox import SalesforceSandbox
from consentsync_salesforce.sandbox.harness import MAPPINGS as SALESFORCE_MAPPINGS
from consentsync_salesforce.settings import SalesforceSettings
from pydantic import ValidationError

from consentsync import exit_codes
from consentsync.cli import main
from consentsync.config import write_starter
from consentsync.sdk import ConnectorError, Cursor, Fault, RecordUpdate
from tests.conftest import one_line_error
from tests.connectors.against_sandbox import read_until
from tests.connectors.test_salesforce_against_sandbox import connector_for
from tests.sandbox.serving import serve_seeded

BULK = {"bulk_threshold": 5, "bulk_poll_interval": 0.05}
OPT_OUT = {"HasOptedOutOfEmail": True}
# An erasure's ``anonymise`` (the mapping's ``personal_fields``), where the org wants an address on
# every contact (a validation rule) and the admin writes a placeholder: it rewrites fields of the
# standard matching rule (names, email, phone), so a duplicate rule runs on it.
PLACEHOLDER = "erased@example.invalid"
ANONYMISE = {"FirstName": None, "LastName": "Erased", "Email": PLACEHOLDER, "Phone": None}


@pytest.fixture
def sandbox() -> Iterator[SalesforceSandbox]:
    yield from serve_seeded(SalesforceSandbox(), lambda server: server.org.seed(40, seed=64))


def duplicates(sandbox: SalesforceSandbox, sobject: str, n: int, email: str) -> list[str]:
    """``n`` live ``sobject`` records holding one address: the duplicates of one person."""
    extra = {"Company": "Example Ltd"} if sobject == "Lead" else {}
    return [
        sandbox.org.create(sobject, LastName=f"Dupe {i}", Email=email, HasOptedOutOfEmail=False, **extra)
        for i in range(n)
    ]


def erased_before(sandbox: SalesforceSandbox, sobject: str) -> str:
    """A record of another person that an earlier erasure anonymised: the next anonymised record
    matches it."""
    (record,) = duplicates(sandbox, sobject, 1, PLACEHOLDER)
    sandbox.org.update(record, LastName="Erased")
    return record


def opt_outs(object_type: str, ids: list[str]) -> list[RecordUpdate]:
    return [RecordUpdate(object_type, record_id, dict(OPT_OUT)) for record_id in ids]


def anonymised(object_type: str, ids: list[str]) -> list[RecordUpdate]:
    return [RecordUpdate(object_type, record_id, dict(ANONYMISE)) for record_id in ids]


def raw_patch(
    sandbox: SalesforceSandbox, ids: list[str], sobject: str, fields: dict[str, Any] = OPT_OUT, **headers: str
) -> list[dict[str, Any]]:
    session = sandbox.requests_session()
    body = {
        "allOrNone": False,
        "records": [{"attributes": {"type": sobject}, "id": i, **fields} for i in ids],
    }
    answer = session.patch(
        f"{sandbox.data_url()}/composite/sobjects",
        json=body,
        headers={"Authorization": f"Bearer {sandbox.issue_token()}", **headers},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


# -- duplicate rules ---------------------------------------------------------------------------


def test_the_sandbox_refuses_a_duplicates_save_under_an_alert_rule_unless_the_call_allows_it(
    sandbox: SalesforceSandbox,
) -> None:
    """As Salesforce does: the API's default is allowSave=false; a Block rule refuses whatever.
    The edit changes a field of the matching rule's criteria (the first name), which runs it."""
    ids = duplicates(sandbox, "Contact", 2, "dupe.alert@example.org")
    sandbox.org.add_duplicate_rule("Contact", on_edit="alert")
    renamed = {"FirstName": "Kim"}
    (refused, _) = raw_patch(sandbox, ids, "Contact", renamed)
    (error,) = refused["errors"]
    assert not refused["success"] and error["statusCode"] == "DUPLICATES_DETECTED"
    assert error["duplicateResult"]["matchResults"][0]["matchRecords"][0]["record"]["Id"] == ids[1]
    assert "Email" not in repr(error["duplicateResult"]), "ids only: includeRecordDetails is false"
    allowed = {"Sforce-Duplicate-Rule-Header": "allowSave=true"}
    assert all(r["success"] for r in raw_patch(sandbox, ids, "Contact", renamed, **allowed))
    other = duplicates(sandbox, "Contact", 2, "dupe.block@example.org")
    sandbox.org.add_duplicate_rule("Contact", on_edit="block")
    allowed = {"Sforce-Duplicate-Rule-Header": "allowSave=true; includeRecordDetails=false"}
    assert not any(r["success"] for r in raw_patch(sandbox, other, "Contact", renamed, **allowed))


@pytest.mark.parametrize("on_edit", ["alert", "block"])
def test_the_sandbox_runs_no_duplicate_rule_on_an_edit_leaving_its_matching_fields(
    sandbox: SalesforceSandbox, on_edit: str
) -> None:
    """ "duplicate rules are only triggered when a change is detected in the fields defined in the
    Matching Criteria" (Salesforce Help, article 005237351): a consent flag's write, or one
    that writes a matching field's value unchanged, runs no rule, without any header."""
    ids = duplicates(sandbox, "Contact", 2, "dupe.flags@example.org")
    sandbox.org.add_duplicate_rule("Contact", on_edit=on_edit)
    assert all(r["success"] for r in raw_patch(sandbox, ids, "Contact"))
    same = {"Email": "dupe.flags@example.org", "DoNotCall": True}
    assert all(r["success"] for r in raw_patch(sandbox, ids, "Contact", same))
    assert all(sandbox.org.get(i)["HasOptedOutOfEmail"] and sandbox.org.get(i)["DoNotCall"] for i in ids)


@pytest.mark.parametrize("bulk", [False, True], ids=["collections", "bulk"])
@pytest.mark.parametrize("sobject", ["Contact", "Lead"])
def test_a_flag_only_write_to_duplicates_is_never_refused(
    sandbox: SalesforceSandbox, sobject: str, bulk: bool
) -> None:
    """Consent flags written to exactly the duplicates consentsync links to one person change no
    field of a matching rule: no duplicate rule runs, a Block rule's neither, through sObject
    Collections and through a Bulk job (which takes no header) alike; nothing is sent twice."""
    ids = duplicates(sandbox, sobject, 6, "flags.only@example.org")
    sandbox.org.add_duplicate_rule(sobject, on_edit="alert")
    sandbox.org.add_duplicate_rule(sobject, on_edit="block", name="Blocking_Rule")
    results = connector_for(sandbox, **(BULK if bulk else {})).write(opt_outs(sobject, ids))
    assert all(r.ok for r in results), [(r.error_code, r.message) for r in results]
    assert all(sandbox.org.get(i)["HasOptedOutOfEmail"] is True for i in ids)
    assert (sandbox.calls["bulk_create"], sandbox.calls["composite"]) == ((1, 0) if bulk else (0, 1))


@pytest.mark.parametrize("sobject", ["Contact", "Lead"])
def test_an_erasures_anonymise_of_duplicates_under_an_alert_rule_is_saved(
    sandbox: SalesforceSandbox, sobject: str
) -> None:
    """An Allow-with-Alert rule on edit (the alert a user acknowledges in the UI) refused an
    erasure's anonymise of the person's records with DUPLICATES_DETECTED, the anonymised values
    matching those of a record erased before, and the engine dead-lettered it: the person's
    name stayed in Salesforce."""
    ids = duplicates(sandbox, sobject, 3, "same.person@example.org")
    erased_before(sandbox, sobject)
    sandbox.org.add_duplicate_rule(sobject, on_edit="alert")
    assert not any(r["success"] for r in raw_patch(sandbox, ids, sobject, ANONYMISE)), "the rule runs"
    results = connector_for(sandbox).write(anonymised(sobject, ids))
    assert all(r.ok for r in results), [(r.error_code, r.message) for r in results]
    saved = [sandbox.org.get(i) for i in ids]
    assert all(record["LastName"] == "Erased" and not record["FirstName"] for record in saved)


def test_a_block_rule_still_refuses_and_the_dead_letter_says_why(sandbox: SalesforceSandbox) -> None:
    ids = duplicates(sandbox, "Contact", 2, "blocked.person@example.org")
    erased_before(sandbox, "Contact")
    sandbox.org.add_duplicate_rule("Contact", on_edit="block", alert_text="Use one of these records?")
    results = connector_for(sandbox).write(anonymised("Contact", ids))
    for result in results:
        assert not result.ok and not result.retryable and not result.gone
        assert result.error_code == "DUPLICATES_DETECTED"
        assert result.message is not None
        assert result.message.startswith("Use one of these records? (refused by a duplicate rule")
        assert "Block" in result.message and "leaves out the values consentsync writes" in result.message
    assert sandbox.calls["composite"] == 1, "not sent again: no retry can clear a Block rule"
    assert not any(sandbox.org.get(i)["LastName"] == "Erased" for i in ids)


def test_a_bulk_job_s_rows_an_alert_rule_refused_go_again_through_collections(
    sandbox: SalesforceSandbox,
) -> None:
    """Bulk API 2.0 takes no duplicate rule header: the job refuses the rows whose anonymise
    makes them duplicates. They are sent again at once through sObject Collections, which says
    allowSave=true; the job's flag-only rows ran no rule and were saved by it."""
    dupes = duplicates(sandbox, "Contact", 2, "bulk.dupe@example.org")
    erased_before(sandbox, "Contact")
    others = [r["Id"] for r in sandbox.org.records("Contact") if r["Email"] != PLACEHOLDER][:6]
    others = [i for i in others if i not in dupes]
    sandbox.org.add_duplicate_rule("Contact", on_edit="alert")
    updates = [*opt_outs("Contact", others), *anonymised("Contact", dupes)]
    connector = connector_for(sandbox, **BULK)
    answers: dict[int, Any] = {}
    for batch in connector.write_batches(updates):
        assert not set(batch) & set(answers), "each record answered once"
        answers.update(batch)
    assert sorted(answers) == list(range(len(updates)))
    assert all(r.ok for r in answers.values()), [(r.error_code, r.message) for r in answers.values()]
    assert sandbox.calls["bulk_create"] == 1 and sandbox.calls["composite"] == 1
    assert all(sandbox.org.get(i)["HasOptedOutOfEmail"] is True for i in others)
    assert all(sandbox.org.get(i)["LastName"] == "Erased" for i in dupes)


# -- assignment rules --------------------------------------------------------------------------


def test_the_sandbox_runs_the_lead_assignment_rule_on_a_rest_update_without_the_header(
    sandbox: SalesforceSandbox,
) -> None:
    (lead,) = duplicates(sandbox, "Lead", 1, "assigned.lead@example.org")
    owner = sandbox.org.get(lead)["OwnerId"]
    queue = sandbox.org.activate_lead_assignment_rule()
    raw_patch(sandbox, [lead], "Lead", **{"Sforce-Auto-Assign": "false"})
    assert sandbox.org.get(lead)["OwnerId"] == owner
    raw_patch(sandbox, [lead], "Lead")
    assert sandbox.org.get(lead)["OwnerId"] == queue


def test_an_opt_out_written_to_a_lead_leaves_its_owner(sandbox: SalesforceSandbox) -> None:
    """Without ``Sforce-Auto-Assign: FALSE`` every consent flag written to a Lead ran the org's
    active lead assignment rule and handed the lead to the rule's owner (a queue, a rep)."""
    leads = duplicates(sandbox, "Lead", 1, "owned.lead@example.org")
    leads += duplicates(sandbox, "Lead", 1, "another.lead@example.org")
    owners = {i: sandbox.org.get(i)["OwnerId"] for i in leads}
    queue = sandbox.org.activate_lead_assignment_rule()
    assert all(r.ok for r in connector_for(sandbox).write(opt_outs("Lead", leads)))
    assert {i: sandbox.org.get(i)["OwnerId"] for i in leads} == owners != {i: queue for i in leads}
    assert all(sandbox.org.get(i)["HasOptedOutOfEmail"] for i in leads)
    # Bulk API 2.0 runs no assignment rule the job does not name.
    more = [r["Id"] for r in sandbox.org.records("Lead") if r["Id"] not in leads][:6]
    before = {i: sandbox.org.get(i)["OwnerId"] for i in more}
    assert all(r.ok for r in connector_for(sandbox, **BULK).write(opt_outs("Lead", more)))
    assert sandbox.calls["bulk_create"] == 1
    assert {i: sandbox.org.get(i)["OwnerId"] for i in more} == before


# -- UNKNOWN_EXCEPTION -------------------------------------------------------------------------


@pytest.mark.parametrize("bulk", [False, True], ids=["collections", "bulk"])
def test_a_records_internal_error_is_transient_not_dead_lettered_at_once(
    sandbox: SalesforceSandbox, bulk: bool
) -> None:
    ids = [r["Id"] for r in sandbox.org.records("Contact")][:6]
    sandbox.faults.update(internal_errors=True)
    sandbox.faults.lock_records(ids[0])  # every attempt: UNKNOWN_EXCEPTION
    sandbox.faults.lock_records(ids[1], attempts=1)  # the first attempt only
    results = connector_for(sandbox, **(BULK if bulk else {})).write(opt_outs("Contact", ids))
    first, second = results[0], results[1]
    assert first.error_code == "UNKNOWN_EXCEPTION" and not first.ok
    assert first.retryable, "left pending: dead-lettered only after max_push_attempts"
    assert second.ok, "sent again in a later pass, as a locked row is (a Bulk job's: through Collections)"
    assert all(r.ok for r in results[2:])
    # lock_retries (2) sends again at most: a Bulk job is the first try, Collections the rest.
    assert sandbox.calls["composite"] == (2 if bulk else 3)
    assert sandbox.calls["bulk_create"] == (1 if bulk else 0)


@pytest.mark.parametrize("lock_retries", [0, 1])
def test_a_bulk_jobs_transient_rows_are_sent_again_within_lock_retries(
    sandbox: SalesforceSandbox, lock_retries: int
) -> None:
    """The job counts as the first try: ``lock_retries: 0`` leaves the row pending for the next
    run at once, 1 sends it once more through Collections. Rows the job did not get to
    (BULK_JOB_FAILED) or left out of its result files are not sent again in the run."""
    ids = [r["Id"] for r in sandbox.org.records("Contact")][:6]
    sandbox.faults.update(internal_errors=True)
    sandbox.faults.lock_records(ids[0], attempts=1)
    connector = connector_for(sandbox, **BULK, lock_retries=lock_retries)
    results = connector.write(opt_outs("Contact", ids))
    assert results[0].ok is bool(lock_retries)
    assert sandbox.calls["composite"] == lock_retries
    if not lock_retries:
        assert results[0].retryable and results[0].error_code == "UNKNOWN_EXCEPTION"
    assert all(r.ok for r in results[1:])


# -- client credentials at a generic login host ------------------------------------------------

CREDENTIALS = {"client_id": "cid", "client_secret": "not-shown-s64"}


@pytest.mark.parametrize(
    "login_url",
    [None, "https://login.salesforce.com", "https://test.salesforce.com/", "https://LOGIN.Salesforce.com."],
)
def test_client_credentials_at_a_generic_login_host_is_refused_naming_login_url(
    login_url: str | None,
) -> None:
    settings = {**CREDENTIALS, **({"login_url": login_url} if login_url else {})}
    for auth in ({}, {"auth": "client_credentials"}):  # client_credentials is the default
        with pytest.raises(ValidationError) as raised:
            SalesforceSettings.model_validate({**settings, **auth})
        (error,) = raised.value.errors()
        assert "login_url" in str(error["ctx"]["error"].at)
        assert "My Domain" in error["msg"] and "https://<MyDomain>.my.salesforce.com" in error["msg"]
        assert "not-shown" not in error["msg"]


@pytest.mark.parametrize(
    ("login_url", "auth"),
    [
        ("https://acme.my.salesforce.com", {"auth": "client_credentials"}),
        ("https://acme--uat.sandbox.my.salesforce.com", {}),
        ("https://login.salesforce.com", {"auth": "password", "username": "u@example.org", "password": "p"}),
        ("https://test.salesforce.com", {"auth": "password", "username": "u@example.org", "password": "p"}),
    ],
)
def test_my_domain_and_the_other_flows_at_a_generic_host_are_taken(
    login_url: str, auth: dict[str, str]
) -> None:
    assert (
        SalesforceSettings.model_validate({**CREDENTIALS, "login_url": login_url, **auth}).login_url
        == login_url
    )


def _run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


def test_the_command_refuses_the_config_in_one_line_before_any_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SF_S64_SECRET", "not-shown-anywhere-s64")
    config = tmp_path / "consentsync.yaml"
    write_starter(config, f"sqlite:///{tmp_path / 'ledger.db'}")
    assert _run(config, "init").exit_code == 0
    data = yaml.safe_load(config.read_text())
    settings = {
        "login_url": "https://login.salesforce.com",
        "auth": "client_credentials",
        "client_id": "cid",
        "client_secret": "${SF_S64_SECRET}",
    }
    mapping = str(SALESFORCE_MAPPINGS / "contact.yaml")
    data["connectors"] = [{"name": "sf", "vendor": "salesforce", "mappings": [mapping], "settings": settings}]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if "login_url:" in text)
    message = one_line_error(
        _run(config, "sync", "sf"),
        exit_codes.CONFIG,
        f"{config}:{line}: connectors[0].settings.login_url: ",
        "auth client_credentials needs the org's My Domain login URL, not login.salesforce.com",
        "https://<MyDomain>.my.salesforce.com",
    )
    assert "not-shown" not in message


def test_the_sandbox_refuses_the_client_credentials_grant_at_a_generic_login_host() -> None:
    with SalesforceSandbox() as server:
        session = server.requests_session()
        for host in ("login.salesforce.com", "test.salesforce.com:443"):
            refused = session.post(
                server.token_url, data=server.client_credentials_form(), headers={"Host": host}
            )
            assert refused.status_code == 400
            assert refused.json() == {
                "error": "invalid_grant",
                "error_description": "request not supported on this domain",
            }
        assert session.post(server.token_url, data=server.client_credentials_form()).status_code == 200
        password = session.post(
            server.token_url, data=server.password_form(), headers={"Host": "login.salesforce.com"}
        )
        assert password.status_code == 200, "the other flows take the generic hosts"


# -- QUERY_TIMEOUT -----------------------------------------------------------------------------


def test_a_query_timeout_is_retried(sandbox: SalesforceSandbox) -> None:
    sandbox.faults.update(query_timeouts=2)
    records = list(connector_for(sandbox).read_changes("Contact", ["Email"], Cursor(), read_until()))
    assert len(records) == sandbox.org.count("Contact")
    assert sandbox.faults_injected["query_timeout"] == 2


def test_a_query_still_timing_out_stops_the_run_as_transient_not_as_a_config_fault(
    sandbox: SalesforceSandbox,
) -> None:
    sandbox.faults.update(query_timeouts=1000)
    connector = connector_for(sandbox, max_attempts=2)
    with pytest.raises(ConnectorError) as raised:
        list(connector.read_changes("Contact", ["Email"], Cursor(), read_until()))
    assert raised.value.rule.code == "QUERY_TIMEOUT" and raised.value.rule.fault is Fault.TRANSIENT
    assert exit_codes.for_connector_error(raised.value.rule) == exit_codes.UNAVAILABLE
    assert sandbox.faults_injected["query_timeout"] == 2
