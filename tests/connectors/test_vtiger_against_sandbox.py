"""The Vtiger connector over HTTPS against the sandbox: reads through crowded seconds, the
install's time zone (daylight saving included) and the look-back window, sessions, writes call by
call, deletes, deletions from sync, faults and secrets."""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from consentsync_vtiger import VtigerConnector
from consentsync_vtiger.client import VtigerRefusal
from consentsync_vtiger.connector import ERRORS, vtql_string
from consentsync_vtiger.sandbox.server import VtigerCrm, VtigerSandbox

from consentsync.sdk import Action, ConnectorError, Cursor, Fault, RecordUpdate, WriteAction, WriteResult
from tests.connectors.against_sandbox import connector_settings, read_until
from tests.connectors.trust import check_with_requests_ca_bundle_set

FIELDS = ["email", "emailoptout", "donotcall"]


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    with VtigerSandbox() as server:
        yield server


def connector_for(sandbox: VtigerSandbox, **extra: Any) -> VtigerConnector:
    return VtigerConnector(
        "vt-test", connector_settings(sandbox.connection_settings(), {"timeout": 5}, extra)
    )


def _crowd(crm: VtigerCrm, count: int, moment: dt.datetime) -> list[str]:
    return [
        crm.create("Contacts", lastname=f"Crowd {i}", email=f"crowd.{i}@example.test", at=moment)
        for i in range(count)
    ]


def test_full_read_costs_one_query_per_100_records_plus_login(sandbox: VtigerSandbox) -> None:
    sandbox.crm.seed(450, seed=3, burst=0)
    connector = connector_for(sandbox)
    records = list(connector.read_changes("Contacts", FIELDS, Cursor(), read_until()))
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
    everything = list(connector.read_changes("Contacts", FIELDS, Cursor(), read_until()))
    assert [r.record_id for r in everything] == sorted(before) + sorted(crowd) + sorted(after)
    stop = everything[7 + 150]
    rest = list(
        connector.read_changes("Contacts", FIELDS, Cursor(stop.modstamp, stop.record_id), read_until())
    )
    assert [r.record_id for r in rest] == [r.record_id for r in everything[7 + 151 :]]


@pytest.mark.parametrize(("overlap", "leaving"), [(10, 5), (10, 15), (10, 120), (0, 5)])
def test_a_record_leaving_a_crowded_second_mid_read_hides_no_other(
    sandbox: VtigerSandbox, monkeypatch: pytest.MonkeyPatch, overlap: int, leaving: int
) -> None:
    """More records leaving the second between two windows than the windows overlap by (session
    67: 15 against 10) moved as many others back past the next window's offset, and their
    changes were never read: the cursor went past the second. The walk steps back until the
    windows meet again."""
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
            for moved in crowd[5 : 5 + leaving]:
                sandbox.crm.revise(moved, firstname="edited")
        return rows

    monkeypatch.setattr(sandbox.crm, "query", query_then_users_edit)
    connector = connector_for(sandbox, crowded_second_overlap=overlap)
    seen = {r.record_id for r in connector.read_changes("Contacts", FIELDS, Cursor(), read_until())}
    assert set(crowd) <= seen


def test_a_second_straddling_windows_loses_no_record_when_more_than_the_overlap_leave_it(
    sandbox: VtigerSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No crowded second: a second the first window ends inside (its rows read again from the
    overlap) loses none of its records when more than the overlap of them leave it meanwhile."""
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    before = _crowd(sandbox.crm, 60, moment - dt.timedelta(seconds=5))
    straddling = sorted(_crowd(sandbox.crm, 90, moment), key=lambda i: int(i.split("x")[1]))
    answer = sandbox.crm.query
    answered = []

    def query_then_users_edit(vtql: str) -> list[dict[str, str]]:
        rows = answer(vtql)
        answered.append(vtql)
        if len(answered) == 1:  # after the first window (60 before, 40 of the straddling second)
            for moved in straddling[:15]:
                sandbox.crm.revise(moved, firstname="edited")
        return rows

    monkeypatch.setattr(sandbox.crm, "query", query_then_users_edit)
    connector = connector_for(sandbox, crowded_second_overlap=10)
    seen = {r.record_id for r in connector.read_changes("Contacts", FIELDS, Cursor(), read_until())}
    assert set(before) | set(straddling) <= seen


def test_an_expired_session_is_renewed_mid_read(sandbox: VtigerSandbox) -> None:
    sandbox.crm.seed(250, seed=4, burst=0)
    connector = connector_for(sandbox)
    connector.check()
    sandbox.expire_sessions()
    records = list(connector.read_changes("Contacts", FIELDS, Cursor(), read_until()))
    assert len(records) == 250
    assert connector.usage.per_endpoint["login"] == 2


def _write_at_once(connector: VtigerConnector, ids: list[str], donotcall: bool) -> bool:
    """Each record written by its own thread, the threads let go at the same moment."""
    start = threading.Barrier(len(ids))

    def write(record_id: str) -> bool:
        start.wait()
        [result] = connector.write([RecordUpdate("Contacts", record_id, {"donotcall": donotcall})])
        return result.ok

    with ThreadPoolExecutor(len(ids)) as pool:
        return all(pool.map(write, ids))


def test_threads_writing_side_by_side_share_one_login(sandbox: VtigerSandbox) -> None:
    """Vtiger keeps one login challenge per user: threads each logging in at once would replace
    each other's challenge and be refused (INVALID_USER_CREDENTIALS, seen in CI). They share
    one login instead, then one renewal when the session expires under all of them."""
    sandbox.crm.seed(8, seed=6)
    ids = [r["id"] for r in sandbox.crm.records("Contacts")]
    for _ in range(3):  # each a fresh connector, not yet logged in
        connector = connector_for(sandbox)
        assert _write_at_once(connector, ids, donotcall=True)
        assert connector.usage.per_endpoint["getchallenge"] == connector.usage.per_endpoint["login"] == 1
        sandbox.expire_sessions()
        assert _write_at_once(connector, ids, donotcall=False)
        assert connector.usage.per_endpoint["login"] == 2
    assert {sandbox.crm.get(record_id)["donotcall"] for record_id in ids} == {"0"}  # type: ignore[index]


def test_requests_ca_bundle_in_the_environment_does_not_override_the_configured_ca(
    sandbox: VtigerSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_with_requests_ca_bundle_set(connector_for(sandbox), monkeypatch)


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


def test_a_revise_refused_for_a_record_deleted_since_is_answered_gone(
    sandbox: VtigerSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revise of a lead deleted in Vtiger since it was read is refused (ACCESS_DENIED, "...
    denied", as for any id without a live record); retrieve confirms no record is there, so the
    answer says ``gone`` (the engine marks the record gone rather than quarantining the push). A
    live lead in the same batch is written; a converted lead is written too (Vtiger acts on it),
    and one whose revise is refused is retrievable: not gone."""
    crm = sandbox.crm
    live = crm.create("Leads", lastname="Live", email="live@example.test")
    deleted = crm.create("Leads", lastname="Deleted", email="deleted@example.test")
    converted = crm.create("Leads", lastname="Converted", email="converted@example.test")
    refused = crm.create("Leads", lastname="Refused", email="refused@example.test")
    crm.delete(deleted)
    crm.convert_lead(converted)
    crm.convert_lead(refused)
    connector = connector_for(sandbox)
    sent = connector.client.request

    def request(operation: str, params: Any, **how: Any) -> Any:
        if operation == "revise" and params["element"]["id"] == refused:
            raise VtigerRefusal(
                "revise: ACCESS_DENIED: Permission to write is denied",
                ERRORS.classify(200, "ACCESS_DENIED"),
                operation="revise",
                answer="Permission to write is denied",
            )
        return sent(operation, params, **how)

    monkeypatch.setattr(connector.client, "request", request)
    ids = [live, deleted, converted, refused]
    results = connector.write([RecordUpdate("Leads", i, {"emailoptout": True}) for i in ids])
    assert [(r.record_id, r.ok, r.gone) for r in results] == [
        (live, True, False),
        (deleted, False, True),
        (converted, True, False),
        (refused, False, False),
    ]
    assert (results[1].error_code, results[1].retryable) == ("ACCESS_DENIED", False)
    assert results[3].error_code == "ACCESS_DENIED" and not results[3].retryable
    assert (crm.get(live) or {}).get("emailoptout") == "1"
    assert (crm.get(converted) or {}).get("emailoptout") == "1"
    assert sandbox.calls["retrieve"] == 2  # only the refused ones are looked up


def test_deletions_come_from_sync_in_order_and_its_http_500_is_named(sandbox: VtigerSandbox) -> None:
    sandbox.crm.seed(30, seed=6, burst=0)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    owned = [r["id"] for r in sandbox.crm.records("Contacts") if sandbox.crm.owner_of(r["id"]) == "19x5"]
    for record_id in owned[:3]:
        sandbox.crm.delete(record_id)
    connector = connector_for(sandbox, read_deletions=True, sync_type="user")
    assert connector.reads_deletions is True
    gone = list(connector.read_deletions("Contacts", Cursor(start), read_until()))
    assert sorted(r.record_id for r in gone) == sorted(owned[:3])
    assert all(r.deleted and r.merged_into is None and r.modstamp >= start for r in gone)
    keys = [(r.modstamp, r.record_id) for r in gone]
    assert keys == sorted(keys)
    # Resuming from where the listing ended lists nothing again; from a cursor inside its batch
    # (of more than one second: asked again, it may hold ids it did not) the batch comes whole
    # again; a look-back cursor lists its second again.
    kept = connector.completed_cursor
    assert kept is not None and list(connector.read_deletions("Contacts", kept, read_until())) == []
    last = gone[-1]
    inside = connector.read_deletions("Contacts", Cursor(last.modstamp, last.record_id), read_until())
    assert sorted(r.record_id for r in inside) == sorted(owned[:3])
    again = connector.read_deletions("Contacts", Cursor(last.modstamp.replace(microsecond=0)), read_until())
    assert {r.record_id for r in again} >= {last.record_id}
    # A batch that ends after `until` is left for the next run.
    assert list(connector.read_deletions("Contacts", Cursor(start), start)) == []
    sandbox.sync_fails = True
    with pytest.raises(ConnectorError) as failed:
        list(connector.read_deletions("Contacts", Cursor(start), read_until()))
    assert failed.value.action is Action.FAIL and "read_deletions" in str(failed.value)
    off = connector_for(sandbox)
    assert off.reads_deletions is False
    with pytest.raises(ConnectorError):
        list(off.read_deletions("Contacts", Cursor(start), read_until()))  # off by default


def test_the_delete_action_is_one_delete_call_per_record(sandbox: VtigerSandbox) -> None:
    ids = [
        sandbox.crm.create("Contacts", lastname=f"Erase {i}", email=f"e{i}@example.test") for i in range(3)
    ]
    connector = connector_for(sandbox)
    results = connector.write(
        [
            RecordUpdate("Contacts", ids[0], {}, WriteAction.DELETE),
            RecordUpdate("Contacts", ids[1], {}, WriteAction.DELETE),
            RecordUpdate("Contacts", ids[0], {}, WriteAction.DELETE),  # gone already: done
            RecordUpdate("Contacts", "11x1", {}, WriteAction.DELETE),  # an id of another module
        ]
    )
    assert [r.ok for r in results] == [True, True, True, False]
    assert results[2].message == "already deleted"  # what was asked: the record is not there
    assert results[3].error_code == "INVALID_ID_ATTRIBUTE"
    assert sandbox.calls["delete"] == 3  # the foreign id is refused before any call
    assert [r["id"] for r in sandbox.crm.records("Contacts")] == [ids[2]]


def test_write_answers_come_call_by_call(sandbox: VtigerSandbox) -> None:
    ids = [
        sandbox.crm.create("Contacts", lastname=f"Batch {i}", email=f"b{i}@example.test") for i in range(3)
    ]
    connector = connector_for(sandbox)
    batches = connector.write_batches([RecordUpdate("Contacts", i, {"emailoptout": True}) for i in ids])
    assert next(batches) == {0: WriteResult(ids[0], True)}
    assert sandbox.calls["revise"] == 1, "the first answer waited for later calls"
    assert [dict(b) for b in batches] == [{1: WriteResult(ids[1], True)}, {2: WriteResult(ids[2], True)}]


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (True, "1"),
        ("true", "1"),
        ("yes", "1"),
        (1, "1"),
        ("on", "1"),
        (False, "0"),
        ("false", "0"),
        (None, "0"),
    ],
)
def test_checkboxes_are_written_as_the_server_takes_them(
    sandbox: VtigerSandbox, value: Any, stored: str
) -> None:
    record_id = sandbox.crm.create(
        "Contacts", lastname="Box", email="box@example.test", emailoptout=stored == "0"
    )
    results = connector_for(sandbox).write([RecordUpdate("Contacts", record_id, {"emailoptout": value})])
    assert results[0].ok, results
    assert sandbox.crm.get(record_id)["emailoptout"] == stored  # type: ignore[index]


def test_a_checkbox_value_that_is_not_one_or_zero_is_refused_before_any_call(sandbox: VtigerSandbox) -> None:
    record_id = sandbox.crm.create("Contacts", lastname="Box", email="box@example.test")
    results = connector_for(sandbox).write([RecordUpdate("Contacts", record_id, {"emailoptout": "maybe"})])
    assert results[0].error_code == "INVALID_VALUE" and sandbox.calls["revise"] == 0


def test_a_lookback_cursor_reads_every_record_of_its_second_and_after(sandbox: VtigerSandbox) -> None:
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=3)
    before = _crowd(sandbox.crm, 2, moment - dt.timedelta(seconds=1))
    at = _crowd(sandbox.crm, 3, moment)
    after = _crowd(sandbox.crm, 2, moment + dt.timedelta(seconds=1))
    connector = connector_for(sandbox)
    resumed = connector.resume_from(Cursor(moment + dt.timedelta(seconds=1), after[-1]))
    assert resumed == Cursor(moment + dt.timedelta(seconds=1) - connector.lookback)
    assert connector.lookback == dt.timedelta(minutes=5)
    read = [r.record_id for r in connector.read_changes("Contacts", FIELDS, Cursor(moment), read_until())]
    assert read == sorted(at) + sorted(after) and not set(before) & set(read)
    mid = sorted(at)[0]
    rest = [
        r.record_id for r in connector.read_changes("Contacts", FIELDS, Cursor(moment, mid), read_until())
    ]
    assert rest == sorted(at)[1:] + sorted(after)


# -- the install's time zone --------------------------------------------------------------------

BERLIN_FALL_BACK = dt.datetime(2026, 10, 25, 1, 0, tzinfo=dt.UTC)  # 03:00 CEST becomes 02:00 CET


def test_modifiedtime_in_a_non_utc_zone_is_read_back_as_utc() -> None:
    with VtigerSandbox(VtigerCrm(privacy_guard=False, timezone="America/Los_Angeles")) as server:
        moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=10)
        record_id = server.crm.create("Contacts", lastname="Zone", email="zone@example.test", at=moment)
        served = server.crm.get(record_id)["modifiedtime"]  # type: ignore[index]
        assert served == moment.astimezone(ZoneInfo("America/Los_Angeles")).strftime("%Y-%m-%d %H:%M:%S")
        connector = connector_for(server, server_timezone="America/Los_Angeles")
        (record,) = connector.read_changes(
            "Contacts", FIELDS, Cursor(moment - dt.timedelta(seconds=1)), read_until()
        )
        assert record.modstamp == moment
        # Read as if the install were UTC, the same change would sit hours away from the truth.
        wrong = connector_for(server)
        assert [r.modstamp for r in wrong.read_changes("Contacts", FIELDS, Cursor(), read_until())] != [
            moment
        ]


# 45 minutes: a look-back that reaches back into the first pass of the repeated hour.
@pytest.mark.parametrize("lookback", [dt.timedelta(0), dt.timedelta(minutes=5), dt.timedelta(minutes=45)])
def test_runs_across_the_autumn_hour_lose_no_change_and_read_none_twice(lookback: dt.timedelta) -> None:
    """Europe/Berlin repeats 02:00-03:00 on 2026-10-25: the stamps of that hour are ambiguous.
    Runs every 25 minutes, each creating the changes made since the one before, as a real CRM
    would show them; each run resumes from the last record read (less the look-back)."""
    zero = BERLIN_FALL_BACK
    changes = {  # when each change really happened (UTC) -> the wall clock Vtiger stores
        "F": zero - dt.timedelta(minutes=70),  # 01:50 CEST
        "A": zero - dt.timedelta(minutes=50),  # 02:10 CEST (first pass)
        "B": zero - dt.timedelta(minutes=20),  # 02:40 CEST (first pass)
        "C": zero + dt.timedelta(minutes=5),  # 02:05 CET (second pass)
        "D": zero + dt.timedelta(minutes=30),  # 02:30 CET (second pass)
        "E": zero + dt.timedelta(minutes=70),  # 03:10 CET
    }
    runs = [zero - dt.timedelta(minutes=65), *(zero + dt.timedelta(minutes=m) for m in (-15, 10, 35, 40, 90))]
    crm = VtigerCrm(privacy_guard=False, timezone="Europe/Berlin")
    with VtigerSandbox(crm) as server:
        connector = connector_for(server, server_timezone="Europe/Berlin")
        names: dict[str, str] = {}
        cursor = Cursor()
        seen: list[tuple[str, dt.datetime]] = []
        for until in runs:
            for name, moment in changes.items():
                if moment <= until and name not in names:
                    names[name] = crm.create(
                        "Contacts", lastname=name, email=f"{name}@example.test", at=moment
                    )
            since = connector.resume_from(cursor, lookback) if cursor.modstamp else cursor
            for record in connector.read_changes("Contacts", FIELDS, since, until):
                assert record.modstamp <= until
                seen.append((record.record_id, record.modstamp))
                cursor = Cursor(record.modstamp, record.record_id)
        by_name = {v: k for k, v in names.items()}
        read = [by_name[record_id] for record_id, _ in seen]
        assert set(read) == set(changes), f"lost: {set(changes) - set(read)}"
        if not lookback:
            assert sorted(read) == sorted(set(read)), f"read twice: {read}"
        for record_id, modstamp in seen:
            truth = changes[by_name[record_id]]
            # Never earlier than the truth (a look-back filter would drop it), at most an hour late.
            assert truth <= modstamp <= truth + dt.timedelta(hours=1)


def test_an_unknown_server_timezone_is_one_line_naming_the_setting(sandbox: VtigerSandbox) -> None:
    with pytest.raises(ValueError) as refused:
        connector_for(sandbox, server_timezone="Mars/Olympus_Mons")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("server_timezone: 'Mars/Olympus_Mons' is not a time zone")
    assert "IANA" in message
    # The name the setting had before still works.
    assert connector_for(sandbox, timezone="Europe/Berlin").zone == ZoneInfo("Europe/Berlin")


def test_describe_of_a_module_the_install_lacks_is_a_one_line_config_error() -> None:
    crm = VtigerCrm(privacy_guard=False, missing_modules=("Leads",))
    with VtigerSandbox(crm) as server, pytest.raises(ConnectorError) as refused:
        connector_for(server).describe("Leads")
    assert refused.value.rule.fault is Fault.CONFIG and refused.value.action is Action.FAIL
    message = str(refused.value)
    assert "\n" not in message and "'Leads'" in message and "enable the module" in message


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
    assert len(list(connector.read_changes("Contacts", FIELDS, Cursor(), read_until()))) == 120
    assert sum(sandbox.faults_injected.values()) > 0
    sandbox.faults.reset()
    sandbox.faults.update(request_limit_after=0)
    with pytest.raises(ConnectorError) as stopped:
        list(connector.read_changes("Contacts", FIELDS, Cursor(), read_until()))
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
        list(connector.read_changes("Contacts", ["email FROM Leads;--"], Cursor(), read_until()))
    with pytest.raises(ConnectorError) as missing:
        list(connector.read_changes("Contacts", ["nosuchfield"], Cursor(), read_until()))
    assert "nosuchfield" in str(missing.value)
    assert sandbox.calls["query"] == 0


@pytest.mark.parametrize(("module", "mapping"), [("Contacts", "contacts"), ("Leads", "leads")])
def test_the_mappings_personal_fields_are_written_by_one_revise(
    sandbox: VtigerSandbox, module: str, mapping: str
) -> None:
    from pathlib import Path

    from consentsync.mapping import load_mapping

    spec = load_mapping(
        Path(__file__).resolve().parents[2] / "connectors/consentsync_vtiger/mappings" / f"{mapping}.yaml"
    ).spec
    record_id = sandbox.crm.create(
        module, firstname="Ada", lastname="Lovelace", email="ada@example.test", phone="+44 20 7946 0000"
    )
    fields = {"emailoptout": "1", **spec.personal_fields}
    (result,) = connector_for(sandbox).write([RecordUpdate(module, record_id, fields)])
    assert result.ok, result
    stored = sandbox.crm.get(record_id)
    assert stored is not None and sandbox.calls["revise"] == 1
    assert (stored["firstname"], stored["lastname"], stored["email"], stored["phone"]) == (
        "",
        "Erased",
        "",
        "",
    )
    assert stored["emailoptout"] == "1"


def test_a_login_whose_challenge_another_application_replaced_is_tried_again(sandbox: VtigerSandbox) -> None:
    """Vtiger keeps one challenge per user: another process or application logging in as the
    same user between our challenge and our login makes Vtiger refuse the right key
    (INVALID_USER_CREDENTIALS). That is not a wrong key: a fresh challenge logs in."""
    connector = connector_for(sandbox)
    original = connector.client.request
    raced = []

    def request(operation: str, params: Any, **kwargs: Any) -> Any:
        answer = original(operation, params, **kwargs)
        if operation == "getchallenge" and not raced:
            # The other application's challenge, taken before our login arrives.
            raced.append(connector_for(sandbox).client.request("getchallenge", params, authenticated=False))
        return answer

    connector.client.request = request  # type: ignore[method-assign]
    connector.check()
    assert raced and connector.usage.per_endpoint["login"] == 2


def test_an_unknown_username_is_named_at_the_challenge(sandbox: VtigerSandbox) -> None:
    """8.2.0 answers getchallenge for a username it does not know with ACCESS_DENIED: a refusal
    of the credentials (exit 77), one line naming the username, not 'permission denied'."""
    connector = connector_for(sandbox, username="nobody")
    with pytest.raises(ConnectorError) as refused:
        connector.check()
    assert refused.value.rule.credentials and refused.value.action is Action.FAIL
    message = str(refused.value)
    assert "'nobody'" in message and "check the username" in message and "\n" not in message
    assert connector.usage.per_endpoint["getchallenge"] == 1 and "login" not in connector.usage.per_endpoint


def test_an_unknown_username_is_not_taken_for_a_missing_module(sandbox: VtigerSandbox) -> None:
    """The first call of a run is often describe, which reads ACCESS_DENIED as a module the
    install lacks: the login's refusal of the username must not be read so."""
    with pytest.raises(ConnectorError) as refused:
        connector_for(sandbox, username="nobody").describe("Contacts")
    assert refused.value.rule.credentials and "check the username" in str(refused.value)
    assert "enable the module" not in str(refused.value)


def test_a_crowded_second_emptied_mid_read_ends_the_read_with_what_was_held(
    sandbox: VtigerSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every record of the second still unread deleted between two windows (a mass delete while
    a mass update's second is walked): the windows stepped back to came back empty, and an empty
    one behind the step back failed the run (an IndexError) instead of ending the second."""
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    crowd = sorted(_crowd(sandbox.crm, 250, moment), key=lambda i: int(i.split("x")[1]))
    answer = sandbox.crm.query
    answered = []

    def query_then_users_delete(vtql: str) -> list[dict[str, str]]:
        rows = answer(vtql)
        answered.append(vtql)
        if len(answered) == 2:
            for gone in crowd:
                sandbox.crm.delete(gone)
        return rows

    monkeypatch.setattr(sandbox.crm, "query", query_then_users_delete)
    connector = connector_for(sandbox)
    seen = [r.record_id for r in connector.read_changes("Contacts", FIELDS, Cursor(), read_until())]
    assert seen == crowd[:190]  # the two windows read before the delete, each once, in order
