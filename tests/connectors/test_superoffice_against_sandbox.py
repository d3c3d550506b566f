"""The SuperOffice connector over HTTPS against the sandbox: whole-second reads when SuperOffice
sorts by fractions it does not show, restrictions built from escaped values only, writes and
their per-record results, authentication and budgets."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from consentsync_superoffice import SuperOfficeConnector
from consentsync_superoffice.connector import archive_literal, parse_so_time
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
from consentsync_superoffice.sandbox.tenant import SuperOfficeTenant

from consentsync.sdk import (
    Action,
    BudgetExhausted,
    ConnectorError,
    CrmRecord,
    Cursor,
    Fault,
    RecordUpdate,
    WriteAction,
)
from tests.connectors.against_sandbox import (
    assert_budget_stops_a_full_read,
    connector_settings,
    read_until,
)
from tests.connectors.trust import check_with_requests_ca_bundle_set
from tests.sandbox.serving import serve_seeded

FIELDS = ["Email", "LegalBase_EMARKETING", "Source_EMARKETING", "Updated_EMARKETING", "LegalBase_STORE"]


@pytest.fixture
def so() -> Iterator[SuperOfficeSandbox]:
    yield from serve_seeded(SuperOfficeSandbox(), lambda server: server.tenant.seed(120, seed=4))


def connector_for(so: SuperOfficeSandbox, **extra: Any) -> SuperOfficeConnector:
    # A ready access token rather than the sandbox's refresh-token sign-in: no token call to count.
    signed_in = {
        "base_url": so.tenant_url,
        "auth": "token",
        "access_token": so.issue_token(),
        "ca_bundle": str(so.ca_cert_path),
    }
    return SuperOfficeConnector("so-test", connector_settings(signed_in, {"page_size": 20}, extra))


def test_times_and_literals() -> None:
    assert parse_so_time("2019-06-16T16:48:30.1899348+02:00") == dt.datetime(
        2019, 6, 16, 14, 48, 30, 189934, tzinfo=dt.UTC
    )
    assert parse_so_time("2026-11-23T03:21:24") == dt.datetime(2026, 11, 23, 3, 21, 24, tzinfo=dt.UTC)
    # includeTZOffset's form ("SOTimezone": "2018-12-24T07:34:45-0500"), west and east of UTC.
    assert parse_so_time("2018-12-24T07:34:45-0500") == dt.datetime(2018, 12, 24, 12, 34, 45, tzinfo=dt.UTC)
    assert parse_so_time("2018-12-24T13:34:45+0100") == dt.datetime(2018, 12, 24, 12, 34, 45, tzinfo=dt.UTC)
    assert archive_literal("O'Brien\\") == "'O\\'Brien\\\\'"


def test_hidden_fractions_of_a_second_lose_no_person() -> None:
    # SuperOffice may sort by fractions its archive does not show: within one shown second the
    # rows come in fraction order, not person order, and pages cut through that second.
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    tenant = SuperOfficeTenant(keep_fractions=True)
    with SuperOfficeSandbox(tenant) as so:
        for index in range(90):
            tenant.create_person(
                "P",
                str(index),
                f"p{index}@example.com",
                at=start + dt.timedelta(microseconds=999_000 - index * 10_000),
            )
        for index in range(10):
            tenant.create_person(
                "Q", str(index), f"q{index}@example.com", at=start + dt.timedelta(seconds=1 + index)
            )
        connector = connector_for(so, page_size=25)
        records = list(connector.read_changes("Person", FIELDS, Cursor(), read_until()))
        assert sorted(int(r.record_id) for r in records) == list(range(1, 101))
        keys = [(r.modstamp, int(r.record_id)) for r in records]
        assert keys == sorted(keys)
        middle = records[40]
        rest = list(
            connector.read_changes("Person", FIELDS, Cursor(middle.modstamp, middle.record_id), read_until())
        )
        assert [r.record_id for r in rest] == [r.record_id for r in records[41:]]


def test_record_fields_come_from_consent_infos(so: SuperOfficeSandbox) -> None:
    person = so.tenant.create_person("Ann", "Ek", "Ann.Ek@Example.com")
    so.tenant.set_consent(person.id, "EMARKETING", "FORM", "CONSENT", "newsletter box")
    records = [
        r
        for r in connector_for(so).read_changes("Person", FIELDS, Cursor(), read_until())
        if r.record_id == str(person.id)
    ]
    assert len(records) == 1
    fields = records[0].fields
    assert fields["Email"] == "Ann.Ek@Example.com"
    assert (fields["LegalBase_EMARKETING"], fields["Source_EMARKETING"], fields["LegalBase_STORE"]) == (
        "CONSENT",
        "FORM",
        "LEGITIMATE",
    )
    assert parse_so_time(fields["Updated_EMARKETING"]) == so.tenant.consent(person.id, "EMARKETING").updated


def test_unknown_fields_and_objects_are_config_errors(so: SuperOfficeSandbox) -> None:
    connector = connector_for(so)
    with pytest.raises(ConnectorError) as raised:
        list(
            connector.read_changes(
                "Person", ["LegalBase_EMARKETING", "HasOptedOutOfEmail"], Cursor(), read_until()
            )
        )
    assert raised.value.rule.fault is Fault.CONFIG and "HasOptedOutOfEmail" in str(raised.value)
    with pytest.raises(ConnectorError):
        list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))
    with pytest.raises(ConnectorError):
        connector_for(so, column_updated="consentPerson/updatedDate gt '2000-01-01' or 1 eq 1")


def test_writes_set_and_remove_consents_with_one_result_each(so: SuperOfficeSandbox) -> None:
    tenant = so.tenant
    a = tenant.create_person("A", "A", "a@example.com")
    b = tenant.create_person("B", "B", "b@example.com")
    tenant.set_consent(b.id, "EMARKETING", "FORM", "CONSENT")
    so.faults.fail_records(str(a.id), attempts=1)
    connector = connector_for(so, write_source="SYSTEM", write_comment="by consentsync")
    results = connector.write(
        [
            RecordUpdate("Person", str(a.id), {"LegalBase_EMARKETING": "WITHDRAWN"}),
            RecordUpdate("Person", str(b.id), {"LegalBase_EMARKETING": None}),
            RecordUpdate("Person", "424242", {"LegalBase_EMARKETING": "WITHDRAWN"}),
            RecordUpdate("Person", str(b.id), {"Updated_STORE": "2026-01-01T00:00:00Z"}),
            RecordUpdate("Person", str(b.id), {"LegalBase_STORE": "NO SUCH"}),
        ]
    )
    busy, removed, missing, not_writable, bad_value = results
    assert not busy.ok and busy.retryable and busy.error_code == "ConcurrencyException"
    assert removed.ok and tenant.consent(b.id, "EMARKETING").legal_base.key == "WITHDRAWN"
    assert not missing.ok and not missing.retryable and missing.error_code == "EntityNotFoundException"
    assert missing.gone and not busy.gone and not bad_value.gone
    assert not_writable.error_code == "FIELD_NOT_WRITABLE" and bad_value.error_code == "INVALID_VALUE"
    assert connector.write([RecordUpdate("Person", str(a.id), {"LegalBase_EMARKETING": "WITHDRAWN"})])[0].ok
    row = tenant.consent(a.id, "EMARKETING")
    assert (row.legal_base.key, row.source.key, row.comment) == ("WITHDRAWN", "SYSTEM", "by consentsync")


def test_an_expired_access_token_is_a_config_error_without_the_token(so: SuperOfficeSandbox) -> None:
    connector = connector_for(so)
    connector.check()
    token = connector.config.access_token
    so.expire_sessions()
    with pytest.raises(ConnectorError) as raised:
        connector.check()
    assert raised.value.action is Action.FAIL and raised.value.rule.fault is Fault.CONFIG
    assert token and token not in str(raised.value)


def test_refresh_token_flow_renews_an_expired_session(so: SuperOfficeSandbox) -> None:
    c = so.credentials
    connector = connector_for(
        so,
        auth="refresh_token",
        access_token=None,
        client_id=c.client_id,
        client_secret=c.client_secret,
        refresh_token=c.refresh_token,
        token_url=so.token_url,
    )
    connector.check()
    so.expire_sessions()
    assert len(list(connector.read_changes("Person", FIELDS, Cursor(), read_until()))) == 120
    assert connector.usage.per_endpoint["token"] == 2


def test_application_token_is_sent_for_online() -> None:
    with SuperOfficeSandbox(app_token="online-app") as so:
        so.tenant.seed(3)
        with pytest.raises(ConnectorError):
            connector_for(so).check()
        connector_for(so, app_token="online-app").check()


def test_works_with_requests_ca_bundle_set(so: SuperOfficeSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    check_with_requests_ca_bundle_set(connector_for(so), monkeypatch)


def test_run_budget_stops_the_read(so: SuperOfficeSandbox) -> None:
    # Spent before the read moved: the run stops, as any connector's.
    spent = connector_for(so, budget={"per_run": 1})
    assert_budget_stops_a_full_read(spent, "Person", FIELDS)
    assert spent.usage.calls == 1
    # Spent after it handed persons over: the read stops as well (the engine keeps what it
    # handed over with the position reached: its token); the next read goes on from there.
    connector = connector_for(so, budget={"per_run": 10})
    first: list[CrmRecord] = []
    with pytest.raises(BudgetExhausted):
        first.extend(connector.read_changes("Person", FIELDS, Cursor(), read_until()))
    assert connector.usage.calls == 10 and 0 < len(first) < len(so.tenant.persons)
    position = connector.completed_cursor
    assert position is not None and position.token is not None
    rest = list(connector_for(so).read_changes("Person", FIELDS, position, read_until()))
    read = [r.record_id for r in first + rest]
    assert sorted(read) == sorted(str(p) for p in so.tenant.persons), "a person lost or read twice"


def test_hard_request_limit_stops_cleanly(so: SuperOfficeSandbox) -> None:
    so.faults.update(request_limit_after=2)
    with pytest.raises(ConnectorError) as raised:
        list(connector_for(so).read_changes("Person", FIELDS, Cursor(), read_until()))
    assert raised.value.action is Action.RATE_LIMITED and raised.value.retry_after == 3600


def test_a_person_changed_in_two_seconds_is_read_once_with_both_changes(so: SuperOfficeSandbox) -> None:
    base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=30)
    person = so.tenant.create_person("Twice", "Changed", "twice@example.com", at=base)
    so.tenant.set_consent(person.id, "EMARKETING", "FORM", "CONSENT", at=base + dt.timedelta(seconds=5))
    connector = connector_for(so)
    records = [
        r
        for r in connector.read_changes("Person", FIELDS, Cursor(), read_until())
        if r.record_id == str(person.id)
    ]
    assert len(records) == 1
    assert records[0].modstamp == base + dt.timedelta(seconds=5)
    assert (records[0].fields["LegalBase_STORE"], records[0].fields["LegalBase_EMARKETING"]) == (
        "LEGITIMATE",
        "CONSENT",
    )


# -- look-back, late commits, deletes, personal fields, answers call by call -------------------


def test_a_lookback_cursor_reads_every_person_of_its_second_and_after() -> None:
    tenant = SuperOfficeTenant()
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=3)
    before = tenant.create_person("B", "Before", "b@example.test", at=moment - dt.timedelta(seconds=1))
    at = [tenant.create_person("A", str(i), f"a{i}@example.test", at=moment) for i in range(3)]
    after = tenant.create_person("C", "After", "c@example.test", at=moment + dt.timedelta(seconds=1))
    with SuperOfficeSandbox(tenant) as server:
        connector = connector_for(server)
        assert connector.lookback == dt.timedelta(minutes=5)
        resumed = connector.resume_from(Cursor(moment, str(after.id)))
        assert resumed == Cursor(moment - dt.timedelta(minutes=5))
        read = [r.record_id for r in connector.read_changes("Person", FIELDS, Cursor(moment), read_until())]
        assert read == [str(p.id) for p in at] + [str(after.id)] and str(before.id) not in read
        # A fraction of a second in the cursor still means its whole second.
        fraction = Cursor(moment + dt.timedelta(microseconds=500_000))
        assert [r.record_id for r in connector.read_changes("Person", FIELDS, fraction, read_until())] == read


def test_a_late_commit_is_read_with_its_first_stamp_through_the_lookback() -> None:
    tenant = SuperOfficeTenant()
    with SuperOfficeSandbox(tenant) as server:
        connector = connector_for(server)
        early = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=20)
        tenant.clock = lambda: early
        late = tenant.begin_late_person(
            "Late", "Person", "late@example.test", [("EMARKETING", "FORM", "WITHDRAWN", "")]
        )
        tenant.clock = lambda: dt.datetime.now(dt.UTC)
        later = tenant.create_person(
            "After", "Person", "after@example.test", at=early + dt.timedelta(seconds=10)
        )
        first = list(connector.read_changes("Person", FIELDS, Cursor(), read_until()))
        assert [r.record_id for r in first] == [str(later.id)]
        tenant.commit_late(late.id)
        stored = Cursor(first[-1].modstamp, first[-1].record_id)
        assert list(connector.read_changes("Person", FIELDS, stored, read_until())) == [], (
            "past the cursor: unseen"
        )
        again = list(connector.read_changes("Person", FIELDS, connector.resume_from(stored), read_until()))
        assert [r.record_id for r in again] == [str(late.id), str(later.id)]
        assert again[0].modstamp == early and again[0].fields["LegalBase_EMARKETING"] == "WITHDRAWN"


def test_write_answers_come_call_by_call(so: SuperOfficeSandbox) -> None:
    ids = sorted(so.tenant.persons)[:3]
    batches = connector_for(so).write_batches(
        [RecordUpdate("Person", str(i), {"LegalBase_EMARKETING": "WITHDRAWN"}) for i in ids]
    )
    first = next(batches)
    assert list(first) == [0] and first[0].ok
    assert so.calls["set_consent"] == 1, "the first answer waited for later calls"
    assert [list(batch) for batch in batches] == [[1], [2]]


def test_the_delete_action_deletes_the_person_and_a_gone_one_counts_as_done(so: SuperOfficeSandbox) -> None:
    keep, doomed = sorted(so.tenant.persons)[:2]
    connector = connector_for(so)
    results = connector.write(
        [
            RecordUpdate("Person", str(doomed), {}, WriteAction.DELETE),
            RecordUpdate("Person", str(doomed), {}, WriteAction.DELETE),  # gone already (404)
            RecordUpdate("Person", "x1", {}, WriteAction.DELETE),
        ]
    )
    assert [r.ok for r in results] == [True, True, False]
    assert so.calls["person_delete"] == 2
    assert doomed not in so.tenant.persons and keep in so.tenant.persons
    read = {r.record_id for r in connector.read_changes("Person", FIELDS, Cursor(), read_until())}
    assert str(doomed) not in read and str(keep) in read
    assert connector.can_delete and not connector.reads_deletions


def test_the_mappings_personal_fields_are_one_patch_after_the_consent_calls(so: SuperOfficeSandbox) -> None:
    from pathlib import Path

    from consentsync.mapping import load_mapping

    spec = load_mapping(
        Path(__file__).resolve().parents[2] / "connectors/consentsync_superoffice/mappings/person.yaml"
    ).spec
    person = so.tenant.person(sorted(so.tenant.persons)[5])
    person.phones["mobilephones"] = ["+47 99 99 99 99"]
    fields = {"LegalBase_EMARKETING": "WITHDRAWN", **spec.personal_fields}
    (result,) = connector_for(so).write([RecordUpdate("Person", str(person.id), fields)])
    assert result.ok, result
    assert (so.calls["set_consent"], so.calls["person_patch"]) == (1, 1)
    assert (person.first_name, person.last_name, person.email, person.phones["mobilephones"]) == (
        "",
        "Erased",
        None,
        [],
    )
    refused = connector_for(so).write([RecordUpdate("Person", str(person.id), {"Firstname": 42})])
    assert refused[0].error_code == "INVALID_VALUE" and so.calls["person_patch"] == 1
    with pytest.raises(ConnectorError) as write_only:
        list(connector_for(so).read_changes("Person", ["Firstname"], Cursor(), read_until()))
    assert write_only.value.rule.fault is Fault.CONFIG


def test_asks_for_utc_dates_tagged_with_their_offset(so: SuperOfficeSandbox) -> None:
    # SO-TimeZone "UTC, includeTZOffset" (WebAPI "Headers"): every date converted to and from UTC
    # and tagged, so no read depends on the tenant's base time zone; the change times read are
    # the tenant's own UTC stamps, to the second.
    seen: list[str | None] = []
    archive = so._h_archive

    def recording(request: Any, provider: str) -> Any:
        seen.append(request.header("SO-TimeZone"))
        return archive(request, provider)

    so._h_archive = recording  # type: ignore[method-assign]
    reader = connector_for(so)
    records = list(reader.read_changes("Person", [*FIELDS, "ConsentUpdated"], Cursor(), read_until()))
    assert seen and set(seen) == {"UTC, includeTZOffset"}
    latest = {row.person_id: row.updated for row in sorted(so.tenant.consent_rows(), key=lambda r: r.updated)}
    assert records and all(
        parse_so_time(r.fields["ConsentUpdated"]) == latest[int(r.record_id)].replace(microsecond=0)
        for r in records
    )


def test_an_update_to_a_person_deleted_in_superoffice_answers_gone(so: SuperOfficeSandbox) -> None:
    # A user deleted the person (the API answers 404 for it, GET included): the engine marks the
    # record gone rather than quarantining it; the live person in the same batch is written.
    tenant = so.tenant
    live, deleted = sorted(tenant.persons)[:2]
    tenant.set_consent(deleted, "EMARKETING", "FORM", "CONSENT")
    tenant.delete_person(deleted)
    connector = connector_for(so)
    so.reset_counters()
    results = connector.write(
        [
            RecordUpdate("Person", str(deleted), {"LegalBase_EMARKETING": "WITHDRAWN"}),
            RecordUpdate("Person", str(live), {"LegalBase_EMARKETING": "WITHDRAWN"}),
            RecordUpdate("Person", str(deleted), {"Comment_EMARKETING": "why"}),  # read first: none
            RecordUpdate("Person", str(deleted), {"Lastname": "Anonymous"}),
        ]
    )
    gone, written, comment, patch = results
    assert (gone.ok, gone.gone, gone.retryable) == (False, True, False)
    assert written.ok and not written.gone
    assert tenant.consent(live, "EMARKETING").legal_base.key == "WITHDRAWN"
    assert (comment.ok, comment.gone) == (False, True) and (patch.ok, patch.gone) == (False, True)
    assert so.calls["person_get"] == 3  # each 404 confirmed by a read of the person


def test_a_refusal_of_a_live_person_is_not_gone(so: SuperOfficeSandbox) -> None:
    person = so.tenant.create_person("No", "Marketing", "no.marketing@example.com").id  # STORE only
    [result] = connector_for(so).write(
        [RecordUpdate("Person", str(person), {"Comment_EMARKETING": "no such consent yet"})]
    )
    assert not result.ok and not result.gone and result.error_code == "NO_CONSENT"


@pytest.mark.parametrize("comment", ["x" * 256, "x" * 300, "\U0001f600" * 128, "\U0001f600" * 200])
def test_a_write_comment_longer_than_the_consent_comment_column_is_refused_at_load(comment: str) -> None:
    # ConsentPerson.comment is String(255) (UTF-16 code units: 128 emoji are 256) and every
    # SetConsent (each withdrawal) carries write_comment: refused when the config loads.
    from consentsync_superoffice.settings import SuperOfficeSettings
    from pydantic import ValidationError

    base = {"base_url": "https://online.superoffice.com/Cust1", "auth": "token", "access_token": "t"}
    with pytest.raises(ValidationError) as raised:
        SuperOfficeSettings.model_validate({**base, "write_comment": comment})
    assert "write_comment" in str(raised.value) and "at most 255" in str(raised.value)
    for fits in ("x" * 255, "\U0001f600" * 127 + "x"):
        assert SuperOfficeSettings.model_validate({**base, "write_comment": fits}).write_comment == fits
    with pytest.raises(ValidationError, match="restriction_time_format"):
        SuperOfficeSettings.model_validate({**base, "restriction_time_format": "%Y-%m-%dT%H:%M:%S"})


def test_a_comment_longer_than_the_column_is_refused_before_any_call(so: SuperOfficeSandbox) -> None:
    person = sorted(so.tenant.persons)[0]
    so.tenant.set_consent(person, "EMARKETING", "FORM", "CONSENT")
    so.reset_counters()
    [result] = connector_for(so).write(
        [RecordUpdate("Person", str(person), {"Comment_EMARKETING": "\U0001f600" * 128})]
    )
    assert not result.ok and result.error_code == "INVALID_VALUE" and "255" in (result.message or "")
    assert so.write_calls == 0
