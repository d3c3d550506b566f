"""The HubSpot connector over HTTPS against the sandbox: the search cap, shared timestamps,
limits, scopes, multi-checkbox legal bases, batch failures and the resubscribe refusal."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.connector import REFUSES_RESUBSCRIBE
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from consentsync_hubspot.sandbox.server import HubSpotCredentials, iso_ms
from sqlalchemy import select

from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import outbox, quarantine
from consentsync.sdk import Action, BudgetExhausted, ConnectorError, Cursor, RecordUpdate
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from tests.connectors.against_sandbox import read_until
from tests.connectors.trust import check_with_requests_ca_bundle_set

FIELDS = ["email", "jobtitle", "hs_legal_basis", "subscription_1001", "subscription_1001_legal_basis"]


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> Iterator[HubSpotHarness]:
    options = getattr(request, "param", {})
    made = HubSpotHarness(**options)
    made.start()
    yield made
    made.stop()


def connector(harness: HubSpotHarness, **extra: Any) -> HubSpotConnector:
    return HubSpotConnector("hs-test", harness.connector_settings(**extra))


def _read(conn: HubSpotConnector, since: Cursor | None = None) -> list[Any]:
    return list(conn.read_changes("contacts", FIELDS, since or Cursor(), read_until()))


@pytest.mark.parametrize("harness", [{"search_result_cap": 50}], indirect=True)
def test_reads_past_the_search_result_cap(harness: HubSpotHarness) -> None:
    harness.seed(60, shared_modstamp=True)
    harness.seed(80)
    records = _read(connector(harness))
    assert len(records) == 140 == len({r.record_id for r in records})
    keys = [(r.modstamp, int(r.record_id)) for r in records]
    assert keys == sorted(keys)
    # Keyset paging never asks for an offset, so the cap is never hit.
    assert harness.sandbox.calls["search"] >= 140 // harness.page_size


def test_the_sandbox_refuses_offsets_past_its_cap(harness: HubSpotHarness) -> None:
    session = harness.sandbox.requests_session()
    session.headers["Authorization"] = f"Bearer {harness.sandbox.credentials.access_token}"
    harness.sandbox.search_result_cap = 30
    harness.seed(40)
    url = f"{harness.sandbox.api_url}/crm/v3/objects/contacts/search"
    first = session.post(url, json={"limit": 20, "after": "20"}).json()
    assert len(first["results"]) == 10 and first["paging"]["next"]["after"] == "30"
    refused = session.post(url, json={"limit": 20, "after": "30"})
    assert refused.status_code == 400 and refused.json()["category"] == "VALIDATION_ERROR"


def test_subscription_statuses_come_with_the_contacts(harness: HubSpotHarness) -> None:
    portal = harness.sandbox.portal
    subscribed, unsubscribed, silent = harness.seed(3)
    email = {rid: portal.get(rid)["email"] for rid in (subscribed, unsubscribed, silent)}
    portal.set_status(email[subscribed], "1001", "SUBSCRIBED", legal_basis="LEGITIMATE_INTEREST_PQL")
    portal.set_status(email[unsubscribed], "1001", "UNSUBSCRIBED")
    records = {r.record_id: r.fields for r in _read(connector(harness))}
    assert records[subscribed]["subscription_1001"] == "SUBSCRIBED"
    assert records[subscribed]["subscription_1001_legal_basis"] == "LEGITIMATE_INTEREST_PQL"
    assert records[unsubscribed]["subscription_1001"] == "UNSUBSCRIBED"
    assert records[silent]["subscription_1001"] == "NOT_SPECIFIED"
    assert harness.sandbox.calls["status_batch_read"] == 1


def test_a_multi_checkbox_legal_basis_reads_as_the_strongest_ticked(harness: HubSpotHarness) -> None:
    (contact,) = harness.seed(1)
    harness.sandbox.portal.update(
        contact, {"hs_legal_basis": "Legitimate interest - other;Freely given consent from contact"}
    )
    (record,) = _read(connector(harness))
    assert record.fields["hs_legal_basis"] == "Freely given consent from contact"


@pytest.mark.parametrize("harness", [{"secondly_limit": 6, "search_per_second": 4}], indirect=True)
def test_paces_searches_and_waits_out_secondly_limits(harness: HubSpotHarness) -> None:
    harness.seed(120)
    records = _read(connector(harness, search_requests_per_second=4))
    assert len(records) == 120
    assert harness.sandbox.rejections["SEARCH_SECONDLY"] == 0  # the pace kept under the limit


def test_secondly_429_is_retried(harness: HubSpotHarness) -> None:
    harness.seed(30)
    conn = connector(harness)
    harness.sandbox.faults.update(throttle_after=1, throttle_calls=3)
    assert len(_read(conn)) == 30
    assert harness.sandbox.faults_injected["throttle"] == 3


def test_daily_limit_stops_the_run(harness: HubSpotHarness) -> None:
    harness.seed(5)
    harness.sandbox.set_daily_usage(1000, 1000)
    with pytest.raises(BudgetExhausted, match="DAILY"):
        _read(connector(harness))
    assert harness.sandbox.rejections["DAILY"] >= 1


def test_daily_reserve_stops_before_the_portal_runs_dry(harness: HubSpotHarness) -> None:
    harness.seed(5)
    harness.sandbox.set_daily_usage(95_000, 100_000)
    conn = connector(harness, budget={"daily_reserve_percent": 10})
    with pytest.raises(BudgetExhausted, match="reserve"):
        _read(conn)
    assert conn.usage.limit == 100_000


def test_missing_scope_is_named(harness: HubSpotHarness) -> None:
    (contact,) = harness.seed(1)
    creds = harness.sandbox.credentials
    harness.sandbox.credentials = HubSpotCredentials(
        access_token=creds.access_token, scopes=creds.scopes - {"crm.objects.contacts.write"}
    )
    with pytest.raises(ConnectorError, match=r"crm\.objects\.contacts\.write") as raised:
        connector(harness).write([RecordUpdate("contacts", contact, {"jobtitle": "x"})])
    assert raised.value.action is Action.FAIL


def test_a_revoked_token_without_a_token_file_fails_clearly(harness: HubSpotHarness) -> None:
    settings = harness.connector_settings(access_token=harness.sandbox.credentials.access_token)
    del settings["access_token_file"]
    conn = HubSpotConnector("hs-test", settings)
    conn.check()
    harness.sandbox.rotate_token()
    with pytest.raises(ConnectorError, match="refused the private app token") as raised:
        conn.check()
    assert raised.value.action is Action.FAIL


def test_a_rotated_token_is_read_again_from_its_file(harness: HubSpotHarness) -> None:
    conn = connector(harness)
    conn.check()
    harness.sandbox.rotate_token()
    conn.check()
    assert conn.usage.per_endpoint["list"] == 3  # ok, 401, ok with the new token


def test_a_bad_value_fails_its_record_not_the_batch(harness: HubSpotHarness) -> None:
    ids = harness.seed(5)
    updates = [RecordUpdate("contacts", rid, {"hs_legal_basis": "Performance of a contract"}) for rid in ids]
    updates[2] = RecordUpdate("contacts", ids[2], {"hs_legal_basis": "Because we say so"})
    updates.append(RecordUpdate("contacts", "999999", {"jobtitle": "nobody"}))
    results = connector(harness).write(updates)
    assert [r.ok for r in results] == [True, True, False, True, True, False]
    assert results[2].error_code == "VALIDATION_ERROR" and not results[2].retryable
    assert results[5].error_code == "OBJECT_NOT_FOUND" and not results[5].retryable
    assert harness.sandbox.portal.get(ids[0])["hs_legal_basis"] == "Performance of a contract"


def test_read_only_properties_are_refused_before_any_call(harness: HubSpotHarness) -> None:
    (contact,) = harness.seed(1)
    conn = connector(harness)
    conn.describe("contacts")
    before = harness.sandbox.calls["batch_update"]
    (result,) = conn.write([RecordUpdate("contacts", contact, {"hs_email_optout": "true"})])
    assert not result.ok and result.error_code == "INVALID_FIELD"
    assert harness.sandbox.calls["batch_update"] == before


def test_resubscribing_an_unsubscribed_contact_is_a_permanent_refusal(harness: HubSpotHarness) -> None:
    contact, fresh = harness.seed(2)
    portal = harness.sandbox.portal
    portal.set_status(portal.get(contact)["email"], "1001", "UNSUBSCRIBED")
    results = connector(harness).write(
        [
            RecordUpdate("contacts", contact, {"subscription_1001": "SUBSCRIBED"}),
            RecordUpdate("contacts", fresh, {"subscription_1001": "SUBSCRIBED"}),
        ]
    )
    assert results[0].error_code == REFUSES_RESUBSCRIBE and not results[0].retryable
    assert "opt in again" in (results[0].message or "")
    assert results[1].ok
    assert harness.sandbox.calls["subscribe"] == 2  # one each: the refusal is not retried
    assert portal.status(portal.get(contact)["email"], "1001").status == "UNSUBSCRIBED"


def test_works_with_requests_ca_bundle_set(harness: HubSpotHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    check_with_requests_ca_bundle_set(connector(harness), monkeypatch)


def test_the_engine_dead_letters_a_refused_resubscription_once(
    harness: HubSpotHarness, tmp_path: Path
) -> None:
    from consentsync.domain import ConsentStatus, Evidence

    (contact,) = harness.seed(1)
    portal = harness.sandbox.portal
    email = portal.get(contact)["email"]
    portal.set_status(email, "1001", "UNSUBSCRIBED", at=portal.now() - dt.timedelta(days=30))
    config = write_sync_config(harness, tmp_path)
    first = open_sync_engine(config).run(full=True)
    assert first.status == "succeeded", first.error
    # The person opts in again on the website, double opt-in confirmed: a trusted, newer capture.
    engine = open_sync_engine(config)
    now = dt.datetime.now(dt.UTC)
    confirmed = Evidence.from_web_form(ConsentStatus.GRANTED, now, now, double_opt_in_at=now)
    engine.ledger.record(Identity(email=email), replace(confirmed, source="double_opt_in"))
    second = engine.run()
    assert second.status == "succeeded", second.error
    assert harness.sandbox.calls["subscribe"] == 1
    with engine.ledger.engine.connect() as conn:
        dead = conn.execute(select(outbox).where(outbox.c.status == "dead")).all()
        reasons = (
            conn.execute(select(quarantine.c.reason).where(quarantine.c.record_id == contact)).scalars().all()
        )
    assert len(dead) == 1 and REFUSES_RESUBSCRIBE in (dead[0].last_error or "")
    assert any(REFUSES_RESUBSCRIBE in reason for reason in reasons)
    # The ledger keeps the opt-in; HubSpot keeps its rule; nobody retries in a loop.
    for _ in range(2):
        again = open_sync_engine(config).run()
        assert again.status == "succeeded", again.error
    assert harness.sandbox.calls["subscribe"] == 1
    assert portal.status(email, "1001").status == "UNSUBSCRIBED"


# -- deletions, merges, the delete action, the look-back -----------------------------------------


def test_read_deletions_lists_archived_and_merged_contacts_in_time_order(harness: HubSpotHarness) -> None:
    portal = harness.sandbox.portal
    ids = harness.seed(6)
    base = portal.now() - dt.timedelta(minutes=10)
    portal.archive(ids[4], at=base + dt.timedelta(seconds=3))
    portal.archive(ids[1], at=base + dt.timedelta(seconds=1))
    portal.merge(ids[0], ids[2], at=base + dt.timedelta(seconds=2))
    portal.archive(ids[5], at=base + dt.timedelta(seconds=3))  # same time as ids[4]: id order
    conn = connector(harness)
    gone = list(conn.read_deletions("contacts", Cursor(), read_until()))
    assert [(r.record_id, r.merged_into) for r in gone] == [
        (ids[1], None),
        (ids[2], ids[0]),
        (ids[4], None),
        (ids[5], None),
    ]
    assert all(r.deleted and not r.fields for r in gone)
    # After a (time, id) cursor; a cursor without an id takes its whole time; until bounds it.
    after = list(conn.read_deletions("contacts", Cursor(gone[2].modstamp, ids[4]), read_until()))
    assert [r.record_id for r in after] == [ids[5]]
    same_time = list(conn.read_deletions("contacts", Cursor(gone[2].modstamp), read_until()))
    assert [r.record_id for r in same_time] == [ids[4], ids[5]]
    early = list(conn.read_deletions("contacts", Cursor(), base + dt.timedelta(seconds=2)))
    assert [r.record_id for r in early] == [ids[1], ids[2]]


def test_an_archived_contact_comes_with_the_values_it_held_when_deleted(harness: HubSpotHarness) -> None:
    """A contact unsubscribes and a user deletes the contact before any read: HubSpot keeps an
    archived contact's properties (batch read with ``archived=true``) and the address's
    subscription statuses, so the deletion carries the values a read of the live contact gave,
    for one batch read per 100 deletions, and none when nothing was deleted."""
    portal = harness.sandbox.portal
    ids = harness.seed(4)
    conn = connector(harness)
    email = str(portal.get(ids[1])["email"])
    portal.set_status(email, "1001", "UNSUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE")
    portal.update(ids[1], {"jobtitle": "Buyer"})
    live = {r.record_id: r for r in _read(conn)}
    assert live[ids[1]].fields["subscription_1001"] == "UNSUBSCRIBED"
    before = harness.sandbox.calls["batch_read"]
    assert list(conn.read_deletions("contacts", Cursor(), read_until(), FIELDS)) == []
    assert harness.sandbox.calls["batch_read"] == before, "no deletions: no read of their values"
    base = portal.now() - dt.timedelta(minutes=5)
    portal.archive(ids[1], at=base + dt.timedelta(seconds=1))
    portal.merge(ids[0], ids[2], at=base + dt.timedelta(seconds=2))
    portal.archive(ids[3], at=base + dt.timedelta(seconds=3))
    gone = list(conn.read_deletions("contacts", Cursor(), read_until(), FIELDS))
    assert [(r.record_id, r.deleted, r.merged_into) for r in gone] == [
        (ids[1], True, None),
        (ids[2], True, ids[0]),
        (ids[3], True, None),
    ]
    assert gone[0].modstamp == base + dt.timedelta(seconds=1), "stamped at the deletion"
    assert gone[0].fields == live[ids[1]].fields, "the last values, as a read of the live contact gave"
    assert gone[2].fields == live[ids[3]].fields
    assert gone[1].fields == {}, "a merged-away id has no values of its own left"
    assert harness.sandbox.calls["batch_read"] == before + 1, "one batch read for the page of deletions"


def test_property_writes_are_answered_call_by_call(harness: HubSpotHarness) -> None:
    ids = harness.seed(250)
    batches = connector(harness).write_batches([harness.text_update(i, "x") for i in ids])
    first = next(batches)
    assert sorted(first) == list(range(100)) and harness.sandbox.calls["batch_update"] == 1
    assert [sorted(b) for b in batches] == [list(range(100, 200)), list(range(200, 250))]


def test_a_lookback_cursor_reads_its_whole_millisecond_and_resume_from_moves_back(
    harness: HubSpotHarness,
) -> None:
    harness.seed(30, shared_modstamp=True)
    harness.seed(5)
    conn = connector(harness)
    records = _read(conn)
    crowded = records[0].modstamp
    inclusive = _read(conn, Cursor(crowded))
    assert [r.record_id for r in inclusive] == [r.record_id for r in records]  # 30 at that stamp, then 5
    assert len(_read(conn, Cursor(crowded, records[29].record_id))) == 5
    last = records[-1]
    assert conn.resume_from(Cursor(last.modstamp, last.record_id)) == Cursor(
        last.modstamp - conn.lookback, None, None
    )
    assert dt.timedelta(minutes=1) <= conn.lookback <= dt.timedelta(minutes=10)


def test_a_contact_the_search_index_lags_is_read_inside_the_lookback(harness: HubSpotHarness) -> None:
    portal = harness.sandbox.portal
    harness.seed(3)
    late = portal.begin_late({"email": "late@example.test", "lastname": "Late"})
    time.sleep(0.01)
    after = portal.create({"email": "after@example.test", "lastname": "After"})
    conn = connector(harness)
    records = _read(conn)
    assert late not in {r.record_id for r in records}
    newest = records[-1]
    assert newest.record_id == after
    portal.index(late)
    assert _read(conn, Cursor(newest.modstamp, newest.record_id)) == []  # the stored cursor passed it
    again = _read(conn, conn.resume_from(Cursor(newest.modstamp, newest.record_id)))
    assert late in {r.record_id for r in again}


# -- what the ledger pushes, and reads back ------------------------------------------------------


def _history(engine: Any, email: str) -> list[dict[str, Any]]:
    return engine.ledger.subject_view(email)["history"]


def test_a_subscribe_pushed_reads_back_as_our_own_write_not_as_a_consent(
    harness: HubSpotHarness, tmp_path: Path
) -> None:
    """HubSpot records the legal basis sent with a subscribe (the connector's default when the
    ledger names none): reading the contact back shows it, and that is still our own write."""
    from consentsync.domain import ConsentStatus, Evidence

    contact = harness.create_person("rita@example.org")
    config = write_sync_config(harness, tmp_path)
    assert open_sync_engine(config).run(full=True).status == "succeeded"
    engine = open_sync_engine(config)
    now = dt.datetime.now(dt.UTC)
    captured = Evidence.from_web_form(ConsentStatus.GRANTED, now - dt.timedelta(hours=1), now)
    engine.ledger.record(Identity(email="rita@example.org"), replace(captured, notice_version="nl-v1"))
    pushed = engine.run()
    assert pushed.status == "succeeded", pushed.error
    assert harness.sandbox.calls["subscribe"] == 1
    status = harness.sandbox.portal.status("rita@example.org", "1001")
    assert (status.status, status.legal_basis) == ("SUBSCRIBED", "CONSENT_WITH_NOTICE")
    before = len(_history(engine, "rita@example.org"))
    for _ in range(2):
        again = open_sync_engine(config).run()
        assert again.status == "succeeded", again.error
        assert again.counts.evidence_recorded == 0
    assert len(_history(open_sync_engine(config), "rita@example.org")) == before
    assert harness.sandbox.calls["subscribe"] == 1
    assert harness.stored(contact)["email"] == "rita@example.org"


def test_a_basis_the_ledger_holds_by_default_is_never_pushed(harness: HubSpotHarness, tmp_path: Path) -> None:
    """hs_legal_basis (the service purpose's basis, pushed both ways) is written only from a basis
    some evidence stated: not for a subscription read without one, nor for an erased person."""
    portal = harness.sandbox.portal
    with_status = harness.create_person("sam@example.org")
    portal.set_status("sam@example.org", "1002", "SUBSCRIBED", at=portal.now() - dt.timedelta(days=3))
    erased = harness.create_person("eve@example.org")
    config = write_sync_config(harness, tmp_path)
    first = open_sync_engine(config).run(full=True)
    assert first.status == "succeeded", first.error
    engine = open_sync_engine(config)
    engine.ledger.erase("eve@example.org", reason="Art. 17 request", actor="dpo")
    second = engine.run()
    assert second.status == "succeeded", second.error
    for contact in (with_status, erased):
        assert harness.stored(contact).get("hs_legal_basis") in (None, ""), contact


# -- unsubscribed from all email -------------------------------------------------------------------


def test_a_contact_opted_out_of_all_email_reads_unsubscribed_from_every_subscription(
    harness: HubSpotHarness,
) -> None:
    """The unsubscribe link of a marketing email opts the contact out of all email: HubSpot keeps
    that apart from the subscription statuses (``hs_email_optout``; v4 reads it as a "wide"
    status with its own endpoint), which may still say SUBSCRIBED. Read as they are, the no would
    be lost: every subscription reads UNSUBSCRIBED, as of the opt-out."""
    portal = harness.sandbox.portal
    leaving, staying = harness.seed(2)
    for contact in (leaving, staying):
        portal.set_status(
            portal.get(contact)["email"], "1001", "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE"
        )
    portal.unsubscribe_all(portal.get(leaving)["email"])
    assert portal.status(portal.get(leaving)["email"], "1001").status == "SUBSCRIBED"  # kept apart
    conn = connector(harness)
    records = {
        r.record_id: r.fields
        for r in conn.read_changes(
            "contacts", [*FIELDS, "subscription_1002", "subscription_1001_timestamp"], Cursor(), read_until()
        )
    }
    gone, kept = records[leaving], records[staying]
    assert gone["subscription_1001"] == gone["subscription_1002"] == "UNSUBSCRIBED"
    opted_out_at = portal.opted_out_of_all(portal.get(leaving)["email"])
    assert opted_out_at is not None and gone["subscription_1001_timestamp"] == iso_ms(opted_out_at)
    assert kept["subscription_1001"] == "SUBSCRIBED"
    assert harness.sandbox.calls["wide_status_batch_read"] == 1  # for the opted-out contact only
    # The contact subscribing again on the preferences page ends the opt-out of all email.
    portal.set_status(portal.get(leaving)["email"], "1001", "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE")
    (back,) = [r for r in _read(conn) if r.record_id == leaving]
    assert back.fields["subscription_1001"] == "SUBSCRIBED"


def _synced_subscriber(harness: HubSpotHarness, tmp_path: Path) -> tuple[str, str, Path]:
    """One contact subscribed nine days ago, synced in full: its id, address and sync config."""
    (contact,) = harness.seed(1)
    portal = harness.sandbox.portal
    email = portal.get(contact)["email"]
    portal.set_status(
        email, "1001", "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", at=portal.now() - dt.timedelta(days=9)
    )
    config = write_sync_config(harness, tmp_path)
    assert open_sync_engine(config).run(full=True).status == "succeeded"
    return contact, email, config


def test_an_opt_out_of_all_email_reaches_the_ledger_as_a_withdrawal(
    harness: HubSpotHarness, tmp_path: Path
) -> None:
    _contact, email, config = _synced_subscriber(harness, tmp_path)
    portal = harness.sandbox.portal
    portal.unsubscribe_all(email)
    engine = open_sync_engine(config)
    assert engine.run().status == "succeeded"
    purposes = {row["purpose"]: row for row in engine.ledger.subject_view(email)["purposes"]}
    assert purposes["email_marketing"]["status"] == "withdrawn", purposes["email_marketing"]


def test_without_the_wide_status_endpoint_the_opt_out_flag_alone_decides(
    harness: HubSpotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A portal (or an implementation of HubSpot's API) that does not serve the v4 wide-status
    read: ``hs_email_optout`` still makes every subscription read UNSUBSCRIBED, without a time."""
    from consentsync_hubspot.sandbox.server import HubSpotApiError

    def not_served(_request: Any) -> Any:
        raise HubSpotApiError(404, "OBJECT_NOT_FOUND", "No route")

    monkeypatch.setattr(harness.sandbox, "_h_wide_status_batch_read", not_served)
    portal = harness.sandbox.portal
    (contact,) = harness.seed(1)
    portal.set_status(portal.get(contact)["email"], "1001", "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE")
    portal.unsubscribe_all(portal.get(contact)["email"])
    (record,) = _read(connector(harness))
    assert record.fields["subscription_1001"] == "UNSUBSCRIBED"


def test_an_unsubscribe_just_before_an_archive_reaches_the_ledger(
    harness: HubSpotHarness, tmp_path: Path
) -> None:
    """The person unsubscribes and a user archives the contact before the next sync: the
    archived contact's last values carry the no (only a no is taken from a deleted record)."""
    contact, email, config = _synced_subscriber(harness, tmp_path)
    portal = harness.sandbox.portal
    portal.set_status(email, "1001", "UNSUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE")
    portal.archive(contact)
    engine = open_sync_engine(config)
    assert engine.run().status == "succeeded"
    purposes = {row["purpose"]: row for row in engine.ledger.subject_view(email)["purposes"]}
    assert purposes["email_marketing"]["status"] == "withdrawn", purposes["email_marketing"]
