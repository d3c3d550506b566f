"""HubSpot keys subscription statuses by address, not by contact (legacy docs "Update email
subscription status": "The subscription status is tied to the email address, and not a specific
contact record"). A person says no as a@, a user then changes the contact's address to b@ before
the next sync: every later read of the contact shows b@'s statuses. The connector reads the
contact's ``email`` history (batch read with ``propertiesWithHistory``), the statuses of the
addresses it had since the read's lower bound, and hands a no among them over as
``CrmRecord.earlier_values``, unless the contact shows a yes given after it under its new
address. Over HTTPS against the sandbox."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from consentsync_hubspot.sandbox.server import HubSpotPortal, iso_ms

from consentsync.sandbox.server import json_response
from consentsync.sdk import Cursor, RecordUpdate
from tests.connectors.against_sandbox import read_until

FIELDS = ["email", "subscription_1001", "subscription_1001_timestamp"]
BOTH = [*FIELDS, "subscription_1002", "subscription_1002_legal_basis"]
A, B = "a@example.test", "b@example.test"


def _connector(hubspot: HubSpotHarness, **extra: Any) -> HubSpotConnector:
    return HubSpotConnector("hs", hubspot.connector_settings(**extra))


def _subscribed(portal: HubSpotPortal, email: str, at: dt.datetime, sid: str = "1001") -> None:
    portal.set_status(
        email, sid, "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", explanation="form", source="Form", at=at
    )


def _read(conn: HubSpotConnector, since: Cursor, fields: list[str] = FIELDS) -> dict[str, Any]:
    return {r.record_id: r for r in conn.read_changes("contacts", fields, since, read_until())}


def test_an_unsubscribe_followed_by_an_address_change_is_read(hubspot: HubSpotHarness) -> None:
    """The reviewer's repro: the no given as a@ reaches the read that shows b@, as an earlier
    value dated when it was given."""
    portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    contact = portal.create({"email": A}, at=base)
    _subscribed(portal, A, base)
    conn = _connector(hubspot)
    first = list(conn.read_changes("contacts", FIELDS, Cursor(), read_until()))
    assert [r.fields["subscription_1001"] for r in first] == ["SUBSCRIBED"]
    assert first[0].earlier_values is None
    cursor = Cursor(first[-1].modstamp, first[-1].record_id)

    said_no = base + dt.timedelta(minutes=10)
    portal.set_status(A, "1001", "UNSUBSCRIBED", at=said_no)
    portal.update(contact, {"email": B}, at=base + dt.timedelta(minutes=11))

    later = list(conn.read_changes("contacts", FIELDS, cursor, read_until()))
    assert [r.record_id for r in later] == [contact]
    assert later[0].fields["subscription_1001"] == "NOT_SPECIFIED"  # b@'s: nothing said
    assert later[0].earlier_values == {
        "subscription_1001": "UNSUBSCRIBED",
        "subscription_1001_legal_basis": None,  # the preferences page recorded none
        "subscription_1001_timestamp": iso_ms(said_no),
    }, "the withdrawal given as a@ was never read"


def test_a_later_yes_under_the_new_address_wins_and_only_there(hubspot: HubSpotHarness) -> None:
    """Three people say no under their old address, then a user changes it. One says yes under
    the new address afterwards: that yes is their latest word, and no earlier no comes with the
    contact (taken, it would have the engine unsubscribe the new address for good). One held a
    yes under the new address from before their no: the no is the latest word and comes. One
    gave the no after the contact had left the address (someone else's, on an address the
    contact no longer had): it is not the contact's."""
    portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    later_yes = portal.create({"email": "c@example.test"}, at=base)
    earlier_yes = portal.create({"email": "e@example.test"}, at=base)
    after_leaving = portal.create({"email": "g@example.test"}, at=base)
    since = Cursor(base + dt.timedelta(minutes=1))

    _subscribed(portal, "f@example.test", base + dt.timedelta(minutes=2))  # e@'s person's yes, before
    for old in ("c@example.test", "e@example.test"):
        portal.set_status(old, "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=10))
    portal.update(later_yes, {"email": "d@example.test"}, at=base + dt.timedelta(minutes=11))
    portal.update(earlier_yes, {"email": "f@example.test"}, at=base + dt.timedelta(minutes=11))
    portal.update(after_leaving, {"email": "h@example.test"}, at=base + dt.timedelta(minutes=11))
    _subscribed(portal, "d@example.test", base + dt.timedelta(minutes=12))  # the yes under d@
    portal.set_status("g@example.test", "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=13))

    records = _read(_connector(hubspot), since)
    assert records[later_yes].fields["subscription_1001"] == "SUBSCRIBED"
    assert records[later_yes].earlier_values is None, "a no older than the yes under d@ was handed over"
    assert records[after_leaving].earlier_values is None, "a no given after the contact left g@"
    assert records[earlier_yes].fields["subscription_1001"] == "SUBSCRIBED"
    assert (records[earlier_yes].earlier_values or {}).get("subscription_1001") == "UNSUBSCRIBED"


def test_an_opt_out_of_all_email_under_the_old_address_is_a_no_for_every_subscription(
    hubspot: HubSpotHarness,
) -> None:
    """The person clicks "unsubscribe from all" as a@ (hs_email_optout, kept apart from the
    statuses), then the address changes: b@ reads no opt-out (the flag follows the address), and
    the opt-out comes as an earlier no for each subscription read, as of the opt-out."""
    portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    contact = portal.create({"email": A}, at=base)
    _subscribed(portal, A, base, sid="1002")
    opted_out = base + dt.timedelta(minutes=10)
    portal.unsubscribe_all(A, at=opted_out)
    assert hubspot.stored(contact)["hs_email_optout"] == "true"
    portal.update(contact, {"email": B}, at=base + dt.timedelta(minutes=11))
    assert hubspot.stored(contact)["hs_email_optout"] == "false", "the flag follows the address"

    before = hubspot.sandbox.calls["wide_status_batch_read"]
    (record,) = _read(_connector(hubspot), Cursor(base + dt.timedelta(minutes=1)), BOTH).values()
    assert record.fields["subscription_1001"] == record.fields["subscription_1002"] == "NOT_SPECIFIED"
    assert record.earlier_values == {
        "subscription_1001": "UNSUBSCRIBED",
        "subscription_1001_legal_basis": None,
        "subscription_1001_timestamp": iso_ms(opted_out),
        "subscription_1002": "UNSUBSCRIBED",
        "subscription_1002_legal_basis": "CONSENT_WITH_NOTICE",
        "subscription_1002_timestamp": iso_ms(opted_out),
    }
    assert hubspot.sandbox.calls["wide_status_batch_read"] == before + 1


def test_the_history_costs_one_batch_read_per_batch_and_nothing_more_without_a_change(
    hubspot: HubSpotHarness,
) -> None:
    """HubSpot's search answers no property history and no property says when ``email``
    changed, so each page's contacts are asked for theirs: one batch read per ``batch_size``
    contacts. A page where no address changed costs nothing beyond that (no status or opt-out
    read for earlier addresses); one where an address changed reads the old address in the
    page's own status read (no extra one) and asks the opt-out endpoint about it."""
    portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    ids = [
        portal.create({"email": f"p{n}@example.test"}, at=base + dt.timedelta(seconds=n)) for n in range(5)
    ]
    conn = _connector(hubspot, batch_size=2)
    calls = hubspot.sandbox.calls
    hubspot.sandbox.reset_counters()
    records = _read(conn, Cursor())
    assert all(r.earlier_values is None for r in records.values())
    assert (calls["search"], calls["batch_read"], calls["status_batch_read"]) == (1, 3, 1)
    assert calls["wide_status_batch_read"] == 0

    portal.set_status("p3@example.test", "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=10))
    portal.update(ids[3], {"email": "p3.new@example.test"}, at=base + dt.timedelta(minutes=11))
    hubspot.sandbox.reset_counters()
    records = _read(conn, Cursor(base + dt.timedelta(minutes=5)))
    assert list(records) == [ids[3]]
    assert (records[ids[3]].earlier_values or {}).get("subscription_1001") == "UNSUBSCRIBED"
    assert (calls["search"], calls["batch_read"], calls["status_batch_read"]) == (1, 1, 1)
    assert calls["wide_status_batch_read"] == 1


def test_an_address_left_before_the_reads_lower_bound_is_not_read_again(
    hubspot: HubSpotHarness,
) -> None:
    """The look-back is already in ``since``: an address the contact left before it was shown
    to an earlier read (its no read then, or never there), and is not asked about again. A full
    read (no lower bound) reads every address the contact ever had."""
    portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    contact = portal.create({"email": A}, at=base)
    portal.set_status(A, "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=1))
    portal.update(contact, {"email": B}, at=base + dt.timedelta(minutes=2))
    portal.update(contact, {"jobtitle": "moved on"}, at=base + dt.timedelta(minutes=20))
    conn = _connector(hubspot)
    (incremental,) = _read(conn, Cursor(base + dt.timedelta(minutes=10))).values()
    assert incremental.earlier_values is None
    (full,) = _read(conn, Cursor()).values()
    assert (full.earlier_values or {}).get("subscription_1001") == "UNSUBSCRIBED"


def test_a_merged_away_id_answers_the_merged_contact_and_lends_it_no_history(
    hubspot: HubSpotHarness,
) -> None:
    """HubSpot's changelog ("Updated merge functionality for contacts and companies"): "fetching
    any records using the original IDs will return the new merged record with the new ID". The
    connector keys what a batch read answers by the id answered: a merged-away id gets neither
    the merged contact's email history nor its address (no subscription change is sent there
    under the old id)."""
    harness_portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    first = harness_portal.create({"email": A}, at=base)
    harness_portal.set_status(A, "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=1))
    harness_portal.update(first, {"email": B}, at=base + dt.timedelta(minutes=2))
    other = harness_portal.create({"email": "other@example.test"}, at=base)
    merged = hubspot.merge_into_new(first, other)

    session = hubspot.sandbox.requests_session()
    session.headers["Authorization"] = f"Bearer {hubspot.sandbox.credentials.access_token}"
    answer = session.post(
        f"{hubspot.sandbox.api_url}/crm/v3/objects/contacts/batch/read",
        json={
            "inputs": [{"id": first}, {"id": other}],
            "properties": ["email"],
            "propertiesWithHistory": ["email"],
        },
    ).json()
    assert [item["id"] for item in answer["results"]] == [merged]
    assert [v["value"] for v in answer["results"][0]["propertiesWithHistory"]["email"]] == [B, A]

    conn = _connector(hubspot)
    raw = {"id": first, "properties": {"email": B}}
    assert conn._earlier_addresses([raw], None) == {}
    before = hubspot.sandbox.calls["unsubscribe"]
    (result,) = conn.write([RecordUpdate("contacts", first, {"subscription_1002": "UNSUBSCRIBED"})])
    assert not result.ok
    assert hubspot.sandbox.calls["unsubscribe"] == before
    assert harness_portal.status(B, "1002") is None


def test_a_no_the_address_had_before_the_contact_got_it_is_not_the_contacts(hubspot: HubSpotHarness) -> None:
    """The reviewer's repro: Z held a@, said no and moved on; a user later gives contact X a@
    (a typo for b@, or an address handed on) and corrects it before the next read. a@'s no
    predates X having a@: it is Z's person's, not X's, and taken it would unsubscribe b@ for
    good. Only a no given while the contact held the address is its own: one given on an
    address it had twice, between the two spans (someone else's then), is not either."""
    portal = hubspot.sandbox.portal
    base = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(microsecond=0)
    at = lambda minutes: base + dt.timedelta(minutes=minutes)  # noqa: E731
    z = portal.create({"email": A}, at=at(0))
    portal.set_status(A, "1001", "UNSUBSCRIBED", at=at(5))
    portal.update(z, {"email": "z@example.test"}, at=at(10))
    typo = portal.create({"email": A}, at=at(20))
    portal.update(typo, {"email": B}, at=at(21))
    own = portal.create({"email": "c@example.test"}, at=at(20))
    portal.set_status("c@example.test", "1001", "UNSUBSCRIBED", at=at(22))
    portal.update(own, {"email": "d@example.test"}, at=at(23))
    twice = portal.create({"email": "e@example.test"}, at=at(0))
    portal.update(twice, {"email": "f@example.test"}, at=at(2))
    portal.set_status("e@example.test", "1001", "UNSUBSCRIBED", at=at(12))  # e@ not its own then
    portal.update(twice, {"email": "e@example.test"}, at=at(30))
    portal.update(twice, {"email": "g@example.test"}, at=at(32))

    conn = _connector(hubspot)
    for since in (Cursor(), Cursor(at(15))):
        records = _read(conn, since)
        assert records[typo].fields["subscription_1001"] == "NOT_SPECIFIED"
        assert records[typo].earlier_values is None, "a no a@ had before X got it was taken as X's"
        assert records[twice].earlier_values is None, "a no e@ got between the contact's two spans"
        assert records[own].earlier_values == {
            "subscription_1001": "UNSUBSCRIBED",
            "subscription_1001_legal_basis": None,
            "subscription_1001_timestamp": iso_ms(at(22)),
        }


def test_each_earlier_no_comes_with_the_time_it_was_given(hubspot: HubSpotHarness) -> None:
    """``CrmRecord.earlier_given_at`` dates every field of ``earlier_values`` by the no it
    belongs to: a subscription type's own unsubscribe by its status time, an opt-out of all email
    by the opt-out's. Undated, the engine would read an old no as given now, newer than a yes
    the person gave since."""
    portal = hubspot.sandbox.portal
    base = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(microsecond=0)
    at = lambda minutes: base + dt.timedelta(minutes=minutes)  # noqa: E731
    own = portal.create({"email": A}, at=at(0))
    portal.set_status(A, "1001", "UNSUBSCRIBED", at=at(5))
    portal.set_status(A, "1002", "UNSUBSCRIBED", legal_basis="PERFORMANCE_OF_CONTRACT", at=at(7))
    portal.update(own, {"email": B}, at=at(10))
    wide = portal.create({"email": "c@example.test"}, at=at(0))
    portal.unsubscribe_all("c@example.test", at=at(9))
    portal.update(wide, {"email": "d@example.test"}, at=at(10))

    records = _read(_connector(hubspot), Cursor(at(1)), BOTH)
    fields = ("subscription_{}", "subscription_{}_legal_basis", "subscription_{}_timestamp")
    assert records[own].earlier_given_at == {
        **{name.format("1001"): at(5) for name in fields},
        **{name.format("1002"): at(7) for name in fields},
    }
    assert records[own].earlier_values is not None
    assert records[own].earlier_values["subscription_1002_timestamp"] == iso_ms(at(7))
    assert records[wide].earlier_given_at == {
        name.format(sid): at(9) for sid in ("1001", "1002") for name in fields
    }
    for record in records.values():
        assert set(record.earlier_given_at or {}) == set(record.earlier_values or {})


@pytest.mark.parametrize("how", ["unsubscribe", "opt_out_of_all"])
def test_a_no_of_no_readable_time_is_left_out(
    hubspot: HubSpotHarness, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A no on an old address that HubSpot answers without a time cannot be placed within the
    span the contact had the address, nor against a yes given since: it is left out (it used to
    be taken as late as can be, and would have unsubscribed the new address for good)."""
    portal = hubspot.sandbox.portal
    base = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(microsecond=0)
    contact = portal.create({"email": A}, at=base)
    if how == "unsubscribe":
        portal.set_status(A, "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=5))
    else:
        portal.unsubscribe_all(A, at=base + dt.timedelta(minutes=5))
    portal.update(contact, {"email": B}, at=base + dt.timedelta(minutes=10))
    sandbox = hubspot.sandbox
    statuses, wide_read = sandbox._v4_statuses, sandbox._h_wide_status_batch_read

    def undated_statuses(email: str) -> list[dict[str, Any]]:
        return [{**status, "timestamp": None} for status in statuses(email)]

    def undated_wide(request: Any) -> Any:
        answer = wide_read(request)
        body = json.loads(answer.body)
        for result in body["results"]:
            for status in result["wideStatuses"]:
                del status["timestamp"]
        return json_response(200, body)

    monkeypatch.setattr(sandbox, "_v4_statuses", undated_statuses)
    monkeypatch.setattr(sandbox, "_h_wide_status_batch_read", undated_wide)
    (record,) = _read(_connector(hubspot), Cursor(), BOTH).values()
    assert record.fields["subscription_1001"] == "NOT_SPECIFIED"
    assert record.earlier_values is None, "an undated no was taken as the contact's latest word"
    assert record.earlier_given_at is None
