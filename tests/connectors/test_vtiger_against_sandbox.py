"""The Vtiger connector over HTTPS against the sandbox: reads through crowded seconds, sessions,
writes, deletions from sync, faults and secrets."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from typing import Any

import pytest
from consentsync_vtiger import VtigerConnector
from consentsync_vtiger.connector import vtql_string

from consentsync.sandbox.vtiger import VtigerCrm, VtigerSandbox
from consentsync.sdk import Action, ConnectorError, Cursor, RecordUpdate

FIELDS = ["email", "emailoptout", "donotcall"]


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    with VtigerSandbox() as server:
        yield server


def connector_for(sandbox: VtigerSandbox, **extra: Any) -> VtigerConnector:
    settings = {
        "url": sandbox.url,
        "username": sandbox.credentials.username,
        "access_key": sandbox.credentials.access_key,
        "ca_bundle": str(sandbox.ca_cert_path),
        "max_attempts": 4,
        "timeout": 5,
        **extra,
    }
    return VtigerConnector("vt-test", settings)


def _later() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)


def _crowd(crm: VtigerCrm, count: int, moment: dt.datetime) -> list[str]:
    return [
        crm.create("Contacts", lastname=f"Crowd {i}", email=f"crowd.{i}@example.test", at=moment)
        for i in range(count)
    ]


def test_full_read_costs_one_query_per_100_records_plus_login(sandbox: VtigerSandbox) -> None:
    sandbox.crm.seed(450, seed=3, burst=0)
    connector = connector_for(sandbox)
    records = list(connector.read_changes("Contacts", FIELDS, Cursor(), _later()))
    assert len(records) == 450 == len({r.record_id for r in records})
    keys = [(r.modstamp, r.record_id) for r in records]
    assert keys == sorted(keys)
    assert records[0].fields["emailoptout"] in ("0", "1")
    calls = connector.usage.per_endpoint
    assert calls["getchallenge"] == calls["login"] == calls["describe"] == 1
    # Re-reading from >= the last second of each page costs a little over the minimum.
    assert math.ceil(450 / 100) <= calls["query"] <= math.ceil(450 / 100) + 2


def test_a_second_holding_far_more_than_a_page_is_read_whole_and_resumable(sandbox: VtigerSandbox) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    before = _crowd(sandbox.crm, 7, now - dt.timedelta(hours=2))
    crowd = _crowd(sandbox.crm, 260, now - dt.timedelta(hours=1))
    after = _crowd(sandbox.crm, 7, now - dt.timedelta(minutes=30))
    connector = connector_for(sandbox)
    everything = list(connector.read_changes("Contacts", FIELDS, Cursor(), _later()))
    assert [r.record_id for r in everything] == sorted(before) + sorted(crowd) + sorted(after)
    stop = everything[7 + 150]
    rest = list(connector.read_changes("Contacts", FIELDS, Cursor(stop.modstamp, stop.record_id), _later()))
    assert [r.record_id for r in rest] == [r.record_id for r in everything[7 + 151 :]]


@pytest.mark.parametrize(("overlap", "loses"), [(10, False), (0, True)])
def test_a_record_leaving_a_crowded_second_mid_read_hides_no_other(
    sandbox: VtigerSandbox, monkeypatch: pytest.MonkeyPatch, overlap: int, loses: bool
) -> None:
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    crowd = sorted(_crowd(sandbox.crm, 250, moment), key=lambda i: int(i.split("x")[1]))
    answer = sandbox.crm.query
    answered = []

    def query_then_users_edit(vtql: str) -> list[dict[str, str]]:
        rows = answer(vtql)
        answered.append(vtql)
        if len(answered) == 2:
            # Between two pages of the crowded second, users edit five records already read:
            # they move to now, and every later record of that second moves up five places.
            for moved in crowd[5:10]:
                sandbox.crm.revise(moved, firstname="edited")
        return rows

    monkeypatch.setattr(sandbox.crm, "query", query_then_users_edit)
    connector = connector_for(sandbox, crowded_second_overlap=overlap)
    seen = {r.record_id for r in connector.read_changes("Contacts", FIELDS, Cursor(), _later())}
    assert (not set(crowd) <= seen) is loses


def test_an_expired_session_is_renewed_mid_read(sandbox: VtigerSandbox) -> None:
    sandbox.crm.seed(250, seed=4, burst=0)
    connector = connector_for(sandbox)
    connector.check()
    sandbox.expire_sessions()
    records = list(connector.read_changes("Contacts", FIELDS, Cursor(), _later()))
    assert len(records) == 250
    assert connector.usage.per_endpoint["login"] == 2


def test_requests_ca_bundle_in_the_environment_does_not_override_the_configured_ca(
    sandbox: VtigerSandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    unrelated = tmp_path / "unrelated.pem"
    unrelated.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(unrelated))
    connector_for(sandbox).check()


def test_writes_are_one_revise_per_record_with_per_record_results(sandbox: VtigerSandbox) -> None:
    sandbox.crm.seed(20, seed=5)
    ids = [r["id"] for r in sandbox.crm.records("Contacts")]
    sandbox.crm.delete(ids[1])
    sandbox.faults.fail_records(ids[2])
    connector = connector_for(sandbox)
    updates = [RecordUpdate("Contacts", i, {"emailoptout": True, "donotcall": False}) for i in ids]
    updates.append(RecordUpdate("Contacts", "10x1", {"emailoptout": True}))  # a lead's id
    updates.append(RecordUpdate("Contacts", ids[3], {"nosuchfield": "1"}))
    results = connector.write(updates)
    assert [r.record_id for r in results] == [u.record_id for u in updates]
    assert not results[1].ok and results[1].error_code == "ACCESS_DENIED" and not results[1].retryable
    assert not results[2].ok and results[2].error_code == "DATABASE_QUERY_ERROR" and results[2].retryable
    assert not results[-2].ok and results[-2].error_code == "INVALID_ID_ATTRIBUTE"
    assert not results[-1].ok and results[-1].error_code == "FIELD_NOT_WRITABLE"
    assert all(r.ok for i, r in enumerate(results[: len(ids)]) if i not in (1, 2))
    record = sandbox.crm.get(ids[0])
    assert record is not None and (record["emailoptout"], record["donotcall"]) == ("1", "0")
    assert sandbox.calls["revise"] == len(ids)  # the deleted one was tried; the last two never sent
    assert connector.usage.per_endpoint["revise"] == len(ids)


def test_deleted_ids_come_from_sync_and_its_http_500_is_named(sandbox: VtigerSandbox) -> None:
    sandbox.crm.seed(30, seed=6, burst=0)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    owned = [r["id"] for r in sandbox.crm.records("Contacts") if sandbox.crm.owner_of(r["id"]) == "19x5"]
    for record_id in owned[:3]:
        sandbox.crm.delete(record_id)
    connector = connector_for(sandbox, read_deletions=True, sync_type="user")
    assert sorted(connector.deleted_ids("Contacts", start)) == sorted(owned[:3])
    sandbox.sync_fails = True
    with pytest.raises(ConnectorError) as failed:
        list(connector.deleted_ids("Contacts", start))
    assert failed.value.action is Action.FAIL and "read_deletions" in str(failed.value)
    with pytest.raises(ConnectorError):
        list(connector_for(sandbox).deleted_ids("Contacts", start))  # off by default


def test_bad_access_key_fails_without_leaking_it(sandbox: VtigerSandbox) -> None:
    connector = connector_for(sandbox, access_key="not-the-real-key-123")
    with pytest.raises(ConnectorError) as failed:
        connector.check()
    assert failed.value.action is Action.FAIL
    assert "INVALID_USER_CREDENTIALS" in str(failed.value)
    assert "not-the-real-key-123" not in str(failed.value)
    unknown = connector_for(sandbox, username="nobody", max_attempts=2)
    with pytest.raises(ConnectorError) as no_user:
        unknown.check()
    assert "check the username" in str(no_user.value)


def test_a_long_rate_limit_stops_and_server_errors_are_retried(sandbox: VtigerSandbox) -> None:
    sandbox.crm.seed(120, seed=7)
    connector = connector_for(sandbox, max_attempts=8)
    sandbox.faults.update(error_rate=0.3, reset_rate=0.1, seed=3)
    assert len(list(connector.read_changes("Contacts", FIELDS, Cursor(), _later()))) == 120
    assert sum(sandbox.faults_injected.values()) > 0
    sandbox.faults.reset()
    sandbox.faults.update(request_limit_after=0)
    with pytest.raises(ConnectorError) as stopped:
        list(connector.read_changes("Contacts", FIELDS, Cursor(), _later()))
    assert stopped.value.action is Action.RATE_LIMITED


def test_vtql_values_are_escaped_for_vtigers_lexer_and_mysql(sandbox: VtigerSandbox) -> None:
    hostile = ["O'Brien@example.test", "back\\slash@example.test", "x' OR email != '@example.test"]
    for email in hostile:
        sandbox.crm.create("Contacts", lastname="Hostile", email=email)
    sandbox.crm.create("Contacts", lastname="Other", email="other@example.test")
    for email in hostile:
        rows = sandbox.crm.query(f"SELECT id, email FROM Contacts WHERE email = {vtql_string(email)};")
        assert [r["email"] for r in rows] == [email]


def test_field_and_module_names_are_checked_before_they_reach_a_query(sandbox: VtigerSandbox) -> None:
    connector = connector_for(sandbox)
    with pytest.raises(ConnectorError):
        list(connector.read_changes("Contacts", ["email FROM Leads;--"], Cursor(), _later()))
    with pytest.raises(ConnectorError) as missing:
        list(connector.read_changes("Contacts", ["nosuchfield"], Cursor(), _later()))
    assert "nosuchfield" in str(missing.value)
    assert sandbox.calls["query"] == 0
