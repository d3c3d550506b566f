"""The Dynamics connector over HTTPS against the Dataverse sandbox: delta links after a keyset
first read, deleted rows, refused links reloading in full, record filters, lookups, $batch
writes, 429 with Retry-After, token renewal, hostile values in $filter, trust settings."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from consentsync_dynamics import DynamicsConnector
from consentsync_dynamics.connector import odata_literal
from consentsync_dynamics.sandbox.odata import parse_filter
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.sdk import ConnectorError, Cursor, RecordUpdate, WriteAction
from tests.connectors.against_sandbox import connector_settings, read_until
from tests.connectors.trust import check_with_requests_ca_bundle_set
from tests.sandbox.serving import serve_seeded

FIELDS = ["emailaddress1", "donotemail", "donotbulkemail"]
CONSENT_FIELDS = [
    "msdynmkt_contactpointvalue",
    "msdynmkt_value",
    "msdynmkt_purposeid",
    "msdynmkt_contactpointtype",
]


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    yield from serve_seeded(DynamicsSandbox(), lambda server: server.environment.seed(130, seed=4))


def connector_for(dv: DynamicsSandbox, **extra: Any) -> DynamicsConnector:
    settings = connector_settings(dv.connection_settings(), {"page_size": 40, "batch_size": 25}, extra)
    return DynamicsConnector("dyn-test", settings)


def _read(connector: DynamicsConnector, since: Cursor, object_type: str = "contact") -> list[Any]:
    connector.completed_cursor = None
    fields = FIELDS if object_type == "contact" else CONSENT_FIELDS
    return list(connector.read_changes(object_type, fields, since, read_until()))


def test_first_read_is_ordered_and_hands_over_a_delta_link_then_deltas_carry_changes(
    dv: DynamicsSandbox,
) -> None:
    connector = connector_for(dv)
    records = _read(connector, Cursor())
    keys = [(r.modstamp, r.record_id) for r in records]
    assert keys == sorted(keys) and len(records) == dv.environment.count("contact")
    first = connector.completed_cursor
    assert first is not None and first.token and "deltatoken" in first.token
    assert (first.modstamp, first.record_id) == keys[-1]
    assert connector.usage.per_endpoint["query"] >= 2 * (130 // 40)  # the link's pass and the keyset read

    assert _read(connector, first) == []
    quiet = connector.completed_cursor
    assert quiet is not None and quiet.token  # a quiet table gets a new link too (it does not expire)

    ids = [r.record_id for r in records]
    dv.environment.update("contact", ids[3], {"donotemail": True})
    dv.environment.update("contact", ids[7], {"firstname": "Renamed"})
    dv.environment.delete("contact", ids[9])
    before = connector.usage.per_endpoint.get("delta", 0)
    changed = _read(connector, quiet)
    live = [r for r in changed if not r.deleted]
    assert sorted(r.record_id for r in live) == sorted([ids[3], ids[7]])
    assert next(r for r in live if r.record_id == ids[3]).fields["donotemail"] is True
    assert [(r.record_id, r.merged_into, dict(r.fields)) for r in changed if r.deleted] == [
        (ids[9], None, {})
    ]
    assert connector.deleted_rows == 1
    assert connector.usage.per_endpoint["delta"] == before + 1
    assert _read(connector, connector.completed_cursor) == []  # type: ignore[arg-type]


def test_delta_pages_are_followed(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv)
    _read(connector, Cursor())
    cursor = connector.completed_cursor
    assert cursor is not None
    for row in dv.environment.records("contact")[:95]:
        dv.environment.update("contact", row["contactid"], {"donotphone": True})
    changed = _read(connector, cursor)
    assert len(changed) == len({r.record_id for r in changed}) == 95
    assert connector.usage.per_endpoint["delta"] == 3  # 95 changes in pages of 40


@pytest.mark.parametrize("how", ["expired", "forged", "foreign", "new column"])
def test_a_refused_delta_link_means_one_full_reload(dv: DynamicsSandbox, how: str) -> None:
    connector = connector_for(dv)
    _read(connector, Cursor())
    cursor = connector.completed_cursor
    assert cursor is not None and cursor.token
    token = cursor.token
    if how == "expired":
        dv.expire_delta_tokens()
    elif how == "forged":
        token = token.split("%24deltatoken=")[0] + "%24deltatoken=1%2101%2F01%2F2020%2000%3A00%3A00"
    elif how == "foreign":
        token = "https://evil.example" + token[token.index("/api/") :]
    else:
        token = token.replace("donotbulkemail", "donotfax")
    again = _read(connector, Cursor(cursor.modstamp, cursor.record_id, token))
    assert len(again) == dv.environment.count("contact")
    assert connector.full_reloads == 1
    fresh = connector.completed_cursor
    assert fresh is not None and fresh.token and fresh.token.startswith(dv.api_url())
    assert _read(connector, fresh) == []


def test_consent_rows_email_only_by_default_with_lookups_read_by_logical_name(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv)
    rows = _read(connector, Cursor(), "msdynmkt_contactpointconsent4")
    every = dv.environment.records("msdynmkt_contactpointconsent4")
    emails = [r for r in every if r["msdynmkt_contactpointtype"] == 534120000]
    assert 0 < len(rows) == len(emails) < len(every)
    assert all(r.fields["msdynmkt_purposeid"] for r in rows)
    assert "_msdynmkt_purposeid_value" not in rows[0].fields
    # The same rows through the delta, filtered client-side.
    cursor = connector.completed_cursor
    assert cursor is not None
    phone = next(r for r in every if r["msdynmkt_contactpointtype"] != 534120000)
    email = emails[0]
    for row in (phone, email):
        dv.environment.update(
            "msdynmkt_contactpointconsent4",
            row["msdynmkt_contactpointconsent4id"],
            {"msdynmkt_value": 534120002},
        )
    changed = _read(connector, cursor, "msdynmkt_contactpointconsent4")
    assert [r.record_id for r in changed] == [email["msdynmkt_contactpointconsent4id"]]
    everything = _read(connector_for(dv, record_filters={}), Cursor(), "msdynmkt_contactpointconsent4")
    assert len(everything) == len(every)


def test_keyset_mode_resumes_inside_a_shared_second_with_escaped_filters(dv: DynamicsSandbox) -> None:
    connector = connector_for(
        dv,
        change_tracking=False,
        record_filters={"contact": {"lastname": ["O'Brien", "Müller", "') or (1 eq 1"]}},
    )
    records = _read(connector, Cursor())
    wanted = [r for r in dv.environment.records("contact") if r["lastname"] in ("O'Brien", "Müller")]
    assert len(records) == len(wanted) > 0 and connector.completed_cursor is None
    middle = records[len(records) // 2]
    rest = _read(connector, Cursor(middle.modstamp, middle.record_id))
    assert [r.record_id for r in rest] == [r.record_id for r in records[len(records) // 2 + 1 :]]
    with pytest.raises(ConnectorError, match="not a Dataverse row id"):
        _read(connector, Cursor(middle.modstamp, "x' or 1 eq 1"))


def test_odata_literals_escape_what_reaches_a_filter() -> None:
    hostile = "') or (1 eq 1 -- O'Brien ''"
    literal = odata_literal(hostile)
    assert literal == "'') or (1 eq 1 -- O''Brien '''''"[1:].join("''") or literal.startswith("'")
    predicate = parse_filter(f"lastname eq {literal}", {"lastname": "Edm.String"}, "contact")
    assert predicate({"lastname": hostile}) and not predicate({"lastname": "x"})
    assert odata_literal(True) == "true" and odata_literal(534120000) == "534120000"
    assert odata_literal(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"


def test_batch_writes_give_one_result_per_update_and_retry_transient_rows(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv, write_retries=1)
    ids = [r["contactid"] for r in dv.environment.records("contact")[:60]]
    dv.faults.fail_records(ids[0], attempts=1)  # fails once: re-sent and written
    dv.faults.fail_records(ids[1])  # fails every time
    updates = [RecordUpdate("contact", i, {"donotbulkemail": True}) for i in ids]
    updates.append(RecordUpdate("contact", "00000000-0000-0000-0000-000000000001", {"donotbulkemail": True}))
    updates.append(RecordUpdate("contact", "not-a-guid'", {"donotbulkemail": True}))
    updates.append(RecordUpdate("contact", ids[2], {"donotbulkemail": "yes"}))
    results = connector.write(updates)
    assert [r.record_id for r in results] == [u.record_id for u in updates]
    assert results[0].ok and dv.environment.get("contact", ids[0])["donotbulkemail"] is True
    assert not results[1].ok and results[1].retryable and results[1].error_code == "0x80044150"
    assert all(r.ok for r in results[2:60])
    assert (results[60].error_code, results[60].retryable, results[60].gone) == ("0x80040217", False, True)
    assert results[61].error_code == "INVALID_ID"
    assert (results[62].error_code, results[62].retryable) == ("0x80048d19", False)
    assert dv.environment.get("contact", "00000000-0000-0000-0000-000000000001") is None  # If-Match: *
    # 62 requests in batches of 25, the GET confirming the 404 is a missing row, the re-sent failures.
    assert dv.calls["batch"] == 3 + 1 + 1


def test_429_is_waited_out_per_retry_after(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv)
    connector.check()
    dv.faults.update(throttle_after=0, throttle_calls=1, throttle_retry_after=1.5)
    started = time.monotonic()
    assert len(_read(connector, Cursor())) == dv.environment.count("contact")
    assert time.monotonic() - started >= 1.5
    assert dv.throttled == 1


def test_a_long_retry_after_stops_the_read(dv: DynamicsSandbox) -> None:
    from consentsync.sdk import Action

    connector = connector_for(dv, max_rate_limit_wait=2)
    connector.check()
    dv.faults.update(request_limit_after=0)
    with pytest.raises(ConnectorError) as raised:
        _read(connector, Cursor())
    assert raised.value.action is Action.RATE_LIMITED and raised.value.retry_after == 300


def test_expired_tokens_are_renewed(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv)
    connector.check()
    dv.expire_sessions()
    assert len(_read(connector, Cursor())) == dv.environment.count("contact")
    assert connector.usage.per_endpoint["token"] == 2


def test_login_errors_name_the_aadsts_code_and_never_the_secret(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv, client_secret="s3cr3t-wrong-value")
    with pytest.raises(ConnectorError, match="AADSTS7000215") as raised:
        connector.check()
    assert "s3cr3t-wrong-value" not in str(raised.value)
    other = connector_for(dv, scope="https://other.crm.dynamics.com/.default")
    with pytest.raises(ConnectorError, match="AADSTS500011"):
        other.check()


def test_missing_column_and_bad_names_are_config_errors(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv)
    with pytest.raises(ConnectorError, match="favourite_colour"):
        list(connector.read_changes("contact", ["favourite_colour"], Cursor(), read_until()))
    with pytest.raises(ConnectorError, match="logical name"):
        list(connector.read_changes("contact') or true or ('", [], Cursor(), read_until()))


def test_works_with_requests_ca_bundle_set(dv: DynamicsSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    check_with_requests_ca_bundle_set(connector_for(dv), monkeypatch)


def test_describe_reads_the_attributes(dv: DynamicsSandbox) -> None:
    fields = connector_for(dv).describe("contact")
    assert fields["donotemail"].type == "Boolean" and fields["donotemail"].updateable
    assert not fields["modifiedon"].updateable


def test_a_change_between_the_signpost_and_the_first_link_is_not_lost(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv)
    signpost = datetime.now(UTC) - timedelta(seconds=30)  # the run started a while ago
    late = dv.environment.records("contact")[5]["contactid"]
    dv.environment.update("contact", late, {"donotemail": True})  # after the signpost, before the link
    connector.completed_cursor = None
    first = list(connector.read_changes("contact", FIELDS, Cursor(), signpost))
    assert late not in {r.record_id for r in first}  # the signpost holds
    cursor = connector.completed_cursor
    assert cursor is not None and cursor.token and "#consentsync-after=" in cursor.token
    second = _read(connector, cursor)
    assert [r.record_id for r in second] == [late]
    settled = connector.completed_cursor
    assert settled is not None and settled.token and "#" not in settled.token  # caught up once
    assert _read(connector, settled) == []


def test_a_read_waits_for_the_sliding_window_and_completes(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv, page_size=20)
    connector.check()
    dv.set_rate_limit(4, window=2)  # 4 requests in any 2 seconds; the read needs 2 x 7 pages
    started = time.monotonic()
    records = _read(connector, Cursor())
    assert len(records) == dv.environment.count("contact")
    assert dv.throttled >= 1
    assert time.monotonic() - started >= 2  # it waited for the window, per Retry-After


# -- deletions, merges, the delete action, the look-back -----------------------------------------


def test_a_merged_contact_comes_as_merged_into_its_master_in_deltas_and_keyset_reads(
    dv: DynamicsSandbox,
) -> None:
    connector = connector_for(dv)
    _read(connector, Cursor())
    cursor = connector.completed_cursor
    assert cursor is not None
    master, subordinate = (r["contactid"] for r in dv.environment.records("contact")[:2])
    dv.environment.merge("contact", master, subordinate)
    changed = {r.record_id: r for r in _read(connector, cursor)}
    assert changed[subordinate].deleted and changed[subordinate].merged_into == master
    assert not changed[master].deleted and changed[master].merged_into is None
    # A first (keyset) read sees the deactivated subordinate the same way.
    keyset = {r.record_id: r for r in _read(connector_for(dv, change_tracking=False), Cursor())}
    assert keyset[subordinate].deleted and keyset[subordinate].merged_into == master
    assert sum(r.deleted for r in keyset.values()) == 1


def test_a_late_commit_comes_in_the_next_delta_with_its_original_stamp(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv)
    late = dv.environment.begin_late("contact", {"lastname": "Late", "emailaddress1": "late@example.test"})
    stamp = dv.environment.tables["contact"].rows[late]["modifiedon"]
    assert late not in {r.record_id for r in _read(connector, Cursor())}
    cursor = connector.completed_cursor
    assert cursor is not None and cursor.token
    time.sleep(1.1)
    dv.environment.commit_late("contact", late)
    (record,) = _read(connector, cursor)
    assert record.record_id == late and record.modstamp == stamp < datetime.now(UTC) - timedelta(seconds=1)


def test_resume_from_keeps_a_delta_link_and_moves_a_keyset_cursor_back_inclusively(
    dv: DynamicsSandbox,
) -> None:
    connector = connector_for(dv, change_tracking=False)
    records = _read(connector, Cursor())
    last = records[-1]
    token = Cursor(last.modstamp, last.record_id, "https://example.invalid/delta")
    assert connector.resume_from(token) == token
    assert connector.resume_from(Cursor(last.modstamp, last.record_id)) == Cursor(
        last.modstamp - connector.lookback, None, None
    )
    # A cursor without an id reads its whole second (ge), a (stamp, id) cursor only after the id.
    same_second = [r.record_id for r in records if r.modstamp == last.modstamp]
    inclusive = [r.record_id for r in _read(connector, Cursor(last.modstamp))]
    assert inclusive == same_second and last.record_id in inclusive
    assert _read(connector, Cursor(last.modstamp, last.record_id)) == []


def test_the_delete_action_deletes_in_batches_and_a_row_already_gone_counts_as_done(
    dv: DynamicsSandbox,
) -> None:
    connector = connector_for(dv)
    ids = [r["contactid"] for r in dv.environment.records("contact")[:30]]
    dv.environment.delete("contact", ids[5])
    deletes = [RecordUpdate("contact", i, {}, WriteAction.DELETE) for i in ids]
    before = dv.calls["batch"]
    batches = list(connector.write_batches(deletes))
    assert [len(b) for b in batches] == [25, 5]  # one $batch per yield
    assert all(result.ok for batch in batches for result in batch.values())
    assert dv.calls["batch"] == before + 2
    assert not {r["contactid"] for r in dv.environment.records("contact")} & set(ids)


def test_retried_rows_are_answered_when_their_retry_returns_and_the_rest_at_once(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv, write_retries=1)
    ids = [r["contactid"] for r in dv.environment.records("contact")[:30]]
    dv.faults.fail_records(ids[3], attempts=1)
    batches = connector.write_batches([RecordUpdate("contact", i, {"donotphone": True}) for i in ids])
    first = next(batches)
    assert set(first) == set(range(25)) - {3} and all(r.ok for r in first.values())
    assert dv.environment.get("contact", ids[0])["donotphone"] is True  # applied and answered
    rest = list(batches)
    assert [set(b) for b in rest] == [set(range(25, 30)), {3}] and rest[1][3].ok


def test_a_token_endpoint_refusing_without_a_description_is_one_clear_error(dv: DynamicsSandbox) -> None:
    """Every call answered 403, the token request included, with no error_description: a
    ConnectorError naming the refusal (once an IndexError escaped as a traceback)."""
    dv.faults.update(error_rate=1.0, error_status=403)
    connector = connector_for(dv)
    with pytest.raises(ConnectorError, match="refused"):
        connector.describe("contact")


def test_links_are_this_environments_however_its_host_is_spelled() -> None:
    """An environment URL pasted as ``https://Contoso.crm4.dynamics.com``: Dataverse writes its
    nextLink and deltaLink with its own (lower-case) host, the same environment, which must be
    followed (a first read of more than a page failed as "a link outside" the environment).
    Links to any other host, port or with user info still are refused: the token goes nowhere
    else."""
    connector = DynamicsConnector(
        "dyn-case",
        {
            "environment_url": "https://Contoso.CRM4.dynamics.com",
            "token_url": "https://login.microsoftonline.com/tenant/oauth2/v2.0/token",
            "client_id": "app",
            "client_secret": "secret",
        },
    )
    api = "api/data/v9.2/contacts?$select=contactid&$skiptoken=%3Ccookie%3E"
    for ours in (
        f"https://contoso.crm4.dynamics.com/{api}",
        f"https://CONTOSO.crm4.dynamics.com:443/{api}",
        f"HTTPS://Contoso.CRM4.dynamics.com/{api}",
    ):
        assert connector._checked_link(ours) == ours
    for foreign in (
        f"https://contoso.crm4.dynamics.com.example.net/{api}",
        f"https://contoso.crm4.dynamics.com:8443/{api}",
        f"https://someone@contoso.crm4.dynamics.com/{api}",
        f"http://contoso.crm4.dynamics.com/{api}",
        "https://contoso.crm4.dynamics.com/api/data/v9.1/contacts",
        "https://contoso.crm4.dynamics.com:x/api/data/v9.2/contacts",
    ):
        with pytest.raises(ConnectorError, match="link outside"):
            connector._checked_link(foreign)


JOURNEYS = "consentsync_journeys_contact"
MARKETING_FIELD = "purpose_6f0b1c7e0d6a4c1e9a51000000000001"
PROFILING_FIELD = "purpose_6f0b1c7e0d6a4c1e9a51000000000002"


def _consent_row(dv: DynamicsSandbox, address: str, purpose_field: str, **more: Any) -> str:
    purpose = str(uuid.UUID(hex=purpose_field.removeprefix("purpose_")))
    return dv.environment.create(
        "msdynmkt_contactpointconsent4",
        {
            "msdynmkt_contactpointvalue": address,
            "msdynmkt_contactpointtype": 534120000,
            "msdynmkt_value": 534120001,
            "_msdynmkt_purposeid_value": purpose,
            **more,
        },
    )


def test_the_journeys_contact_is_the_contact_with_a_field_per_purpose_saying_whether_it_has_a_row(
    dv: DynamicsSandbox,
) -> None:
    """True where the contact's address has an Email row for the purpose itself (any value, any
    state, the address in any letter case) or where it has no address; empty where a row is
    missing, a topic's row or a phone number's row standing for none."""
    env = dv.environment
    made = {
        name: env.create("contact", {"lastname": name, "emailaddress1": address})
        for name, address in [
            ("none", "journeys-none@example.test"),
            ("marketing", "Journeys-Marketing@Example.test"),
            ("topic", "journeys-topic@example.test"),
            ("text", "journeys-text@example.test"),
            ("inactive", "journeys-inactive@example.test"),
            ("blank", None),
        ]
    }
    _consent_row(dv, "journeys-marketing@example.test", MARKETING_FIELD, msdynmkt_value=534120002)
    _consent_row(
        dv, "journeys-topic@example.test", MARKETING_FIELD, _msdynmkt_topicid_value=str(uuid.uuid4())
    )
    _consent_row(dv, "journeys-text@example.test", MARKETING_FIELD, msdynmkt_contactpointtype=534120001)
    _consent_row(dv, "journeys-inactive@example.test", PROFILING_FIELD, statecode=1)
    connector = connector_for(dv)
    assert {MARKETING_FIELD, PROFILING_FIELD} <= set(connector.describe(JOURNEYS))
    fields = ["emailaddress1", MARKETING_FIELD, PROFILING_FIELD]
    batches = dv.calls["batch"]
    records = {r.record_id: r for r in connector.read_changes(JOURNEYS, fields, Cursor(), read_until())}
    assert {r.object_type for r in records.values()} == {JOURNEYS}
    assert len(records) == env.count("contact")
    shown = {
        name: [records[i].fields[f] for f in (MARKETING_FIELD, PROFILING_FIELD)] for name, i in made.items()
    }
    assert shown == {
        "none": [None, None],
        "marketing": [True, None],
        "topic": [None, None],
        "text": [None, None],
        "inactive": [None, True],
        "blank": [True, True],  # no address: nothing to create
    }
    # One look-up of the consent rows per page read (the page holds 40 contacts).
    assert dv.calls["batch"] - batches == -(-len(records) // 40)
    with pytest.raises(ConnectorError, match="purpose_00000000000000000000000000000009"):
        list(
            connector.read_changes(
                JOURNEYS, ["purpose_00000000000000000000000000000009"], Cursor(), read_until()
            )
        )


def test_a_pushed_true_creates_the_missing_row_once_and_the_read_leaves_it_out_until_someone_changes_it(
    dv: DynamicsSandbox,
) -> None:
    env = dv.environment
    contact = env.create("contact", {"lastname": "No", "emailaddress1": " Said.No@example.test "})
    other = env.create("contact", {"lastname": "Yes", "emailaddress1": "said.yes@example.test"})
    gone = env.create("contact", {"lastname": "Gone", "emailaddress1": "gone@example.test"})
    env.delete("contact", gone)
    connector = connector_for(dv)
    read = _read(connector, Cursor(), "msdynmkt_contactpointconsent4")
    cursor = connector.completed_cursor
    assert cursor is not None and read
    updates = [
        RecordUpdate(JOURNEYS, contact, {MARKETING_FIELD: True, PROFILING_FIELD: True}),
        RecordUpdate(JOURNEYS, contact.upper(), {MARKETING_FIELD: True}),  # the same, twice
        RecordUpdate(JOURNEYS, other, {MARKETING_FIELD: False}),  # never anything but true
        RecordUpdate(JOURNEYS, other, {"donotemail": True}),
        RecordUpdate(JOURNEYS, gone, {MARKETING_FIELD: True}),  # no contact: nothing to create
        RecordUpdate(JOURNEYS, contact, {}, WriteAction.DELETE),  # the contact's, not this view's
    ]
    results = connector.write(updates)
    assert [r.ok for r in results] == [True, True, False, False, True, True]
    assert results[2].error_code == results[3].error_code == "INVALID_FIELD"
    mine = [r for r in env.records("msdynmkt_contactpointconsent4") if r["msdynmkt_reason"]]
    assert sorted(r["_msdynmkt_purposeid_value"][-1] for r in mine) == ["1", "2"]
    assert {r["msdynmkt_contactpointvalue"] for r in mine} == {"Said.No@example.test"}
    assert connector.rows_created == 2
    # Written again (a lost answer, a crash): the rows are found, none is added.
    assert all(r.ok for r in connector.write(updates[:2]))
    assert len([r for r in env.records("msdynmkt_contactpointconsent4") if r["msdynmkt_reason"]]) == 2
    # Read back, they are the connector's own: left out of the consent rows, delta or keyset.
    assert _read(connector, cursor, "msdynmkt_contactpointconsent4") == []
    assert {r.record_id for r in _read(connector_for(dv), Cursor(), "msdynmkt_contactpointconsent4")} == {
        r.record_id for r in read
    }
    # Changed by someone else (the person opts in on a preference center): read as any row.
    env.update(
        "msdynmkt_contactpointconsent4",
        mine[0]["msdynmkt_contactpointconsent4id"],
        {"msdynmkt_value": 534120001},
    )
    assert [r.record_id for r in _read(connector, cursor, "msdynmkt_contactpointconsent4")] == [
        mine[0]["msdynmkt_contactpointconsent4id"]
    ]
    # The engine writes them only for an evidenced no.
    assert connector.irreversible(updates[0]) == {MARKETING_FIELD, PROFILING_FIELD}
    assert connector.irreversible(RecordUpdate("contact", contact, {"donotemail": True})) == set()


def test_a_create_sent_again_finds_the_first(dv: DynamicsSandbox) -> None:
    """A create re-sent after its answer was lost (before the look-up could see the row) answers
    that the row exists: one row, done. So does a create an alternate key an admin defined on the
    table refuses (someone else's row for the address and purpose)."""
    connector = connector_for(dv)
    pair = ("again@example.test", "6f0b1c7e-0d6a-4c1e-9a51-000000000001")
    first = connector._send_creates([pair], {pair: "again@example.test"})
    second = connector._send_creates([pair], {pair: "again@example.test"})
    assert first[pair].ok and second[pair].ok and connector.rows_created == 1
    rows = dv.environment.records("msdynmkt_contactpointconsent4")
    assert [r["msdynmkt_contactpointvalue"] for r in rows].count("again@example.test") == 1
    dv.environment.add_alternate_key(
        "msdynmkt_contactpointconsent4",
        "contactpoint_purpose",
        ["msdynmkt_contactpointvalue", "_msdynmkt_purposeid_value"],
    )
    theirs = _consent_row(dv, "other@example.test", MARKETING_FIELD)
    other = ("other@example.test", pair[1])
    assert connector._send_creates([other], {other: "OTHER@example.test"})[other].ok
    same = [
        r
        for r in dv.environment.records("msdynmkt_contactpointconsent4")
        if r["msdynmkt_contactpointvalue"].lower() == "other@example.test"
    ]
    assert [r["msdynmkt_contactpointconsent4id"] for r in same] == [theirs] and connector.rows_created == 1


def test_a_page_of_many_addresses_is_looked_up_in_one_batch_of_long_gets(dv: DynamicsSandbox) -> None:
    """A page of 900 contacts: their addresses go in a few GETs of one $batch (a GET's URL may
    be 64 KB there), every one answered; an address with a quote in it is an OData literal."""
    env = dv.environment
    made = {}
    for number in range(900):
        address = f"o'neill.person-{number:04d}@a-rather-long-domain.example.test"
        made[env.create("contact", {"lastname": "Many", "emailaddress1": address})] = number
        if number % 3 == 0:
            _consent_row(dv, address.upper(), MARKETING_FIELD)
    connector = connector_for(dv, page_size=5000)
    batches = dv.calls["batch"]
    records = list(
        connector.read_changes(JOURNEYS, ["emailaddress1", MARKETING_FIELD], Cursor(), read_until())
    )
    shown = {made[r.record_id]: r.fields[MARKETING_FIELD] for r in records if r.record_id in made}
    assert shown == {number: (True if number % 3 == 0 else None) for number in range(900)}
    assert dv.calls["batch"] - batches == 1 and dv.batch_requests >= 2


def test_addresses_are_left_out_of_the_service_s_messages() -> None:
    from consentsync_dynamics.journeys import redacted

    said = "Syntax error at position 80 in 'msdynmkt_contactpointvalue eq ''ann.lee@example.test'''."
    assert redacted(said) == "Syntax error at position 80 in 'msdynmkt_contactpointvalue eq ''<address>'''."
    assert redacted("no address here") == "no address here" and redacted(None) is None
