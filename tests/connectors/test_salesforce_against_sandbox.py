"""The Salesforce connector over HTTPS against the sandbox: reads, writes, limits and faults."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from consentsync_salesforce import SalesforceConnector
from consentsync_salesforce.sandbox import ApiError, SalesforceSandbox

from consentsync.sdk import BudgetExhausted, ConnectorError, Cursor, RecordUpdate, WriteAction, WriteResult
from tests.connectors.against_sandbox import (
    assert_budget_stops_a_full_read,
    connector_settings,
    read_until,
)
from tests.connectors.trust import check_with_requests_ca_bundle_set
from tests.sandbox.serving import serve_seeded

FIELDS = ["Email", "HasOptedOutOfEmail", "DoNotCall"]


@pytest.fixture
def sandbox() -> Iterator[SalesforceSandbox]:
    yield from serve_seeded(SalesforceSandbox(), lambda server: server.org.seed(450, seed=3))


def connector_for(sandbox: SalesforceSandbox, **extra: Any) -> SalesforceConnector:
    settings = connector_settings(sandbox.connection_settings(), {"query_batch_size": 200}, extra)
    return SalesforceConnector("sf-test", settings)


def test_full_read_returns_every_contact_once_in_cursor_order(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox)
    records = list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))
    expected = sandbox.org.count("Contact")
    assert len(records) == expected == len({r.record_id for r in records})
    keys = [(r.modstamp, r.record_id) for r in records]
    assert keys == sorted(keys)
    assert sandbox.calls["queryMore"] >= expected // 200 - 1  # paged at 200


def test_cursor_resumes_inside_a_second_shared_by_many_records(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox)
    everything = list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))
    # Stop in the middle of the largest group of records sharing one SystemModstamp.
    stamps: dict[datetime, list[int]] = {}
    for index, record in enumerate(everything):
        stamps.setdefault(record.modstamp, []).append(index)
    crowded = max(stamps.values(), key=len)
    assert len(crowded) > 3
    middle = everything[crowded[len(crowded) // 2]]
    rest = list(
        connector.read_changes("Contact", FIELDS, Cursor(middle.modstamp, middle.record_id), read_until())
    )
    assert [r.record_id for r in rest] == [r.record_id for r in everything[crowded[len(crowded) // 2] + 1 :]]


def test_signpost_leaves_later_changes_for_the_next_run(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox)
    cutoff = datetime.now(UTC) - timedelta(hours=1)
    before = list(connector.read_changes("Contact", FIELDS, Cursor(), cutoff))
    assert all(r.modstamp <= cutoff for r in before)


def test_write_reports_per_record_results_and_retries_locked_rows(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox, lock_retries=2)
    ids = [r["Id"] for r in sandbox.org.records("Contact")[:250]]
    sandbox.faults.lock_records(ids[0], attempts=1)  # locked once, then free
    sandbox.faults.lock_records(ids[1])  # locked for good
    updates = [RecordUpdate("Contact", i, {"HasOptedOutOfEmail": True}) for i in ids]
    updates.append(RecordUpdate("Contact", "003000000000000AAA", {"HasOptedOutOfEmail": True}))
    results = connector.write(updates)
    assert len(results) == 251
    assert results[0].ok
    assert not results[1].ok and results[1].error_code == "UNABLE_TO_LOCK_ROW" and results[1].retryable
    assert not results[-1].ok and not results[-1].retryable
    assert all(r.ok for r in results[2:-1])
    assert sandbox.org.get(ids[5])["HasOptedOutOfEmail"] is True
    assert sandbox.calls["composite"] >= 2  # 251 records: at least two calls of at most 200


def test_locked_rows_are_retried_without_holding_back_the_calls_other_answers(
    sandbox: SalesforceSandbox,
) -> None:
    connector = connector_for(sandbox, lock_retries=2)
    ids = [r["Id"] for r in sandbox.org.records("Contact")[:250]]
    sandbox.faults.lock_records(ids[3], attempts=1)
    batches = connector.write_batches([RecordUpdate("Contact", i, {"DoNotCall": True}) for i in ids])
    first = next(batches)
    assert set(first) == set(range(200)) - {3}, "the first call's answers were held back"
    assert sandbox.calls["composite"] == 1
    second = next(batches)
    assert set(second) == set(range(200, 250)) and sandbox.calls["composite"] == 2
    retried = next(batches)
    assert set(retried) == {3} and retried[3].ok
    assert list(batches) == []
    assert sandbox.org.get(ids[3])["DoNotCall"] is True


def test_the_delete_action_deletes_in_calls_of_200_ids(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox)
    ids = [r["Id"] for r in sandbox.org.records("Contact")[:201]]
    sandbox.org.delete(ids[7])  # a user got there first
    deletes = [RecordUpdate("Contact", i, {}, WriteAction.DELETE) for i in ids]
    deletes.append(RecordUpdate("Contact", "003x,003y", {}, WriteAction.DELETE))
    deletes.append(RecordUpdate("Contact", "003000000000000AAA", {}, WriteAction.DELETE))
    batches = list(connector.write_batches(deletes))
    assert [len(b) for b in batches] == [1, 200, 2], "one answer for the bad id, then one per call"
    results = {position: result for batch in batches for position, result in batch.items()}
    assert sorted(results) == list(range(len(deletes)))
    assert all(results[i].ok for i in range(201)), "an id already in the recycle bin counts as deleted"
    assert results[201].error_code == "MALFORMED_ID" and not results[201].retryable
    assert results[202].error_code == "INVALID_CROSS_REFERENCE_KEY" and not results[202].ok
    assert sandbox.calls["composite"] == 2
    assert all(sandbox.org.get(i)["IsDeleted"] for i in ids)


def test_updates_and_deletes_in_one_write(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox)
    kept, erased = (r["Id"] for r in sandbox.org.records("Contact")[:2])
    results = connector.write(
        [
            RecordUpdate("Contact", erased, {}, WriteAction.DELETE),
            RecordUpdate("Contact", kept, {"HasOptedOutOfEmail": True}),
        ]
    )
    assert [r.record_id for r in results] == [erased, kept] and all(r.ok for r in results)
    assert sandbox.org.get(erased)["IsDeleted"] and sandbox.org.get(kept)["HasOptedOutOfEmail"]


def test_deletions_and_merges_come_in_the_cursor_stream(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox)
    everything = list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))
    last = everything[-1]
    cursor = Cursor(last.modstamp, last.record_id)
    survivor, merged, deleted = (r.record_id for r in everything[:3])
    sandbox.org.clock = lambda: last.modstamp + timedelta(seconds=30)
    sandbox.org.merge(survivor, merged)
    sandbox.org.clock = lambda: last.modstamp + timedelta(seconds=60)
    sandbox.org.delete(deleted)
    changes = list(connector.read_changes("Contact", FIELDS, cursor, read_until()))
    assert [(r.record_id, r.deleted, r.merged_into) for r in changes] == [
        (survivor, False, None),
        (merged, True, survivor),
        (deleted, True, None),
    ]
    assert changes[1].modstamp == last.modstamp + timedelta(seconds=30)
    # A merged record's and a deleted one's last values come (the engine keeps a no from them).
    assert changes[2].fields["Id"] == deleted and "IsDeleted" not in changes[2].fields
    assert changes[1].fields["Id"] == merged and "IsDeleted" not in changes[1].fields
    assert "IsDeleted" not in changes[0].fields and changes[0].fields["Email"]
    by_id = list(connector.read_records("Contact", FIELDS, [survivor, merged]))
    assert [r.record_id for r in by_id] == [survivor], "a record read by id must be live"


def test_a_no_ticked_just_before_a_deletion_comes_with_the_deletion(sandbox: SalesforceSandbox) -> None:
    """A user ticks a contact's opt-out and deletes the contact before any read: queryAll's
    recycled row still holds the values (until the recycle bin is emptied), so the deletion
    carries them, as a read of the live record would have given them, in the same query."""
    connector = connector_for(sandbox)
    everything = list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))
    last = everything[-1]
    live = next(r for r in everything if r.fields["HasOptedOutOfEmail"] is False and r.fields["Email"])
    sandbox.org.clock = lambda: last.modstamp + timedelta(seconds=30)
    sandbox.org.update(live.record_id, {"HasOptedOutOfEmail": True, "DoNotCall": True})
    sandbox.org.clock = lambda: last.modstamp + timedelta(seconds=60)
    sandbox.org.delete(live.record_id)
    queries = sandbox.calls["query"]
    since = Cursor(last.modstamp, last.record_id)
    (gone,) = list(connector.read_changes("Contact", FIELDS, since, read_until()))
    assert (gone.record_id, gone.deleted, gone.merged_into) == (live.record_id, True, None)
    assert gone.modstamp == last.modstamp + timedelta(seconds=60), "stamped at the deletion"
    assert gone.fields == {**live.fields, "SystemModstamp": gone.fields.get("SystemModstamp")} | {
        "HasOptedOutOfEmail": True,
        "DoNotCall": True,
    }, "the deletion carries the record's last values, keyed as a live read gives them"
    assert sandbox.calls["query"] == queries + 1, "no call beyond the read's own query"


def test_a_late_commit_inside_the_look_back_is_read_on_the_next_run(
    sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where sObject Get Updated does not serve the object (so the read cannot stop short of an
    open transaction: tests/connectors/test_salesforce_long_transaction.py), the look-back alone
    reads a late commit."""

    def not_served(*_: Any, **__: Any) -> Any:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    monkeypatch.setattr(sandbox, "_h_updated", not_served)
    connector = connector_for(sandbox)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=4)
    sandbox.org.clock = lambda: start
    late = sandbox.org.begin_create("Contact", LastName="Late", Email="late@example.test")
    sandbox.org.clock = lambda: start + timedelta(minutes=1)
    sandbox.org.create("Contact", LastName="Seen", Email="seen@example.test")
    first = list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))
    assert late not in {r.record_id for r in first}
    stored = Cursor(first[-1].modstamp, first[-1].record_id)
    sandbox.org.commit(late)
    assert list(connector.read_changes("Contact", FIELDS, stored, read_until())) == [], "no look-back: lost"
    again = list(connector.read_changes("Contact", FIELDS, connector.resume_from(stored), read_until()))
    assert late in {r.record_id for r in again}
    assert all(r.modstamp >= stored.modstamp - connector.lookback for r in again)


def test_bulk_api_above_the_threshold(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox, bulk_threshold=50, bulk_poll_interval=0.05)
    ids = [r["Id"] for r in sandbox.org.records("Contact")[:60]]
    results = connector.write([RecordUpdate("Contact", i, {"DoNotCall": True}) for i in ids])
    assert all(r.ok for r in results)
    assert all(sandbox.org.get(i)["DoNotCall"] is True for i in ids)
    assert sandbox.calls["composite"] == 0


def test_a_bulk_job_is_answered_as_one_batch(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox, bulk_threshold=50, bulk_poll_interval=0.05)
    contacts = [r["Id"] for r in sandbox.org.records("Contact")[:60]]
    leads = [r["Id"] for r in sandbox.org.records("Lead")[:3]]
    updates = [RecordUpdate("Contact", i, {"DoNotCall": True}) for i in contacts]
    updates += [RecordUpdate("Lead", i, {"DoNotCall": True}) for i in leads]
    batches = [sorted(batch) for batch in connector.write_batches(updates)]
    assert batches == [list(range(60)), list(range(60, 60 + len(leads)))]
    assert sandbox.calls["bulk_create"] == 1 and sandbox.calls["composite"] == 1


def test_writes_cut_into_shares_make_the_calls_one_write_would(sandbox: SalesforceSandbox) -> None:
    """Written side by side, a push group's shares make the calls write_batches would have made:
    each object's updates dealt in whole Collections calls of 200, the deletes likewise, and an
    object above the bulk threshold kept whole, one Bulk API 2.0 job."""
    contacts = [r["Id"] for r in sandbox.org.records("Contact")[:401]]
    leads = [r["Id"] for r in sandbox.org.records("Lead")[:13]]
    updates = [RecordUpdate("Lead", i, {"DoNotCall": True}) for i in leads[:10]]
    updates += [RecordUpdate("Contact", i, {"DoNotCall": True}) for i in contacts]
    updates += [RecordUpdate("Lead", i, {}, WriteAction.DELETE) for i in leads[10:]]
    contact_positions = list(range(10, 411))
    leads_then_deletes = [*range(10), 411, 412, 413]
    assert connector_for(sandbox).write_shares(updates, 4) == [
        leads_then_deletes, contact_positions[:200], contact_positions[200:400], [410]
    ]  # fmt: skip
    assert connector_for(sandbox).write_shares(updates, 2) == [
        [*range(10), *contact_positions[200:400], 411, 412, 413], [*contact_positions[:200], 410]
    ]  # fmt: skip
    bulk = connector_for(sandbox, bulk_threshold=300, bulk_poll_interval=0.05)
    shares = bulk.write_shares(updates, 4)
    assert shares == [contact_positions, list(range(10)), [411, 412, 413]]
    for share in shares:
        assert all(result.ok for result in bulk.write([updates[p] for p in share]))
    assert sandbox.calls["bulk_create"] == 1 and sandbox.calls["composite"] == 2
    assert all(sandbox.org.get(i)["DoNotCall"] is True for i in contacts)


def test_a_bulk_job_that_failed_half_way_answers_what_it_saved(
    sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consentsync_salesforce.sandbox import server

    def save_half_then_fail(job: Any) -> None:
        lines = job.data.decode().splitlines(keepends=True)
        job.data = "".join(lines[: 1 + (len(lines) - 1) // 2]).encode()
        original(job)
        raise server._JobFailed("InternalServerError : the job stopped")

    original = sandbox._run_job
    monkeypatch.setattr(sandbox, "_run_job", save_half_then_fail)
    connector = connector_for(sandbox, bulk_threshold=50, bulk_poll_interval=0.05)
    ids = [r["Id"] for r in sandbox.org.records("Contact")[:60]]
    (answers,) = list(connector.write_batches([RecordUpdate("Contact", i, {"Title": "bulk"}) for i in ids]))
    saved = {ids[i] for i, result in answers.items() if result.ok}
    assert saved == {i for i in ids if sandbox.org.get(i)["Title"] == "bulk"} and len(saved) == 30
    unsaved = [result for result in answers.values() if not result.ok]
    assert len(unsaved) == 30 and all(r.retryable and r.error_code == "BULK_JOB_FAILED" for r in unsaved)


def test_expired_session_is_renewed(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox)
    connector.check()
    sandbox.expire_sessions()
    assert len(list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))) > 0


def test_server_errors_and_resets_are_retried(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox, max_attempts=8)
    sandbox.faults.update(error_rate=0.3, reset_rate=0.1, seed=4)
    records = list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))
    assert len(records) == sandbox.org.count("Contact")
    assert sum(sandbox.faults_injected.values()) > 0


def test_daily_limit_stops_cleanly(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox)
    sandbox.faults.update(request_limit_after=3)
    with pytest.raises(ConnectorError) as raised:
        list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))
    assert raised.value.rule.code == "REQUEST_LIMIT_EXCEEDED" or isinstance(raised.value, BudgetExhausted)


def test_budget_reserve_stops_before_the_org_runs_dry(sandbox: SalesforceSandbox) -> None:
    sandbox.set_api_usage(95_000, 100_000)
    connector = connector_for(sandbox, budget={"daily_reserve_percent": 10})
    assert_budget_stops_a_full_read(connector, "Contact", FIELDS)


def test_run_budget_counts_every_call(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox, budget={"per_run": 3})
    assert_budget_stops_a_full_read(connector, "Contact", FIELDS)
    assert connector.usage.calls == 3


def test_missing_field_is_a_config_error(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox)
    with pytest.raises(ConnectorError, match="Favourite_Colour__c"):
        list(connector.read_changes("Contact", ["Favourite_Colour__c"], Cursor(), read_until()))


def test_wrong_secret_names_the_login_problem(sandbox: SalesforceSandbox) -> None:
    connector = connector_for(sandbox, client_secret="wrong")
    with pytest.raises(ConnectorError, match="login with client_credentials") as raised:
        connector.check()
    assert "wrong" not in str(raised.value)


def test_works_with_requests_ca_bundle_set(
    sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_with_requests_ca_bundle_set(connector_for(sandbox), monkeypatch)


def test_username_password_flow(sandbox: SalesforceSandbox) -> None:
    creds = sandbox.credentials
    connector = connector_for(
        sandbox, auth="password", username=creds.username, password=creds.password, security_token=""
    )
    connector.check()
    assert connector.usage.per_endpoint.get("token") == 1


def test_jwt_bearer_flow(tmp_path: Any) -> None:
    from consentsync_salesforce.sandbox import SalesforceCredentials
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "jwt.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with SalesforceSandbox(credentials=SalesforceCredentials(jwt_public_key_pem=public)) as server:
        connector = SalesforceConnector(
            "sf-jwt",
            {
                "login_url": server.login_url,
                "auth": "jwt",
                "client_id": server.credentials.client_id,
                "username": server.credentials.username,
                "private_key_file": str(key_file),
                "ca_bundle": str(server.ca_cert_path),
            },
        )
        connector.check()
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_file.write_bytes(
            other.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        forged = SalesforceConnector("sf-jwt", {**connector.settings})
        with pytest.raises(ConnectorError, match="login with jwt"):
            forged.check()


def test_responses_slower_than_the_timeout_are_retried_then_given_up(sandbox: SalesforceSandbox) -> None:
    import time

    connector = connector_for(sandbox, timeout=0.5, max_attempts=2)
    connector.check()
    sandbox.faults.update(delay=2.0)
    started = time.monotonic()
    with pytest.raises(ConnectorError) as raised:
        list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))
    assert "Timeout" in str(raised.value)
    assert time.monotonic() - started < 10  # two attempts of 0.5 s and a short backoff, not 2 x 2 s+
    sandbox.faults.reset()
    assert len(list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))) > 0


@pytest.mark.parametrize("mapping", ["contact", "lead", "individual"])
def test_the_anonymise_fields_of_each_mapping_are_accepted(sandbox: SalesforceSandbox, mapping: str) -> None:
    from pathlib import Path

    from consentsync.mapping import load_mapping

    spec = load_mapping(
        Path(__file__).parents[2] / "connectors/consentsync_salesforce/mappings" / f"{mapping}.yaml"
    ).spec
    assert spec.personal_fields, f"{mapping}.yaml names no personal_fields"
    record_id = sandbox.org.records(spec.object)[0]["Id"]
    [result] = connector_for(sandbox).write(
        [RecordUpdate(spec.object, record_id, dict(spec.personal_fields))]
    )
    assert result.ok, (result.error_code, result.message)
    stored = sandbox.org.get(record_id)
    assert {name: stored[name] for name in spec.personal_fields} == spec.personal_fields


def test_a_bulk_job_is_polled_soon_then_less_and_less_often(sandbox: SalesforceSandbox) -> None:
    """A job done in 0.7 s is polled at about 0.1, 0.3 and 0.7 s (not first after the 2 s a fixed
    interval would wait), and a slow one is not polled more often than the interval allows."""
    sandbox.bulk_delay = 0.7
    connector = connector_for(sandbox, bulk_threshold=50)
    ids = [r["Id"] for r in sandbox.org.records("Contact")[:60]]
    assert all(r.ok for r in connector.write([RecordUpdate("Contact", i, {"DoNotCall": True}) for i in ids]))
    assert 3 <= sandbox.calls["bulk_status"] <= 5, sandbox.calls


def test_a_released_query_locator_is_asked_afresh_from_the_last_record(sandbox: SalesforceSandbox) -> None:
    """Salesforce keeps ten query locators per user and releases the oldest when an eleventh is
    opened (and any one unused for 15 minutes): another application reading as the integration
    user mid-read makes our next page INVALID_QUERY_LOCATOR, however often it is asked. The read
    goes on from the last record handed over, every record once, in order."""
    everything = list(connector_for(sandbox).read_changes("Contact", FIELDS, Cursor(), read_until()))
    connector = connector_for(sandbox)
    reader = connector.read_changes("Contact", FIELDS, Cursor(), read_until())
    records = [next(reader) for _ in range(150)]  # inside the first page of 200
    other = connector_for(sandbox)  # another application, the same user: ten queries opened
    others = [other.read_changes("Contact", FIELDS, Cursor(), read_until()) for _ in range(10)]
    for opened in others:
        next(opened)
    sandbox.reset_counters()
    records += list(reader)
    assert [r.record_id for r in records] == [r.record_id for r in everything]
    assert sandbox.calls["query"] == 1  # asked afresh once, the released locator not sent again
    assert sandbox.calls["queryMore"] == 1 + (len(everything) - 150 - 1) // 200


def test_a_locator_released_after_every_page_still_reads_everything_once(
    sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another application opening queries as the user all the time: each page's locator is
    released before it is used. Every fresh query starts after the last record, so the read
    still ends, with every record once and in order."""
    everything = list(connector_for(sandbox).read_changes("Contact", FIELDS, Cursor(), read_until()))
    connector = connector_for(sandbox)
    original = connector.sf.query

    def query_then_release(*args: Any, **kwargs: Any) -> Any:
        answer = original(*args, **kwargs)
        sandbox.expire_query_locators()
        return answer

    monkeypatch.setattr(connector.sf, "query", query_then_release)
    records = list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))
    assert [r.record_id for r in records] == [r.record_id for r in everything]


def test_an_opt_out_ticked_just_before_a_deletion_reaches_the_ledger(tmp_path: Any) -> None:
    """An agent ticks the opt-out and deletes the contact before the next sync: the recycle
    bin's row (queryAll) carries the no to the ledger, and so to the person's other records."""
    from consentsync_salesforce.sandbox.harness import SalesforceHarness

    from consentsync.sdk.harness import open_sync_engine, write_sync_config

    harness = SalesforceHarness()
    harness.start()
    try:
        contact = harness.create_person("leaving@example.test")
        config = write_sync_config(harness, tmp_path)
        assert open_sync_engine(config).run(full=True).status == "succeeded"
        harness.opt_out(contact)
        harness.delete_record(contact)
        engine = open_sync_engine(config)
        assert engine.run().status == "succeeded"
        (latest,) = engine.ledger.subject_view("leaving@example.test")["history"][-1:]
        assert (latest["status"], latest["channel"]) == ("withdrawn", "email"), latest
        assert latest["evidence_ref"].startswith(f"Contact/{contact}"), "the deleted record's no"
    finally:
        harness.stop()


def test_an_update_is_gone_only_where_query_all_finds_no_live_record(
    sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENTITY_IS_DELETED (the recycle bin) and INVALID_CROSS_REFERENCE_KEY (purged) say gone;
    Salesforce words a lookup to a deleted or unknown record the same ways, so a live record so
    refused is not gone (it would be sent nothing more)."""
    connector = connector_for(sandbox)
    live, binned, lookup = (r["Id"] for r in sandbox.org.records("Contact")[:3])
    sandbox.org.delete(binned)
    purged = "003000000000000AAA"
    updates = [
        RecordUpdate("Contact", i, {"HasOptedOutOfEmail": True}) for i in (live, binned, purged, lookup)
    ]
    results = {r.record_id: r for r in connector.write(updates)}
    assert results[live].ok
    assert (results[binned].error_code, results[binned].gone) == ("ENTITY_IS_DELETED", True)
    assert (results[purged].ok, results[purged].gone) == (False, True), results[purged]
    # A lookup to a deleted account refused on a live contact: Salesforce's same words.
    real_calls = connector._write_calls

    def refused_lookup(updates: Any) -> Iterator[dict[int, WriteResult]]:
        for answers in real_calls(updates):
            yield {
                position: WriteResult(
                    lookup, False, "ENTITY_IS_DELETED", "entity is deleted", False, gone=True
                )
                if updates[position].record_id == lookup
                else result
                for position, result in answers.items()
            }

    monkeypatch.setattr(connector, "_write_calls", refused_lookup)
    (answer,) = connector.write([RecordUpdate("Contact", lookup, {"HasOptedOutOfEmail": True})])
    assert (answer.ok, answer.gone, answer.error_code) == (False, False, "ENTITY_IS_DELETED"), answer


def test_the_gone_confirmation_fits_salesforces_uri_limit() -> None:
    """A Bulk job answering ENTITY_IS_DELETED for hundreds of records (a mass delete not listed
    yet): the queryAll confirming them goes in the URL, which Salesforce refuses past 16,384
    bytes (414 URI Too Long)."""
    with SalesforceSandbox() as server:
        server.org.seed(1000, seed=3)
        connector = connector_for(server, bulk_threshold=900)
        ids = [r["Id"] for r in server.org.records("Contact")[:950]]
        for record_id in ids[:800]:
            server.org.delete(record_id)
        sent: list[tuple[str, int]] = []
        original = connector.session.request

        def spy(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            response = original(method, url, *args, **kwargs)
            sent.append((method, len(response.request.url or "")))
            return response

        connector.session.request = spy  # type: ignore[method-assign]
        results = connector.write([RecordUpdate("Contact", i, {"DoNotCall": True}) for i in ids])
    assert sum(1 for r in results if r.gone) == 800
    longest = max(length for method, length in sent if method == "GET")
    assert longest <= 16_384, f"a GET of {longest} bytes: Salesforce answers 414 URI Too Long"
